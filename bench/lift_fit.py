"""Does a lifted scene underfit or overfit? Feature cosine on its training views next to its held-out views.

    .venv/bin/python bench/lift_fit.py --lift runs/bench_lift_5000 [--train-every 7]

Renders the lifted Gaussians (``gaussians.ply`` + ``decoder.safetensors`` of a ``fit3d lift`` /
``bench/lift_7scenes.py`` output) for every ``--train-every``-th training view and every held-out view,
decodes, average-pools to the token grid and prints the mean cosine to the cached backbone tokens
(``<lift>/cache``), the same measure as ``lift.json``'s ``heldout.feature_cosine``. Similar numbers on
both mean the lift is limited by fitting, not by generalisation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fit3d.lift.targets import TargetCache, lifted_targets  # noqa: E402
from fit3d.lift.lifted import load_lifted  # noqa: E402
from fit3d.splat.render import render  # noqa: E402


@torch.no_grad()
def mean_cosine(lifted, cache: TargetCache, views) -> float:
    W, H = lifted.resolution
    cos = []
    for v in views:
        r = render(lifted.gaussians, v.K, v.c2w, W, H, with_rgb=False)
        dec = lifted.decoder(r.features.permute(2, 0, 1)[None])  # [1, D, H, W]
        tgt = cache.grid(cache.index(v.name))  # [D, h, w]
        cos.append(float(F.cosine_similarity(F.adaptive_avg_pool2d(dec, tgt.shape[-2:])[0], tgt, dim=0).mean()))
    return float(np.mean(cos))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lift", required=True, help="a lifted scene folder with its cache/ (bench/lift_7scenes.py --out)")
    ap.add_argument("--train-every", type=int, default=7, help="evaluate every k-th training view")
    args = ap.parse_args()
    lifted = load_lifted(args.lift)
    cache = lifted_targets(args.lift)  # the lift's targets, read back from its token cache
    train = lifted.read_views("train").views[::args.train_every]
    held = lifted.read_views("heldout").views
    print(f"| {args.lift} | views | feature cosine |\n|---|---|---|")
    print(f"| training views (every {args.train_every}th) | {len(train)} | {mean_cosine(lifted, cache, train):.4f} |")
    print(f"| held-out views | {len(held)} | {mean_cosine(lifted, cache, held):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
