"""Per-class IoU of the original and fine-tuned models on ``bench/generalize.py``'s CamVid eval: where a fine-tuned
model's mIoU difference comes from (a diagnosis of a result, not a selection of anything).

    python bench/seg_classes.py --finetuned RUN/finetuned [RUN2/finetuned ...] --cache-dir DIR [--split val|val_sequence]

``--split val``: the test eval's protocol (heads on CamVid train, tested on val); ``val_sequence``: the validation
eval's (``bench/recipe_search.py``'s ``val_camvid_seg``: sequences 0001TP + 0016E5 -> 0006R0 of the train split).
Heads as ``bench/generalize.py`` trains them (1000 iterations, 3 seeds, batched), features from the shared token
cache (``--cache-dir``: the bench's, so nothing is computed again). Prints one table: per class, the pixel share of
the test labels, the original's IoU (pooled over images, mean over head seeds) and each fine-tuned model's IoU minus it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalize as G  # noqa: E402

from fit3d.paths import shared_dir, shared_model_dir  # noqa: E402
from fit3d.probe.datasets import load_probe_data  # noqa: E402
from fit3d.probe.summary import SummaryConfig, eval_seg  # noqa: E402


def class_iou(conf: np.ndarray) -> np.ndarray:
    """[seeds, N, C, C] per-image confusions -> [C] IoU pooled over images, averaged over seeds (NaN: class absent)."""
    pooled = conf.sum(1)  # [seeds, C, C] (rows: truth, columns: prediction)
    tp = np.diagonal(pooled, axis1=1, axis2=2)
    union = pooled.sum(2) + pooled.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a class absent in every seed: NaN, as meant
        return np.nanmean(np.where(union > 0, tp / union, np.nan), 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finetuned", nargs="+", required=True, help="fine-tuned model folders (a run's finetuned/)")
    ap.add_argument("--cache-dir", required=True, help="the token cache bench/generalize.py used")
    ap.add_argument("--split", choices=("val", "val_sequence"), default="val")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fit3d.probe.features import FeatureCache
    from fit3d.probe.sources import FeatureSource

    cfg = G.GeneralizeConfig()
    res = tuple(int(x) for x in cfg.probe_resolution)
    camvid = shared_dir() / "data" / "camvid"
    if args.split == "val":
        data = {"tr": (load_probe_data(str(camvid), "train", res, dataset="camvid"), "seg"),
                "te": (load_probe_data(str(camvid), "test", res, dataset="camvid"), "seg")}
    else:  # recipe_search's val_camvid_seg split
        import recipe_search as R

        cv = load_probe_data(str(camvid), "train", res, dataset="camvid")
        held = [n.startswith("0006R0") for n in cv.names]
        data = {"tr": (R._sub(cv, [not h for h in held]), "seg"), "te": (R._sub(cv, held), "seg")}
    splits = G.materialise_splits(data)
    model = str(shared_model_dir())
    original = FeatureSource("original", "dinov2_small", model)
    trf, tef = {}, {}
    for i, folder in enumerate(args.finetuned):  # the bench's extract: one fine-tuned model beside the original
        sources = {"original": original, "finetuned": FeatureSource("finetuned", "dinov2_small", model, folder)}
        feats = G.extract(sources, splits, FeatureCache(args.cache_dir), res, "fp32")
        trf["original"], tef["original"] = feats["tr"]["original"], feats["te"]["original"]
        trf[f"ft{i}"], tef[f"ft{i}"] = feats["tr"]["finetuned"], feats["te"]["finetuned"]
    tr, te = splits["tr"], splits["te"]
    conf = eval_seg(trf, tr.labels, tef, te.labels, tr.data.num_classes,
                    SummaryConfig(probe_iterations=args.iterations, seeds=args.seeds), sources=list(trf))
    names = getattr(tr.data, "class_names", None) or [str(c) for c in range(tr.data.num_classes)]
    iou = {k: class_iou(v) for k, v in conf.items()}
    share = conf["original"][0].sum((0, 2))
    share = share / max(share.sum(), 1)
    head = " | ".join(f"ft{i} - original" for i in range(len(args.finetuned)))
    print(f"CamVid {args.split}: per-class IoU, heads {args.iterations} iterations x {args.seeds} seeds\n")
    print(f"| class | pixels | original | {head} |\n|---|---|---|" + "---|" * len(args.finetuned))
    for c, name in enumerate(names):
        diffs = " | ".join(f"{iou[f'ft{i}'][c] - iou['original'][c]:+.4f}" for i in range(len(args.finetuned)))
        print(f"| {name} | {100 * share[c]:.1f}% | {iou['original'][c]:.4f} | {diffs} |")
    mean = " | ".join(f"{np.nanmean(iou[f'ft{i}']) - np.nanmean(iou['original']):+.4f}" for i in range(len(args.finetuned)))
    print(f"| mean (pooled IoU) | | {np.nanmean(iou['original']):.4f} | {mean} |")
    for i, f in enumerate(args.finetuned):
        print(f"ft{i}: {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
