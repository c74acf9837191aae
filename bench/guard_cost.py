"""What the safety checks cost at the start of a command: the model fingerprint against a full hash of the
weights, the model identity, the output guard on a fresh folder and on a large earlier output.

    .venv/bin/python bench/guard_cost.py [--model-path DIR] [--repeats 20] [--scenes 2000]

Prints one table (median wall ms and CPU ms per call). Uses the shared DINOv2-S weights by default.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fit3d.guard import guard_output, release_locks  # noqa: E402
from fit3d.models.identity import _CACHE, file_fingerprint, model_identity  # noqa: E402
from fit3d.paths import shared_model_dir  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of ``fn()`` over ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def full_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=str(shared_model_dir()))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scenes", type=int, default=2000, help="lifted-scene folders in the large earlier output")
    a = ap.parse_args()
    weights = Path(a.model_path) / "model.safetensors"
    size_mb = weights.stat().st_size / 2**20

    def fingerprint():
        _CACHE.clear()  # measure the read, not the in-process cache
        file_fingerprint(weights)

    def identity():
        _CACHE.clear()
        model_identity("dinov2_small", a.model_path)

    rows = [(f"full SHA-256 of the weights ({size_mb:.0f} MB)", timed(lambda: full_sha256(weights), max(3, a.repeats // 4))),
            ("fingerprint: size + 6 x 64 KiB blocks", timed(fingerprint, a.repeats)),
            ("model identity (resolve, fingerprint, config, name check)", timed(identity, a.repeats))]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "fresh"

        def guard_fresh():
            guard_output(fresh / "out", [a.model_path], command="bench")
            release_locks()

        rows.append(("output guard, new folder (check, mark, lock, release)", timed(guard_fresh, a.repeats)))
        big = Path(tmp) / "big"
        for i in range(a.scenes):
            (big / f"scene{i:05d}").mkdir(parents=True)
            (big / f"scene{i:05d}" / "lift.json").write_text(json.dumps({}))

        def guard_big():
            guard_output(big, [a.model_path], command="bench")
            release_locks()

        rows.append((f"output guard, earlier lift output of {a.scenes} scenes", timed(guard_big, a.repeats)))
    print(f"| check | wall ms (median of {a.repeats}) | CPU ms |")
    print("|---|---|---|")
    for name, (w, c) in rows:
        print(f"| {name} | {w:.2f} | {c:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
