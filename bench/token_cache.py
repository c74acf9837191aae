"""One token cache for lift and probes: backbone forwards and CPU seconds of small pipeline / demo runs, before
vs after (issue 23).

    .venv/bin/python bench/token_cache.py --out /tmp/token-cache --code before=/tmp/cache-base after=.
    .venv/bin/python bench/token_cache.py --out /tmp/token-cache --report     # the tables again

Each ``--code NAME=DIR`` is a fit3d source tree (``DIR/fit3d``; e.g. the commit before the change unpacked by
``git archive c994a43 | tar -x -C /tmp/cache-base``); every scenario runs once per tree, each in a fresh
process with ``PYTHONPATH=DIR``, one after the other. Per run: the images that went through the backbone's
forward (``Backbone.tokens`` wrapped, counted per stage of the run's clock), the process's CPU seconds (user +
system, children included) and wall seconds; then how many of each run's result numbers equal the first
tree's. Scenarios (all on CPU, DINOv2-S from ``shared/models``):

- ``pipeline-7scenes``: ``fit3d pipeline``'s defaults (lift at 448 px, probes at 448x336) on 25 RedKitchen frames
  (every 20th: 20 training, 5 test frames, linked from ``shared/``), probes depth + corr, 4 Stage 2 steps,
  50 head iterations, 1 seed. Lift and probes read the same images at one input size.
- ``demo``: ``fit3d demo``'s defaults (rooms at 224x168, lift at 448 px, probes at 224x168) on 2 + 1 rooms of 12
  views, 4 Stage 2 steps, 50 head iterations, 200 resamples: the sizes differ, nothing to share.
- ``demo-224``: the same with ``--lift.feature-size 224`` (the rooms' own size): lift and probes share.

Also, for the new tree only, what the cache itself costs per image (hashing the pixels, reading an entry) next
to a forward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no OpenMP spinning on shared cores
REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("pipeline-7scenes", "demo", "demo-224")


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def redkitchen_subset(dst: Path, every: int = 20) -> Path:
    """A 7-Scenes folder of every ``every``-th RedKitchen frame number (symlinks into ``shared/``)."""
    from fit3d.paths import shared_7scenes_dir

    src = shared_7scenes_dir()
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "camera-intrinsics.txt").unlink(missing_ok=True)
    os.symlink(src / "camera-intrinsics.txt", dst / "camera-intrinsics.txt")
    for f in sorted(src.glob("frame-*.*")):
        n = int(f.name.split(".")[0].split("-")[1])
        if n % every == 0 and not (dst / f.name).exists():
            os.symlink(f, dst / f.name)
    return dst


# ------------------------------------------------------------------------------------------ one run (child)
def drive(scenario: str, out: Path) -> dict:
    """Run ``scenario`` into ``out`` with the fit3d on ``sys.path``; count backbone images per clock stage."""
    import dataclasses

    import fit3d
    import fit3d.clock as clock_mod
    from fit3d.models.backbone import Backbone
    from fit3d.paths import shared_model_dir

    stage = ["(outside a stage)"]
    images: dict[str, int] = {}
    tokens, stage_cm = Backbone.tokens, clock_mod.Clock.stage

    def counting(self, x, layers=None):
        images[stage[-1]] = images.get(stage[-1], 0) + int(x.shape[0])
        return tokens(self, x, layers)

    import contextlib

    @contextlib.contextmanager
    def named(self, name):
        stage.append(name)
        try:
            with stage_cm(self, name):
                yield
        finally:
            stage.pop()

    Backbone.tokens, clock_mod.Clock.stage = counting, named
    model = str(shared_model_dir())
    t, c = time.perf_counter(), _cpu()
    from fit3d.finetune.recipes import DEFAULT_RECIPE, recipe

    ft = dataclasses.replace(recipe(DEFAULT_RECIPE), max_steps=4, progress=False)
    if scenario == "pipeline-7scenes":
        from fit3d.lift.config import LiftConfig
        from fit3d.pipeline import PipelineConfig, run_pipeline
        from fit3d.probe.config import ProbeConfig

        scene = redkitchen_subset(out.parent / "redkitchen-every20")
        cfg = PipelineConfig(out=str(out), model_path=model, device="cpu", tasks=["depth", "corr"],
                             lift=LiftConfig(progress=False), finetune=ft,
                             probe=ProbeConfig(iterations=50, seeds=[0]))
        res = run_pipeline([str(scene)], cfg, verbose=False)
    else:
        from fit3d.demo import DemoConfig, run_demo

        d = DemoConfig()
        lift = dataclasses.replace(d.lift, progress=False, **({"feature_size": 224} if scenario == "demo-224" else {}))
        cfg = DemoConfig(out=str(out), model_path=model, train_scenes=2, test_scenes=1, num_views=12, bootstrap=200,
                         lift=lift, finetune=ft, probe=dataclasses.replace(d.probe, iterations=50))
        res = run_demo(cfg)
    return {"fit3d": str(Path(fit3d.__file__).parent), "images": images, "wall": time.perf_counter() - t,
            "cpu": _cpu() - c, "stage_cpu": res.get("cpu_seconds", {}), "stage_wall": res.get("seconds", {}),
            "load_end": os.getloadavg()[0]}


# ------------------------------------------------------------------------------------------ the cache's own cost
def overhead(n: int = 48) -> list[dict]:
    """ms per image of hashing the pixels and of reading an entry, at 224x168 and 448x336 (DINOv2-S sized
    entries: 384 channels, float32), with the CPU seconds of one forward from docs/speed.md section 3."""
    import tempfile

    import numpy as np
    import torch

    from fit3d.models.tokens import TokenCache, image_id, token_key

    rows = []
    rng = np.random.default_rng(0)
    for (W, H), fwd in (((224, 168), 0.12), ((448, 336), 0.61)):
        ims = [rng.random((H, W, 3), dtype=np.float32) for _ in range(n)]
        h, w = H // 14, W // 14
        runs = []
        for rep in range(4):  # the first is a warm-up (imports, first file system calls), not kept
            with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
                cache, what = TokenCache(d), token_key({"backbone": "bench", "rep": rep})
                t = [time.process_time(), time.perf_counter()]
                ids = [image_id(im) for im in ims]
                t += [time.process_time(), time.perf_counter()]
                cache.get(what, ids, lambda idx: (torch.zeros(len(idx), 384, h, w), torch.zeros(len(idx), 384)))
                t += [time.process_time(), time.perf_counter()]
                got = cache.get(what, ids, lambda idx: (_ for _ in ()).throw(AssertionError("miss")))
                t += [time.process_time(), time.perf_counter()]
                assert got.from_cache
            runs.append(np.diff(np.array(t).reshape(4, 2), axis=0) * 1e3 / n)  # [hash, write, read] x [cpu, wall] ms
        med = np.median(np.stack(runs[1:]), axis=0)
        rows.append({"size": f"{W}x{H}", "hash_ms": med[0, 0], "write_ms": med[1, 0], "write_wall_ms": med[1, 1],
                     "read_ms": med[2, 0], "read_wall_ms": med[2, 1], "forward_ms": 1e3 * fwd})
    return rows


# ------------------------------------------------------------------------------------------ parent
def _numbers(d, path="") -> dict:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _numbers(val, f"{path}/{key}").items()}
    return {path: d} if isinstance(d, (int, float)) and not isinstance(d, bool) else {}


def same_results(out: Path, results: dict) -> None:
    """Per scenario: the run's results.json numbers (probe metrics, intervals, Stage 1 / 2 records; times left
    out) of each tree against the first tree's."""
    print("\nThe runs' results (results.json numbers but times) against the first tree's\n")
    print("| scenario | code | numbers | equal | differing (largest abs. difference) |\n|---|---|---|---|---|")
    scenarios = dict.fromkeys(s for s, _ in results)
    for sc in scenarios:
        names = [n for s, n in results if s == sc]
        ref = _numbers(json.loads((out / f"{sc}-{names[0]}" / "results.json").read_text()))
        for n in names[1:]:
            got = _numbers(json.loads((out / f"{sc}-{n}" / "results.json").read_text()))
            keys = [k for k in ref if k in got and "seconds" not in k and "/machine/" not in k and "/config/" not in k]
            diff = {k: abs(got[k] - ref[k]) for k in keys if got[k] != ref[k]}
            worst = max(diff, key=diff.get) if diff else None
            print(f"| {sc} | {n} | {len(keys)} | {len(keys) - len(diff)} | "
                  + (f"{len(diff)} ({worst}: {diff[worst]:.1e})" if diff else "0") + " |")


