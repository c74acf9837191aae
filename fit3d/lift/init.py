"""Stage 1 initialisation: view split, scene extent, initial points (scene points, fused depth or random
points in the frusta) and the raw 3DGS parameters built from them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from fit3d.lift.config import LiftConfig
from fit3d.splat.gaussians import FeatureGaussians, rgb_to_sh_dc


def split_views(names: list[str], every: int) -> tuple[list[int], list[int]]:
    """(train, heldout) indices: every ``every``-th view (index % every == 0) is held out."""
    held = [i for i in range(len(names)) if every > 0 and i % every == 0]
    return [i for i in range(len(names)) if i not in set(held)], held


def camera_extent(c2ws: np.ndarray) -> float:
    """3DGS's scene radius: 1.1 x the largest camera-centre distance from their mean. c2ws [V, 4, 4]."""
    c = c2ws[:, :3, 3]
    return float(1.1 * np.linalg.norm(c - c.mean(0), axis=1).max())


def scene_extent(train_views, points: np.ndarray) -> float:
    """The scale of the xyz learning rate and the split threshold: ``camera_extent`` of the training views,
    floored at a tenth of the initial points' [P, 3] bounding-box diagonal (cameras that barely move give a
    near-zero radius) and at 1e-3."""
    return max(camera_extent(np.stack([v.c2w for v in train_views])),
               0.1 * float(np.linalg.norm(points.max(0) - points.min(0))), 1e-3)


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Average points [P, 3] and colours [P, 3] per voxel of size ``voxel``."""
    q = np.floor((points - points.min(0)) / voxel).astype(np.int64)  # [P, 3] >= 0
    dims = q.max(0) + 1
    key = (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]  # one int64 per voxel: fast 1-D unique
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    p = np.stack([np.bincount(inv, points[:, i], len(counts)) for i in range(3)], 1)
    c = np.stack([np.bincount(inv, colors[:, i], len(counts)) for i in range(3)], 1)
    return (p / counts[:, None]).astype(np.float32), (c / counts[:, None]).astype(np.float32)


def backproject_depth(views) -> tuple[np.ndarray, np.ndarray]:
    """World points [P, 3] and colours [P, 3] from every view's valid depth pixels."""
    pts, cols = [], []
    for v in views:
        if v.depth is None:
            continue
        ys, xs = np.nonzero(v.depth > 0)
        if len(ys) == 0:
            continue
        pts.append(v.unproject(np.stack([xs + 0.5, ys + 0.5], 1), v.depth[ys, xs]))
        cols.append(v.image[ys, xs])
    if not pts:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    return np.concatenate(pts).astype(np.float32), np.concatenate(cols).astype(np.float32)


def initial_points(views, points, points_rgb, cfg: LiftConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(points [P, 3], colours [P, 3], source) with source in points / depth / random.

    views: the training views; points [P, 3] / points_rgb [P, 3]: the scene's points or None."""
    if points is not None and len(points) > 0:
        pts = np.asarray(points, np.float32)
        cols = np.asarray(points_rgb, np.float32) if points_rgb is not None else np.full_like(pts, 0.5)
        source = "points"
    else:
        pts, cols = backproject_depth(views)
        source = "depth"
        if len(pts) > 0:
            voxel = cfg.init_voxel or float(np.linalg.norm(pts.max(0) - pts.min(0))) / 1024
            while True:
                p, c = voxel_downsample(pts, cols, voxel)
                if cfg.init_voxel or len(p) <= cfg.init_points:
                    break
                # surfaces: the count falls ~ with the voxel area; aim just under the cap
                voxel *= max(1.1, 1.05 * math.sqrt(len(p) / cfg.init_points))
            pts, cols = p, c
    if len(pts) == 0:  # last resort: uniform in the training frusta between 0.1 and 2 x extent deep
        source = "random"
        n = cfg.init_points
        warnings.warn(f"the scene has no depth (no depth files, or every depth value 0) and no 3D points: Stage 1 "
                      f"starts from {n} random points in the training views' frusta (init: random); geometry and "
                      f"held-out quality suffer, give depth or COLMAP points where you can", stacklevel=2)
        ext = max(camera_extent(np.stack([v.c2w for v in views])), 1.0)
        vi = rng.integers(0, len(views), n)
        pts = np.empty((n, 3), np.float32)
        for j, v in enumerate(views):
            sel = vi == j
            m = int(sel.sum())
            u, w = rng.uniform(0, v.width, m), rng.uniform(0, v.height, m)
            z = rng.uniform(0.1, 2 * ext, m)
            pc = np.stack([(u - v.K[0, 2]) / v.K[0, 0] * z, (w - v.K[1, 2]) / v.K[1, 1] * z, z], 1)
            pts[sel] = pc @ v.c2w[:3, :3].T + v.c2w[:3, 3]
        cols = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    if len(pts) > cfg.init_points:
        keep = rng.choice(len(pts), cfg.init_points, replace=False)
        pts, cols = pts[keep], cols[keep]
    return pts, cols, source


def init_params(points: np.ndarray, colors: np.ndarray, cfg: LiftConfig, device) -> dict[str, nn.Parameter]:
    """Raw 3DGS parameters: scale = RMS distance to the 3 nearest neighbours, identity rotation,
    opacity ``init_opacity``, SH DC from colour, features zero."""
    n = len(points)
    k = min(4, n)
    d, _ = cKDTree(points).query(points, k=k)
    d = np.asarray(d).reshape(n, k)[:, 1:] if k > 1 else np.ones((n, 1))
    dist = np.sqrt(np.maximum((d ** 2).mean(1), 1e-7)).astype(np.float32)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    kb = (cfg.max_sh_degree + 1) ** 2
    o = cfg.init_opacity
    p = {
        "means": t(points),
        "quats": t(np.tile([1.0, 0, 0, 0], (n, 1))),
        "log_scales": t(np.log(dist))[:, None].repeat(1, 3),
        "opacity_logits": torch.full((n,), math.log(o / (1 - o)), device=device),
        "sh_dc": rgb_to_sh_dc(t(colors))[:, None, :],
        "sh_rest": torch.zeros(n, kb - 1, 3, device=device),
        "features": torch.zeros(n, cfg.feature_dim, device=device),
    }
    return {k: nn.Parameter(v.contiguous()) for k, v in p.items()}


def as_gaussians(params: dict, sh_degree: int) -> FeatureGaussians:
    """The ``FeatureGaussians`` view of a raw parameter dict (``init_params``' keys)."""
    return FeatureGaussians(params["means"], params["quats"], params["log_scales"], params["opacity_logits"],
                            torch.cat([params["sh_dc"], params["sh_rest"]], 1), params["features"], sh_degree=sh_degree)


def raster_geometry(params: dict) -> tuple:
    """(means [N, 3], quats [N, 4], scales [N, 3], opacities [N]) of a raw parameter dict, detached and
    activated as ``rasterize`` / ``fit3d.splat.fixed_views.FixedViews`` take them."""
    return (params["means"].detach(), params["quats"].detach(), params["log_scales"].detach().exp(),
            torch.sigmoid(params["opacity_logits"].detach()))
