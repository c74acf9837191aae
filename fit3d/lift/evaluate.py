"""Stage 1 held-out evaluation: PSNR, depth abs rel and the decoded features' cosine to the backbone's
tokens on views never trained on, next to two baselines (the scene-mean token and the nearest training
view's tokens), and the PCA picture of a few held-out views."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.init import as_gaussians
from fit3d.lift.targets import TargetCache
from fit3d.splat.render import render
from fit3d.viz.images import save_png
from fit3d.viz.panels import heldout_pca_figure


def pose_distance(a: np.ndarray, b: np.ndarray, extent: float) -> float:
    """Camera-centre distance plus rotation angle (rad) x half the scene extent. a, b [4, 4] c2w."""
    r = a[:3, :3].T @ b[:3, :3]
    ang = math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2)))
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3]) + 0.5 * extent * ang)


def _cos(a: Tensor, b: Tensor) -> float:
    """Mean cosine over the grid. a, b [D, h, w] (b may be [D, 1, 1])."""
    return float(F.cosine_similarity(a, b.expand_as(a), dim=0).mean())


@torch.no_grad()
def evaluate_heldout(params: dict, decoder: FeatureDecoder, views, train_idx: list[int], held_idx: list[int],
                     cache: TargetCache, sh_degree: int, size: tuple[int, int], extent: float,
                     backend: str = "auto", n_pca: int = 0) -> tuple[dict, list]:
    """Held-out metrics and (for the first ``n_pca`` views) (image, target grid, rendered grid) triples."""
    W, H = size
    dev = params["means"].device
    g = as_gaussians({k: v.detach() for k, v in params.items()}, sh_degree)
    train_grids = [cache.grid(cache.index(views[i].name)) for i in train_idx]
    mean_feat = torch.stack([t.mean((1, 2)) for t in train_grids]).mean(0)[:, None, None]  # [D, 1, 1]
    psnrs, absrels, cos, cos_mean, cos_near, pca = [], [], [], [], [], []
    for j, i in enumerate(held_idx):
        v = views[i]
        r = render(g, v.K, v.c2w, W, H, with_features=True, backend=backend)
        mse = float(((r.rgb.clamp(0, 1) - torch.as_tensor(v.image, device=dev)) ** 2).mean())
        psnrs.append(-10 * math.log10(max(mse, 1e-10)))
        if v.depth is not None:
            gt = torch.as_tensor(v.depth, device=dev)
            ok = (gt > 0) & (r.alpha > 0.5)
            if bool(ok.any()):
                absrels.append(float(((r.depth[ok] - gt[ok]).abs() / gt[ok]).mean()))  # depth: expected depth
        tgt = cache.grid(cache.index(v.name), dev)  # [D, h, w]
        dec = decoder(r.features.permute(2, 0, 1)[None])  # [1, D, H, W]
        rend = F.adaptive_avg_pool2d(dec, tgt.shape[-2:])[0]  # [D, h, w] at the patch grid
        cos.append(_cos(rend, tgt))
        cos_mean.append(_cos(tgt, mean_feat.to(dev)))
        near = min(range(len(train_idx)), key=lambda k: pose_distance(views[train_idx[k]].c2w, v.c2w, extent))
        cos_near.append(_cos(train_grids[near].to(dev), tgt))
        if j < n_pca:
            pca.append((v.image, tgt.cpu(), rend.cpu()))
    m = lambda x: float(np.mean(x)) if x else None  # noqa: E731
    return {"psnr": m(psnrs), "depth_abs_rel": m(absrels), "feature_cosine": m(cos),
            "baseline_mean_cosine": m(cos_mean), "baseline_nearest_cosine": m(cos_near),
            "views": len(held_idx)}, pca


def save_pca_figure(path, triples, title: str = "Stage 1, held-out views: backbone vs lifted features (one PCA "
                                                 "basis)") -> None:
    """Rows: held-out image | backbone features | rendered decoded features (shared PCA basis), titled."""
    if not triples:
        return
    save_png(path, heldout_pca_figure([(np.clip(img, 0, 1), t, r) for img, t, r in triples], title))
