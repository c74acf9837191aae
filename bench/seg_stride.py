"""Seg probe heads trained with the cross entropy at every k-th label pixel vs at every pixel: same mIoU?

    .venv/bin/python bench/seg_stride.py --out /tmp/seg_stride [--strides 1 2 4 7] [--seeds 0 1 2 3 4]

Two evaluations, each with the protocol of the command that runs it (224x168, DINOv2-S original tokens,
AdamW as ``SegSettings``, last checkpoint):

- ``camvid``: heads trained on CamVid train (367 images), tested on val (101): ``bench/generalize.py``'s
  ``camvid_seg`` (1000 iterations);
- ``rooms``: heads trained on the 14 training rooms of ``fit3d demo`` (24 views each), tested on its 4
  held-out rooms (300 iterations); the rooms are generated under ``--out`` exactly as the demo does.

For each label stride (``SegSettings.label_stride``; 1 = the full-resolution loss) the heads of every seed
train in one batched pass (``fit3d.probe.batched``). Printed per eval and stride: mIoU mean ± std over the
seeds, the paired difference to stride 1 (same seed = same initial weights and batches; mean ± std over
seeds), and the wall / CPU seconds per batched iteration. A stride keeps the result when its mIoU differs
from stride 1's by less than the seed spread (the std of stride 1 over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fit3d.clock import cpu_seconds, machine
from fit3d.paths import shared_dir, shared_model_dir
from fit3d.probe.batched import train_seg_batched
from fit3d.probe.datasets import load_probe_data
from fit3d.probe.features import FeatureCache
from fit3d.probe.protocol import Models, materialise, source_features
from fit3d.probe.seg import SegSettings, confusion_matrix, predict_seg, seg_metrics
from fit3d.probe.sources import FeatureSource


def rooms(out: Path) -> tuple[Path, Path]:
    """The demo's 14 training and 4 held-out rooms (``fit3d demo``'s defaults), generated once under ``out``."""
    from fit3d.data.synthetic import SyntheticSceneConfig
    from fit3d.data.synthetic import generate_scenes

    scfg = SyntheticSceneConfig(num_views=24, width=224, height=168, seed=0)
    generate_scenes(out / "rooms" / "train", 14, scfg, progress=False)
    generate_scenes(out / "rooms" / "test", 4, dataclasses.replace(scfg, seed=1000), progress=False)
    return out / "rooms" / "train", out / "rooms" / "test"


def splits(name: str, out: Path, res):
    """(train Split, test Split, iterations) of an evaluation."""
    from fit3d.data.synthetic import CLASS_NAMES

    if name == "camvid":
        kw, tr, te, its = dict(dataset="camvid"), shared_dir() / "data" / "camvid", None, 1000
    else:
        tr, te = rooms(out)
        kw, its = dict(dataset="scannet", num_classes=len(CLASS_NAMES)), 300
    train = materialise(load_probe_data(tr, "train", res, **kw), "seg")
    test = materialise(load_probe_data(te or tr, "test", res, **kw), "seg")  # as run_probe: the test split
    return train, test, its


def stride_bench(description: str, name: str, evals: list[str], strides: list[int], argv=None):
    """The label-stride benches' shared part (this one and ``bench/depth_stride.py``): their options, and a
    function (eval -> (train Split, test Split, iterations, train tokens, test tokens) of the original DINOv2-S
    at 224x168) given the bench's ``splits(name, out, res)``. Returns (args, that function)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=f"runs/{name}", help="feature cache and generated rooms")
    ap.add_argument("--evals", nargs="+", default=evals, choices=evals)
    ap.add_argument("--strides", type=int, nargs="+", default=strides)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--iterations", type=int, default=0, help="override the evals' head iterations (0: theirs)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out, res = Path(args.out), (224, 168)
    src = FeatureSource("original", "dinov2_small", str(shared_model_dir()))
    cache, models, cfg = FeatureCache(out / "cache"), Models("cpu"), argparse.Namespace(extract_batch=8)

    def load(ev: str, splits_of):
        train, test, its = splits_of(ev, out, res)
        return (train, test, args.iterations or its, source_features(src, train, "train", res, cache, models, cfg),
                source_features(src, test, "test", res, cache, models, cfg))

    return args, load


def main(argv=None) -> int:
    args, load = stride_bench(__doc__.splitlines()[0], "seg_stride", ["camvid", "rooms"], [1, 2, 4, 7], argv)
    rows = []
    for ev in args.evals:
        train, test, its, ftr, fte = load(ev, splits)
        C, ignore = train.data.num_classes, train.data.ignore_index
        miou = {}
        for k in args.strides:
            settings = [SegSettings(iterations=its, seed=s, ignore_index=ignore, label_stride=k) for s in args.seeds]
            t, c = time.perf_counter(), cpu_seconds()
            heads = train_seg_batched([ftr.patch], train.labels, C, settings)
            wall, cpu = (time.perf_counter() - t) / its, (cpu_seconds() - c) / its
            miou[k] = np.array([seg_metrics(confusion_matrix(predict_seg(h, fte.patch, tuple(test.labels.shape[-2:])),
                                                             test.labels, C, ignore))["miou"] for h, _ in heads])
            rows.append((ev, k, its, miou[k], miou[k] - miou[args.strides[0]], wall, cpu))
            print(f"{ev} stride {k}: miou {miou[k].mean():.4f} ± {miou[k].std(ddof=1):.4f}, {wall:.3f} s/it "
                  f"({cpu:.3f} CPU s/it)", flush=True)
    m = machine()
    print(f"\nSeg heads, cross entropy at every k-th label pixel (k = 1: full resolution); DINOv2-S original "
          f"tokens at 224x168, seeds {' '.join(map(str, args.seeds))} in one batched pass; {torch.get_num_threads()} "
          f"torch threads, {m['cpus']} cores, load {m['load']}")
    print("| eval | stride | iterations | mIoU mean ± std | minus stride 1 (paired, mean ± std) | within the seed "
          "spread | s / iteration | CPU s / iteration |")
    print("|---|---|---|---|---|---|---|---|")
    base = {ev: next(r[3] for r in rows if r[0] == ev and r[1] == args.strides[0]) for ev in args.evals}
    for ev, k, its, v, d, wall, cpu in rows:
        spread = base[ev].std(ddof=1)
        print(f"| {ev} | {k} | {its} | {v.mean():.4f} ± {v.std(ddof=1):.4f} | {d.mean():+.4f} ± {d.std(ddof=1):.4f} | "
              f"{'yes' if abs(d.mean()) <= spread else 'no'} | {wall:.3f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
