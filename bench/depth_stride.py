"""Depth probe heads trained with the loss at every 2nd label pixel vs at every pixel: same RMSE?

    .venv/bin/python bench/depth_stride.py --out /tmp/depth_stride [--strides 1 2] [--seeds 0 1 2 3 4]

Two evaluations on validation data (no test split of ``bench/generalize.py``), each at 224x168 with DINOv2-S
original tokens, ``DepthSettings`` as the probes train them (last checkpoint):

- ``redkitchen``: heads trained on RedKitchen frames 0-199, tested on 200-398 (``bench/recipe_search.py``'s
  ``val_redkitchen_depth``; every frame the dataset holds in those ranges), 1000 iterations as
  ``bench/generalize.py``'s depth evals;
- ``rooms``: heads trained on the 14 training rooms of ``fit3d demo`` (24 views each), tested on its 4
  held-out rooms (300 iterations, the demo's), generated under ``--out`` as ``bench/seg_stride.py`` does.

For each label stride (``DepthSettings.label_stride``; 1 = the full-resolution loss; the gradient loss
keeps every scale's pixel pairs only up to 2, ``fit3d.probe.depth.gradient_pairs``) the heads of every seed
train in one batched pass. Printed per eval and stride: RMSE (metric) and scale-aligned RMSE mean ± std over
the seeds, the paired difference to stride 1 (same seed = same initial weights and batches), and wall / CPU
seconds per batched iteration. A stride keeps the result when its RMSE differs from stride 1's by less than
the seed spread (the std of stride 1 over seeds).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seg_stride import rooms, stride_bench  # noqa: E402

from fit3d.clock import cpu_seconds, machine  # noqa: E402
from fit3d.paths import shared_7scenes_dir  # noqa: E402
from fit3d.probe.batched import train_depth_batched  # noqa: E402
from fit3d.probe.datasets import load_probe_data  # noqa: E402
from fit3d.probe.depth import DepthSettings, predict_depth  # noqa: E402
from fit3d.probe.protocol import materialise  # noqa: E402
from fit3d.probe.summary import DEPTH_METRICS, depth_per_image  # noqa: E402


def splits(name: str, out: Path, res):
    """(train Split, test Split, iterations) of an evaluation."""
    from fit3d.data.synthetic import CLASS_NAMES

    if name == "redkitchen":
        rk = shared_7scenes_dir()
        tr = load_probe_data(rk, "train", res, train_frames=(0, 199))
        te = load_probe_data(rk, "train", res, train_frames=(200, 398))
        its = 1000
    else:
        trd, ted = rooms(out)
        kw = dict(dataset="scannet", num_classes=len(CLASS_NAMES))
        tr, te, its = load_probe_data(trd, "train", res, **kw), load_probe_data(ted, "test", res, **kw), 300
    return materialise(tr, "depth"), materialise(te, "depth"), its


def main(argv=None) -> int:
    args, load = stride_bench(__doc__.splitlines()[0], "depth_stride", ["redkitchen", "rooms"], [1, 2], argv)
    rows = []
    for ev in args.evals:
        train, test, its, ftr, fte = load(ev, splits)
        max_depth = float(train.data.max_depth)
        for k in args.strides:
            settings = [DepthSettings(iterations=its, seed=s, max_depth=max_depth, label_stride=k) for s in args.seeds]
            t, c = time.perf_counter(), cpu_seconds()
            heads = train_depth_batched([ftr.patch], [ftr.cls], train.depth, settings)
            wall, cpu = (time.perf_counter() - t) / its, (cpu_seconds() - c) / its
            per = [depth_per_image(predict_depth(h, fte.patch, fte.cls, tuple(test.depth.shape[-2:])), test.depth,
                                   settings[0].min_depth, max_depth) for h, _ in heads]  # [N, M] each
            col = {name: i for i, name in enumerate(DEPTH_METRICS)}
            rmse = np.array([np.nanmean(p[:, col["rmse"]]) for p in per])
            aligned = np.array([np.nanmean(p[:, col["rmse_aligned"]]) for p in per])
            rows.append([ev, k, its, rmse, aligned, wall, cpu])
            print(f"{ev} stride {k}: rmse {rmse.mean():.4f} ± {rmse.std(ddof=1):.4f}, {wall:.3f} s/it "
                  f"({cpu:.3f} CPU s/it)", flush=True)
    m = machine()
    print(f"\nDepth heads, loss at every k-th label pixel (k = 1: full resolution); DINOv2-S original tokens at "
          f"224x168, seeds {' '.join(map(str, args.seeds))} in one batched pass; {torch.get_num_threads()} torch "
          f"threads, {m['cpus']} cores, load {m['load']}")
    print("| eval | stride | iterations | RMSE mean ± std | minus stride 1 (paired) | within the seed spread | "
          "aligned RMSE mean ± std | minus stride 1 (paired) | s / iteration | CPU s / iteration |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ev, k, its, rmse, aligned, wall, cpu in rows:
        base = next(r for r in rows if r[0] == ev and r[1] == args.strides[0])
        d, da = rmse - base[3], aligned - base[4]
        print(f"| {ev} | {k} | {its} | {rmse.mean():.4f} ± {rmse.std(ddof=1):.4f} | {d.mean():+.4f} ± {d.std(ddof=1):.4f} | "
              f"{'yes' if abs(d.mean()) <= base[3].std(ddof=1) else 'no'} | {aligned.mean():.4f} ± {aligned.std(ddof=1):.4f} "
              f"| {da.mean():+.4f} ± {da.std(ddof=1):.4f} | {wall:.3f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
