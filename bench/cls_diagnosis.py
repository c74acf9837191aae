"""Which token loses the fine-tuned model's metric depth: depth heads on mixed patch / [CLS] sources.

    python bench/cls_diagnosis.py runs/search/noicl-default-300 [more runs] --scenes-dir /tmp/research/scenes \
        --cache-dir /tmp/research/cache
    python bench/cls_diagnosis.py --full runs/generalize [more runs] --cache-dir CACHE   # at full scale

For each ``bench/recipe_search.py`` run given (its fine-tuned model under RUN/finetuned), DINOv2's linear depth
head (patch tokens joined with the image's [CLS]) is trained on RedKitchen frames 0-199 from six feature
mixes -- original / fine-tuned patch tokens x original / fine-tuned / no [CLS] -- and tested on RedKitchen
200-398 (``val_redkitchen_depth``) and on every frame of the unlifted cross scene (``val_cross_depth``;
icl-livingroom1). Validation data only. Printed per run: metric and scale-aligned RMSE (mean over seeds) per
mix, and the relative drift |x_ft - x| / |x| of the [CLS] and patch tokens on both splits.

``--blocks SCENE``: where the drift is made: the relative drift of [CLS] and the patch tokens after every block
(hidden states before the final LayerNorm) on every 2nd frame of SCENE at 224x168, for each run's fine-tuned model,
and how much of the output [CLS] drift the final LayerNorm makes (the drift with the original's LayerNorm swapped in).

``--full``: the runs are ``bench/generalize.py`` outputs and the heads are its test eval
``sun3d_depth_from_redkitchen`` (RedKitchen frames 0-398 -> every sun3d-office frame, its probe iterations and
seeds); with the run's ``--cache-dir`` every token is read from the cache.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalize as G  # noqa: E402
import recipe_search as R  # noqa: E402

from fit3d.probe.batched import train_depth_batched  # noqa: E402
from fit3d.probe.depth import DepthSettings, predict_depth  # noqa: E402
from fit3d.probe.features import FeatureCache  # noqa: E402
from fit3d.probe.sources import FeatureSource  # noqa: E402
from fit3d.probe.summary import DEPTH_METRICS, depth_per_image  # noqa: E402


def mixes(f: dict) -> dict:
    """{name: (patch [N, D, h, w], cls [N, D] | None)} of the original / fine-tuned tokens."""
    o, t = f["original"], f["finetuned"]
    return {"original patch + original [CLS]": (o.patch, o.cls), "fine-tuned patch + fine-tuned [CLS]": (t.patch, t.cls),
            "fine-tuned patch + original [CLS]": (t.patch, o.cls), "original patch + fine-tuned [CLS]": (o.patch, t.cls),
            "fine-tuned patch, no [CLS]": (t.patch, None), "original patch, no [CLS]": (o.patch, None)}


def rmse_of(train, test, train_depth, test_depth, iterations: int, seeds: int) -> tuple[float, float]:
    """(metric RMSE, aligned RMSE) of depth heads trained on ``train`` = (patch, cls | None), means over seeds."""
    use_cls = train[1] is not None
    cls = lambda x: x[1] if use_cls else torch.zeros(len(x[0]), 1)  # noqa: E731 - unused when use_cls is off
    st = [DepthSettings(iterations=iterations, seed=s, max_depth=10.0, use_cls=use_cls) for s in range(seeds)]
    heads = train_depth_batched([train[0]], [cls(train)], train_depth, st)
    col = {n: i for i, n in enumerate(DEPTH_METRICS)}
    per = [depth_per_image(predict_depth(h, test[0], cls(test), tuple(test_depth.shape[-2:])), test_depth, 1e-3, 10.0)
           for h, _ in heads]
    return (float(np.mean([np.nanmean(p[:, col["rmse"]]) for p in per])),
            float(np.mean([np.nanmean(p[:, col["rmse_aligned"]]) for p in per])))


def drift(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of |b - a| / |a| along the channels (dim 1)."""
    return float(((b - a).norm(dim=1) / a.norm(dim=1)).mean())


def run_sources(model_path: str, run: Path) -> dict:
    """The original and the fine-tuned model of a bench run folder (its ``finetuned`` output)."""
    return {"original": FeatureSource("original", "dinov2_small", model_path),
            "finetuned": FeatureSource("finetuned", "dinov2_small", model_path, str(run / "finetuned"))}


