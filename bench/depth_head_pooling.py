"""Where a depth head's difference between two backbones lives: at the scale of a token, or inside tokens.

The proof's depth heads (FiT3D's: 256 depth bins per pixel after a x4 bilinear upsampling of the tokens, SigLoss and a
gradient loss) are scored per pixel. This trains them as the benches do (``fit3d.probe.summary.eval_depth``'s settings:
``--iterations``, seeds 0..) on the original's and a fine-tuned model's features and scores each prediction twice:

- ``pixel``: the protocol's per-image metrics at the label resolution (``depth_per_image``);
- ``token``: prediction and ground truth both averaged over each token's valid pixels first (one depth per token),
  the same metrics on that grid: what is left when within-token detail (edges, thin structures) is taken out.

A fine-tuned / original ratio that is worse per pixel but not per token points at detail inside tokens; worse at both
points at the token-scale content. Data: RedKitchen frames 0-199 -> 200-398 (``val_redkitchen_depth``), or the sun3d
in-scene split (``--sun3d``, frames 935-984 -> 3160-3209: a test split, for diagnosis only).

    python bench/depth_head_pooling.py --finetuned RUN/finetuned [--sun3d] [--standardise] [--iterations 1000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.generalize as G  # noqa: E402
from fit3d.probe.summary import DEPTH_METRICS, depth_per_image  # noqa: E402


def pool_to_tokens(depth: torch.Tensor, valid: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """depth / valid [N, H, W] (H, W multiples of ``patch``) -> (mean valid depth per token [N, H/p, W/p], the share
    of each token's pixels that is valid [N, H/p, W/p])."""
    v = valid.float()[:, None]
    s = F.avg_pool2d(depth[:, None] * v, patch)[:, 0]
    n = F.avg_pool2d(v, patch)[:, 0]
    return s / n.clamp_min(1e-6), n


def token_metrics(pred: torch.Tensor, gt: torch.Tensor, min_d: float, max_d: float, patch: int) -> np.ndarray:
    """``depth_per_image``'s [N, M] metrics on the token grid: prediction and ground truth averaged over each token's
    valid ground-truth pixels (pixels outside [min_d, max_d] count as invalid, as the protocol's)."""
    from fit3d.probe.depth import valid_mask

    valid = valid_mask(gt, min_d, max_d)
    g, share = pool_to_tokens(gt, valid, patch)
    p, _ = pool_to_tokens(pred.clamp(min_d, max_d), valid, patch)
    return depth_per_image(p, torch.where(share > 0, g, torch.zeros_like(g)), min_d, max_d)


def splits(sun3d: bool, res=(224, 168)):
    """(train Split, test Split) of the chosen eval, as the benches load it."""
    from fit3d.data.readers import frame_number
    from fit3d.paths import shared_7scenes_dir, shared_dir
    from fit3d.probe.datasets import load_probe_data
    from fit3d.probe.protocol import materialise

    if not sun3d:
        return tuple(materialise(load_probe_data(shared_7scenes_dir(), "train", res, train_frames=f), "depth")
                     for f in ((0, 199), (200, 398)))
    d = load_probe_data(shared_dir() / "data" / "sun3d-office", "test", res, test_frames=(0, 10 ** 9))
    return tuple(materialise(d.subset(idx), "depth") for idx in G.in_scene_split([frame_number(n) for n in d.names]))


def check_finetuned(ap: argparse.ArgumentParser, option: str, folders: list[Path]) -> None:
    """Every ``folders`` entry a fine-tuned folder, before any work: else the parser's error naming ``option``."""
    from fit3d.errors import Fit3DError
    from fit3d.finetune.assembled import read_manifest

    for f in folders:
        try:
            read_manifest(f)
        except Fit3DError as e:
            ap.error(f"{option}: {e}")


@torch.no_grad()
def features(model, images: list) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([torch.as_tensor(np.asarray(im)).permute(2, 0, 1) for im in images]).float()
    t = model.features(x)
    return t[0], t[1]


def standardised(train: tuple, test: tuple) -> tuple:
    """((patch, cls) of train, of test) with every patch channel z-scored by the training patches' mean and std."""
    mu = train[0].mean((0, 2, 3), keepdim=True)
    sd = train[0].std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ((train[0] - mu) / sd, train[1]), ((test[0] - mu) / sd, test[1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--finetuned", type=Path, required=True, help="a Stage 2 output folder")
    ap.add_argument("--sun3d", action="store_true", help="the sun3d in-scene split instead of RedKitchen's halves")
    ap.add_argument("--iterations", type=int, default=1000, help="head iterations (the benches' 1000)")
    ap.add_argument("--seeds", type=int, default=3, help="head seeds")
    ap.add_argument("--standardise", action="store_true",
                    help="z-score each patch channel by the training split's statistics first (per source): an affine "
                         "map a linear head could absorb, so any change it makes is the heads' optimisation, not the "
                         "features' content")
    a = ap.parse_args(argv)
    check_finetuned(ap, "--finetuned", [a.finetuned])
    from fit3d.finetune.assembled import load_finetuned
    from fit3d.probe.batched import train_depth_batched
    from fit3d.probe.config import ProbeConfig
    from fit3d.probe.depth import DepthSettings, predict_depth

    torch.set_grad_enabled(False)
    train, test = splits(a.sun3d)
    original, finetuned = load_finetuned(a.finetuned)
    f = {k: (features(m, train.images), features(m, test.images)) for k, m in (("original", original),
                                                                               ("finetuned", finetuned))}
    if a.standardise:
        f = {k: standardised(*v) for k, v in f.items()}
    settings = [DepthSettings.from_config(ProbeConfig(iterations=a.iterations), 10.0, s) for s in range(a.seeds)]
    with torch.enable_grad():
        heads = train_depth_batched([f[k][0][0] for k in f], [f[k][0][1] for k in f], train.depth, settings)
    s, size, p = settings[0], tuple(test.depth.shape[-2:]), original.patch_size
    rows = {}
    for i, k in enumerate(f):
        pix, tok = [], []
        for j in range(a.seeds):
            head = heads[j * len(f) + i][0]  # seed-major: train_depth_batched's order
            pred = predict_depth(head, f[k][1][0], f[k][1][1], size)
            pix.append(np.nanmean(depth_per_image(pred, test.depth, s.min_depth, s.max_depth), 0))
            tok.append(np.nanmean(token_metrics(pred, test.depth, s.min_depth, s.max_depth, p), 0))
        rows[k] = (np.mean(pix, 0), np.mean(tok, 0))
    r, ra = DEPTH_METRICS.index("rmse"), DEPTH_METRICS.index("rmse_aligned")
    name = "sun3d 935-984 -> 3160-3209" if a.sun3d else "RedKitchen 0-199 -> 200-398"
    print(f"{name}, {len(train.images)} -> {len(test.images)} images, {a.iterations}-iteration heads x {a.seeds} seeds, "
          f"{a.finetuned}" + (", channels standardised" if a.standardise else "") + "\n")
    print("| features | pixel rmse / aligned | token rmse / aligned |\n|---|---|---|")
    for k, (pix, tok) in rows.items():
        print(f"| {k} | {pix[r]:.4f} / {pix[ra]:.4f} | {tok[r]:.4f} / {tok[ra]:.4f} |")
    (po, to), (pf, tf) = rows["original"], rows["finetuned"]
    print(f"| finetuned / original | {pf[r] / po[r]:.3f}x / {pf[ra] / po[ra]:.3f}x | {tf[r] / to[r]:.3f}x / "
          f"{tf[ra] / to[ra]:.3f}x |")


if __name__ == "__main__":
    main()
