"""What the numba kernels cost a fresh process before its first render: compiled from scratch (an empty
numba cache: the first run after installing or editing a kernel) and loaded from the on-disk cache (every
later process: the kernels are ``cache=True``), then the same calls again in that process.

    .venv/bin/python bench/numba_load.py [--repeats 3]

Each row is a new Python process that imports the renderer and runs what Stage 1's solve calls (a colour +
feature render with its backward, one view's compositing weights) on 500 random Gaussians at 96x72; CPU
seconds are the child's own (user + system).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, time
c0 = time.process_time()
import torch
torch.set_num_threads(2)
from fit3d.splat.fixed_views import FixedViews
from fit3d.splat.gaussians import FeatureGaussians
from fit3d.splat.render import render
c1 = time.process_time()
g = torch.Generator().manual_seed(0)
n = 500
gs = FeatureGaussians(means=torch.randn(n, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, 3.0]),
                      quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
                      log_scales=torch.full((n, 3), -3.0), opacity_logits=torch.zeros(n),
                      sh=torch.randn(n, 16, 3, generator=g) * 0.1, features=torch.randn(n, 8, generator=g))
for t in (gs.means, gs.sh, gs.features):
    t.requires_grad_(True)
K = [[80.0, 0, 48], [0, 80.0, 36], [0, 0, 1]]
c2w = torch.eye(4)

class V:
    pass

v = V(); v.K, v.c2w = torch.tensor(K), c2w
calls = []
for _ in range(2):
    t = time.process_time()
    out = render(gs, torch.tensor(K), c2w, 96, 72, backend="numba")
    (out.rgb.sum() + out.features.sum()).backward()
    FixedViews(gs.means.detach(), gs.quats, gs.log_scales.exp(), torch.sigmoid(gs.opacity_logits), [v], 96, 72,
               "numba").weights(0)
    calls.append(time.process_time() - t)
print(json.dumps({"import": c1 - c0, "first": calls[0], "second": calls[1]}))
"""


def child(cache_dir: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as empty:
            rows.append(("compiled (empty numba cache)", child(empty)))
        rows.append(("loaded from the on-disk cache", child(None)))
    print(f"numba kernels in a fresh process, CPU seconds (median of {args.repeats}); 2 cores, load "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| process | import | first render + backward + weights | same calls again |\n|---|---|---|---|")
    for name in dict.fromkeys(n for n, _ in rows):
        vals = [d for n, d in rows if n == name]
        med = {k: sorted(d[k] for d in vals)[len(vals) // 2] for k in ("import", "first", "second")}
        print(f"| {name} | {med['import']:.2f} | {med['first']:.2f} | {med['second']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
