"""Depth heads of original / fine-tuned / concat x 3 seeds: trained one by one (``depth.train_depth``,
the separate path) vs all together (``batched.train_depth_batched``, what ``fit3d probe`` runs), on the
same cached features of RedKitchen (train frames 0-398, test 400-498, 224x168, shared DINOv2-S).

    PYTHONPATH=. .venv/bin/python bench/probe_speed.py [--finetuned DIR] [--iterations 3000] [--threads 1]

Without ``--finetuned`` a fine-tuned folder is made once under ``--work`` (a back-projected lifted scene
of 25 training views + ``--finetune-steps`` Stage 2 steps): enough to give the fine-tuned source real,
different weights; the timing does not depend on how good they are. Prints seconds and test RMSE per
head both ways; the last line is ``speedup X.XX max_rmse_diff Y`` (separate seconds / batched seconds,
largest |RMSE separate - RMSE batched| over the 9 heads). Timings on shared cores are noisy; the two
ways run back to back in one process at the same thread count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from fit3d.paths import REPO_ROOT, shared_7scenes_dir, shared_model_dir
from fit3d.probe.batched import train_depth_batched
from fit3d.probe.datasets import load_probe_data
from fit3d.probe.depth import DepthSettings, depth_metrics, predict_depth, train_depth
from fit3d.probe.features import FeatureCache
from fit3d.probe.protocol import Models, ProbeConfig, materialise, source_features, sources

SEEDS = (0, 1, 2)


def make_finetuned(work: Path, steps: int, resolution) -> Path:
    """A short Stage 2 run on a back-projected lift of 25 RedKitchen training views (built once)."""
    from fit3d.finetune import FinetuneConfig
    from fit3d.lift.backprojected import backprojected_lift
    from fit3d.finetune.trainer import finetune
    from fit3d.models import load_backbone

    out = work / "finetuned"
    if (out / "fit3d.json").exists():
        return out
    lifted = work / "lifted" / "redkitchen"
    if not (lifted / "lift.json").exists():
        bb = load_backbone("dinov2_small", model_path=str(shared_model_dir()))
        backprojected_lift(shared_7scenes_dir(), bb, lifted, train_views=[f"frame-{i:06d}" for i in range(0, 400, 16)],
                           heldout_views=[f"frame-{i:06d}" for i in range(8, 400, 80)], resolution=resolution,
                           stride=4, footprint=1.5, model_path=str(shared_model_dir()))
    finetune([str(lifted)], "dinov2_small", out, FinetuneConfig(max_steps=steps, resolution=list(resolution),
                                                                evaluate=False, progress=False, workers=0),
             model_path=str(shared_model_dir()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finetuned", default=None, help="fit3d fine-tuned folder (default: make a short one)")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--finetune-steps", type=int, default=20)
    ap.add_argument("--work", default=str(REPO_ROOT / "runs" / "probe_speed"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work, res = Path(a.work), (224, 168)
    ft_dir = a.finetuned or str(make_finetuned(work, a.finetune_steps, res))
    cfg = ProbeConfig(task="depth", data=str(shared_7scenes_dir()), model_path=str(shared_model_dir()),
                      finetuned=ft_dir, features=["original", "finetuned", "concat"], resolution=list(res),
                      iterations=a.iterations, cache_dir=str(work / "cache"))
    kw = dict(train_frames=(0, 398), test_frames=(400, 498))
    train = materialise(load_probe_data(cfg.data, "train", res, **kw), "depth")
    test = materialise(load_probe_data(cfg.data, "test", res, **kw), "depth")
    srcs, cache, models = sources(cfg), FeatureCache(cfg.cache_dir), Models("cpu")
    tr = [source_features(s, train, "train", res, cache, models, cfg) for s in srcs]
    te = [source_features(s, test, "test", res, cache, models, cfg) for s in srcs]
    settings = [DepthSettings.from_config(cfg, test.data.max_depth, seed) for seed in SEEDS]
    size = tuple(test.depth.shape[-2:])

    def rmse(head, f):
        pred = predict_depth(head, te[f].patch, te[f].cls, size)
        return depth_metrics(pred, test.depth, settings[0].min_depth, settings[0].max_depth)["rmse"]

    sep, sep_s = {}, {}
    for si, s in enumerate(settings):
        for f, src in enumerate(srcs):
            t0 = time.perf_counter()
            head, _ = train_depth(tr[f].patch, tr[f].cls, train.depth, s)
            sep_s[(si, f)] = time.perf_counter() - t0
            sep[(si, f)] = rmse(head, f)
            print(f"separate {src.label} seed {s.seed}: {sep_s[(si, f)]:.1f}s rmse {sep[(si, f)]:.5f}", flush=True)
    t0 = time.perf_counter()
    trained = train_depth_batched([t.patch for t in tr], [t.cls for t in tr], train.depth, settings)
    batched_s = time.perf_counter() - t0
    bat = {(si, f): rmse(trained[si * len(srcs) + f][0], f) for si in range(len(settings)) for f in range(len(srcs))}
    total = sum(sep_s.values())
    print(f"\n{len(srcs)} sources x {len(SEEDS)} seeds, {a.iterations} iterations, batch {cfg.batch_size}, "
          f"{res[0]}x{res[1]}, {len(train.images)} train / {len(test.images)} test views, {a.threads} thread(s)\n")
    print("| source | seed | separate s | separate RMSE | batched RMSE | diff |")
    print("|---|---|---|---|---|---|")
    for (si, f), r in sep.items():
        print(f"| {srcs[f].label} | {settings[si].seed} | {sep_s[(si, f)]:.1f} | {r:.5f} | {bat[(si, f)]:.5f} | "
              f"{abs(r - bat[(si, f)]):.1e} |")
    print(f"| all 9, separate | | {total:.1f} | | | |")
    print(f"| all 9, batched (one pass) | | {batched_s:.1f} | | | |\n")
    print(f"speedup {total / batched_s:.2f} max_rmse_diff {max(abs(sep[k] - bat[k]) for k in sep):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