def table(results: dict) -> None:
    print(f"\nBackbone forwards (images through DINOv2-S) and process CPU seconds per run; {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f} at the end\n")
    print("| scenario | code | lift images | probe images | Stage 2 images | other images | lift CPU s | probe CPU s "
          "| total CPU s | total wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (s, n), r in results.items():
        im, sc = r["images"], r["stage_cpu"]
        probe_im = sum(v for k, v in im.items() if k.startswith("probe_") or k == "intervals")
        other = sum(v for k, v in im.items() if k not in ("lift", "finetune") and not k.startswith("probe_")
                    and k != "intervals")
        probe_cpu = sum(v for k, v in sc.items() if k.startswith("probe_"))
        print(f"| {s} | {n} | {im.get('lift', 0)} | {probe_im} | {im.get('finetune', 0)} | {other} | {sc.get('lift', 0):.0f} "
              f"| {probe_cpu:.0f} | {r['cpu']:.0f} | {r['wall']:.0f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/token-cache")
    ap.add_argument("--code", nargs="+", default=[f"after={REPO}"], help="NAME=DIR fit3d source trees")
    ap.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=SCENARIOS, help="none: the cache's own cost only")
    ap.add_argument("--report", action="store_true", help="print the tables of the runs already in --out")
    ap.add_argument("--drive", nargs=2, metavar=("SCENARIO", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.drive:
        print("RESULT " + json.dumps(drive(a.drive[0], Path(a.drive[1]))), flush=True)
        return 0
    from fit3d.guard import guard_output
    from fit3d.paths import shared_dir

    out = Path(a.out)
    if a.report:
        results = {tuple(k.split("/", 1)): r for k, r in json.loads((out / "results.json").read_text()).items()}
        table(results)
        same_results(out, results)
        return 0
    guard_output(out, [], command="bench/token_cache.py")
    codes = dict(c.split("=", 1) for c in a.code)
    results = {}
    for scenario in a.scenarios:
        for name, code in codes.items():
            run_out = out / f"{scenario}-{name}"
            env = {**os.environ, "PYTHONPATH": str(Path(code).resolve()), "OMP_WAIT_POLICY": "PASSIVE",
                   "FIT3D_SHARED": str(shared_dir())}  # this tree's shared/, whichever tree runs
            print(f"[token_cache] {scenario} with {name} ({code}) -> {run_out}", flush=True)
            p = subprocess.run([sys.executable, __file__, "--drive", scenario, str(run_out)], env=env,
                               capture_output=True, text=True)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if p.returncode or line is None:
                print(p.stdout[-3000:], p.stderr[-5000:], file=sys.stderr)
                raise SystemExit(f"{scenario} / {name} failed ({p.returncode})")
            results[(scenario, name)] = r = json.loads(line[len("RESULT "):])
            print(f"  fit3d from {r['fit3d']}: {r['images']} images, {r['cpu']:.0f} CPU s, {r['wall']:.0f} s", flush=True)
    if results:
        (out / "results.json").write_text(json.dumps({f"{s}/{n}": r for (s, n), r in results.items()}, indent=1))
        table(results)
        same_results(out, results)
    try:
        rows = overhead()
    except ImportError:  # a tree without fit3d.models.tokens first on the path
        return 0
    print(f"\nThe cache's own cost per image (this tree; 48 images, median of 3 after a warm-up; an entry: 384 channels "
          f"float32; CPU ms (wall ms); load {os.getloadavg()[0]:.1f})\n")
    print("| input | hash the pixels | write an entry (fsync, rename) | read an entry | DINOv2-S forward (CPU, section 3) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['hash_ms']:.2f} | {r['write_ms']:.2f} ({r['write_wall_ms']:.1f}) | {r['read_ms']:.2f} "
              f"({r['read_wall_ms']:.1f}) | {r['forward_ms']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