def print_drift(feats: dict, splits: tuple[tuple[str, str], ...]) -> None:
    """The [CLS] and patch drift of the fine-tuned tokens on ``splits`` ((key, label) pairs)."""
    print("\n| split | [CLS] drift | patch drift |\n|---|---|---|")
    for k, label in splits:
        o, t = feats[k]["original"], feats[k]["finetuned"]
        print(f"| {label} | {drift(o.cls, t.cls):.3f} | {drift(o.patch, t.patch):.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="bench/recipe_search.py output folders")
    ap.add_argument("--scenes-dir", help="the runs' --scenes-dir (generated validation rooms live there; not with --full)")
    ap.add_argument("--full", action="store_true", help="the runs are bench/generalize.py outputs: RedKitchen -> sun3d")
    ap.add_argument("--blocks", metavar="SCENE", help="only the drift after every block, on this scene's frames")
    ap.add_argument("--cache-dir", help="the runs' feature cache (not with --blocks)")
    ap.add_argument("--iterations", type=int, default=None, help="default: the bench's probe iterations")
    ap.add_argument("--seeds", type=int, default=None, help="default: the bench's head seeds")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.blocks:
        return block_drift(args)
    if not args.cache_dir:
        ap.error("--cache-dir is needed (the runs' feature cache)")
    if not args.full and not args.scenes_dir:
        ap.error("--scenes-dir is needed for bench/recipe_search.py runs")
    base = G.GeneralizeConfig if args.full else R.SearchConfig
    args.iterations = args.iterations or base.probe_iterations
    args.seeds = args.seeds or base.seeds
    torch.set_num_threads(args.threads)
    res = (224, 168)
    if args.full:
        return full_scale(args, res)
    for run in map(Path, args.runs):
        cfg = R.SearchConfig(out=str(run), icl="", evals=["val_redkitchen_depth", "val_cross_depth"])
        splits = G.materialise_splits(R.val_data(cfg, Path(args.scenes_dir), res))
        feats = G.extract(run_sources(cfg.model_path, run), splits, FeatureCache(Path(args.cache_dir)), res)
        tr = mixes(feats["vrk_train"])
        te = {k: mixes(feats[k]) for k in ("vrk_test", "vcross_test")}
        print(f"\n{run}: depth heads on RedKitchen 0-199 ({args.iterations} iterations, {args.seeds} seeds)\n")
        print("| features the head reads | -> RedKitchen 200-398 RMSE | aligned | -> cross scene RMSE | aligned |")
        print("|---|---|---|---|---|")
        for name in tr:
            r = [rmse_of(tr[name], te[k][name], splits["vrk_train"].depth, splits[k].depth, args.iterations, args.seeds)
                 for k in ("vrk_test", "vcross_test")]
            print(f"| {name} | {r[0][0]:.4f} | {r[0][1]:.4f} | {r[1][0]:.4f} | {r[1][1]:.4f} |", flush=True)
        print_drift(feats, (("vrk_train", "RedKitchen 0-199"), ("vcross_test", "cross scene")))
    return 0


def block_drift(args) -> int:
    """Relative drift of [CLS] and the patch tokens after every block of each run's fine-tuned model."""
    from fit3d.data import read_scene
    from fit3d.finetune import load_finetuned

    torch.set_num_threads(args.threads)
    views = read_scene(args.blocks, resolution=(224, 168), load_depth=False).views[::2]
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(v.image)).permute(2, 0, 1).float() for v in views])
    for run in map(Path, args.runs):
        orig, ft = load_finetuned(run / "finetuned")
        with torch.no_grad():  # the backbones' own input normalisation, then every hidden state
            ho, hf = (m.model(pixel_values=m.normalize(x), output_hidden_states=True).hidden_states for m in (orig, ft))
        print(f"\n{run}: drift after each block on {len(x)} frames of {args.blocks}\n")
        print("| after block | [CLS] drift | patch drift |\n|---|---|---|")
        for i, (a, b) in enumerate(zip(ho, hf)):  # [B, 1 + T, D]: tokens as rows
            print(f"| {i} | {drift(a[:, 0], b[:, 0]):.3f} | {drift(a[:, 1:].flatten(0, 1), b[:, 1:].flatten(0, 1)):.3f} |")
        lo, lf = orig.model.layernorm, ft.model.layernorm  # the final LayerNorm, shared by [CLS] and patches
        swapped = copy.deepcopy(ft)
        swapped.model.layernorm.load_state_dict(lo.state_dict())
        with torch.no_grad():
            c0, c1, c2 = (m.features(x).cls for m in (orig, ft, swapped))
        print(f"\nfinal LayerNorm: relative change of weight {float((lf.weight - lo.weight).norm() / lo.weight.norm()):.4f}, "
              f"of bias {float((lf.bias - lo.bias).norm() / lo.bias.norm()):.4f}; output [CLS] drift {drift(c0, c1):.3f}, "
              f"{drift(c0, c2):.3f} with the original's final LayerNorm")
    return 0


def full_scale(args, res) -> int:
    """The test eval sun3d_depth_from_redkitchen of bench/generalize.py runs, from mixed token sources."""
    from fit3d.probe.datasets import load_probe_data

    cfg = G.GeneralizeConfig()
    data = {"rk": (load_probe_data(cfg.redkitchen, "train", res, train_frames=(0, 398)), "depth"),
            "sun3d": (load_probe_data(cfg.sun3d, "test", res, test_frames=(0, 10 ** 9)), "depth")}
    splits = G.materialise_splits(data)
    for run in map(Path, args.runs):
        feats = G.extract(run_sources(cfg.model_path, run), splits, FeatureCache(Path(args.cache_dir)), res)
        tr, te = mixes(feats["rk"]), mixes(feats["sun3d"])
        print(f"\n{run}: depth heads on RedKitchen 0-398 ({args.iterations} iterations, {args.seeds} seeds) -> sun3d\n")
        print("| features the head reads | -> sun3d RMSE | aligned |\n|---|---|---|")
        for name in tr:
            m, a = rmse_of(tr[name], te[name], splits["rk"].depth, splits["sun3d"].depth, args.iterations, args.seeds)
            print(f"| {name} | {m:.4f} | {a:.4f} |", flush=True)
        print_drift(feats, (("rk", "RedKitchen 0-398"), ("sun3d", "sun3d-office")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
