"""Does a 3D-consistent Stage 2 target keep what is view-dependent about a whole image? (issue 21)

    .venv/bin/python bench/view_mean_diagnosis.py LIFTED_SCENE [--views 100] [--threads 2]

A lifted feature is one value per surface, whatever the camera's distance to it, so the targets of a lifted
scene cannot say how far the camera is except through which surfaces a view sees. For the training views of
``LIFTED_SCENE`` (a ``bench/generalize.py`` lift, e.g. .../lifted-backprojected-fs224/redkitchen): the frozen
backbone's tokens x at the Stage 2 input size, the rendered target t and the ``residual`` target (the lift's
subspace from t, the rest from x), each view's mean token over its unmasked tokens, and how well a ridge
regression (leave-one-out over views) predicts the view's log median depth from that mean token. Prints a table:
R^2 of each, the mean tokens' relative distance to x's, and the part of it that every view shares
(the distance of the views' average offset).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch


def loo_ridge_r2(X: np.ndarray, y: np.ndarray, lam: float) -> float:
    """Leave-one-out R^2 of ridge regression y ~ X (closed form through the hat matrix; features standardised)."""
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    yc = y - y.mean()
    K = X @ X.T
    H = K @ np.linalg.inv(K + lam * np.eye(len(y)))
    resid = (yc - H @ yc) / (1 - np.diag(H))
    return float(1 - (resid ** 2).sum() / (yc ** 2).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scene", help="a lifted scene folder of bench/generalize.py")
    ap.add_argument("--model-path", default=None, help="DINOv2-S weights (default: FIT3D_SHARED's)")
    ap.add_argument("--views", type=int, default=100)
    ap.add_argument("--resolution", type=int, nargs=2, default=[224, 168], help="Stage 2 input W H (the bench's)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from fit3d.data import read_scene
    from fit3d.finetune.data import RenderedViews, load_scenes
    from fit3d.finetune.residual import decoder_subspace, subspace_target, with_view_mean
    from fit3d.models import load_backbone
    from fit3d.paths import shared_dir

    bb = load_backbone("dinov2_small", model_path=a.model_path or str(shared_dir() / "models/dinov2-small-imgfocus"))
    scenes = load_scenes([a.scene], embed_dim=bb.embed_dim)
    views = RenderedViews(scenes, bb.patch_size, which="train", flip_prob=0.0, resolution=a.resolution)
    idx = np.linspace(0, len(views) - 1, min(a.views, len(views))).round().astype(int)
    items = [views[int(i)] for i in idx]
    names = [views.entries[int(i)][1] for i in idx]
    W, H = views.sizes[0]
    src = read_scene(views.scenes[0].meta["scene"]["path"], resolution=(W, H), names=names, load_depth=True)
    depth = {v.name: v.depth for v in src.views}
    y = np.array([math.log(float(np.median(depth[n][depth[n] > 0]))) for n in names])
    U = decoder_subspace(scenes[0].decoder)[None].expand(len(items), -1, -1)
    with torch.no_grad():
        x = torch.cat([bb.features(torch.stack([it["image"] for it in items[s:s + 16]])).patch
                       for s in range(0, len(items), 16)])
    t = torch.stack([it["target"] for it in items]).float()
    mask = torch.stack([it["mask"] for it in items])
    r = subspace_target(t, x, U, "residual")
    targets = {"original tokens x": x, "rendered target": t, "residual target (default)": r,
               "residual + view mean (viewmean)": with_view_mean(r, x, mask)}
    m = mask.float()[:, None]
    means = {k: ((v * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1)).numpy() for k, v in targets.items()}
    print(f"{len(items)} training views of {a.scene}, {W}x{H}, log median depth std {y.std():.3f}")
    print("| per-view mean token of | LOO ridge R^2 (lambda 10 / 100) for log median depth | |mean - x's mean| / |x's mean| "
          "| of which shared by all views |")
    print("|---|---|---|---|")
    mx = means["original tokens x"]
    for k, v in means.items():
        r2 = [loo_ridge_r2(v, y, lam) for lam in (10.0, 100.0)]
        d, nx = v - mx, np.linalg.norm(mx, axis=1).mean()
        rel = float(np.linalg.norm(d, axis=1).mean() / nx)
        shared = float(np.linalg.norm(d.mean(0)) / nx)  # the offset common to every view
        print(f"| {k} | {r2[0]:.3f} / {r2[1]:.3f} | {rel:.3f} | {shared:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
