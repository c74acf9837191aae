"""Geometry without optimisation: training views' depth -> fused, surface-aligned flat Gaussians (surfels).

Every valid depth pixel of every training view (at the render size) is back-projected; its normal comes
from the view's own point map (cross product of the central differences, oriented towards the camera);
pixels on depth edges (neighbours more than 5% deeper or shallower) take the viewing ray as their normal.
Points are averaged per voxel of a grid (position, colour, normal, pixel footprint depth / focal). Each
voxel becomes one Gaussian: rotation whose z axis is the normal, in-plane scale ``scale x max(voxel,
footprint)``, flat-axis scale ``flat x`` that, opacity ``opacity``, SH DC from the voxel's colour.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fit3d.errors import SceneError

_EDGE = 0.05  # relative depth jump that marks a depth edge (no reliable normal across it)


def fill_depth(depth: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """[H, W] depth with the ``bad`` pixels (invalid, edges) set to their nearest good pixel's depth
    (unchanged when nothing is bad or nothing is good). Nearest, not interpolated: a hole next to a depth
    edge takes one side's depth, never a value in between."""
    from scipy.ndimage import distance_transform_edt

    if not bad.any() or bad.all():
        return depth
    _, (iy, ix) = distance_transform_edt(bad, return_indices=True)
    return depth[iy, ix]


def view_points(view, drop_edges: bool = True, fill_holes: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(points [M, 3], normals [M, 3] unit, towards the camera, colours [M, 3], footprint [M] metres per pixel,
    pixel index [M]) for the valid depth pixels of ``view`` (world frame); ``drop_edges``: without the pixels
    on a depth edge or next to invalid depth (unless ``fill_holes``: invalid and edge pixels get inpainted depth)."""
    d = view.depth
    if fill_holes:  # every pixel gets a surfel: a hole in the depth would be a hole in the rendered features
        d = fill_depth(d, (d <= 0) | _edges(d))
    H, W = d.shape
    ys, xs = np.mgrid[0:H, 0:W]
    Kinv = np.linalg.inv(view.K)
    rays = np.stack([xs + 0.5, ys + 0.5, np.ones_like(d, dtype=np.float64)], -1) @ Kinv.T  # [H, W, 3]
    pc = rays * d[..., None]  # camera-frame point map
    valid = d > 0
    # central differences (one-sided at the border) of the point map; valid only between valid, close depths
    pp, dp = np.pad(pc, ((1, 1), (1, 1), (0, 0)), mode="edge"), np.pad(d, 1, mode="edge")

    def diff(axis):
        sl = lambda o: (slice(1, H + 1), slice(1 + o, W + 1 + o)) if axis == 1 else (slice(1 + o, H + 1 + o), slice(1, W + 1))  # noqa: E731
        a, za, zb = pp[sl(1)] - pp[sl(-1)], dp[sl(1)], dp[sl(-1)]
        ok = (za > 0) & (zb > 0) & (np.abs(za - zb) < 2 * _EDGE * np.maximum(d, 1e-6))
        return a, ok
    dx, okx = diff(1)
    dy, oky = diff(0)
    n = np.cross(dx, dy)
    norm = np.linalg.norm(n, axis=-1)
    good = okx & oky & (norm > 0)
    view_dir = -rays / np.linalg.norm(rays, axis=-1, keepdims=True)  # points towards the camera
    n = np.where(good[..., None], n / np.maximum(norm, 1e-12)[..., None], view_dir)
    n = np.where((n * view_dir).sum(-1, keepdims=True) < 0, -n, n)
    if drop_edges and not fill_holes:  # flying pixels between a foreground and its background become floaters from other views
        valid = valid & okx & oky
    sel = np.flatnonzero(valid.reshape(-1))
    R, t = view.c2w[:3, :3], view.c2w[:3, 3]
    pw = pc.reshape(-1, 3)[sel] @ R.T + t
    nw = n.reshape(-1, 3)[sel] @ R.T
    foot = d.reshape(-1)[sel] / math.sqrt(view.K[0, 0] * view.K[1, 1])
    return pw, nw, view.image.reshape(-1, 3)[sel], foot, sel


def free_space_violations(means: np.ndarray, views, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(seen [N], violated [N]) counts over ``views``: a view sees point j when it projects onto a valid
    depth pixel, and is violated when the point lies more than ``tol`` x that depth in front of it
    (the view saw through where the point is: a floater or a drifted duplicate of the surface)."""
    seen = np.zeros(len(means), np.int64)
    bad = np.zeros(len(means), np.int64)
    for v in views:
        if v.depth is None:
            continue
        w2c = v.w2c
        pc = means @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        zs = np.where(z > 1e-6, z, 1.0)
        u = v.K[0, 0] * pc[:, 0] / zs + v.K[0, 2]
        w = v.K[1, 1] * pc[:, 1] / zs + v.K[1, 2]
        H, W = v.depth.shape
        inb = (z > 1e-6) & (u >= 0) & (u < W) & (w >= 0) & (w < H)
        d = np.zeros(len(means), np.float32)
        d[inb] = v.depth[w[inb].astype(np.int64), u[inb].astype(np.int64)]
        ok = inb & (d > 0)
        seen += ok
        bad += ok & (z < d * (1 - tol))
    return seen, bad


def fuse_points(views, voxel: float = 0.0, max_points: int = 100_000, voxel_factor: float = 1.0,
                min_views: int = 1, drop_edges: bool = True, fill_holes: bool = True, carve_tol: float = 0.0,
                carve_frac: float = 0.1):
    """Voxel-fuse every view's depth points. Returns (means [N, 3], normals [N, 3], colours [N, 3],
    footprint [N], voxel size). ``voxel`` 0: ``voxel_factor`` x the median pixel footprint, grown until
    at most ``max_points`` voxels remain. ``carve_tol`` > 0: then drop voxels that more than ``carve_frac``
    of the views seeing them see through (``free_space_violations``)."""
    parts = [view_points(v, drop_edges, fill_holes) for v in views if v.depth is not None and (v.depth > 0).any()]
    if not parts:
        raise SceneError("solve: no training view has valid depth (and the scene has no points)")
    P = np.concatenate([p[0] for p in parts])
    Nm = np.concatenate([p[1] for p in parts])
    Cl = np.concatenate([p[2] for p in parts]).astype(np.float64)
    Ft = np.concatenate([p[3] for p in parts])
    Vi = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
    vox = voxel or voxel_factor * float(np.median(Ft))
    lo = P.min(0)
    while True:
        q = np.floor((P - lo) / vox).astype(np.int64)
        dims = q.max(0) + 1
        key = (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]
        uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
        if voxel or len(uniq) <= max_points:
            break
        vox *= max(1.05, 1.02 * math.sqrt(len(uniq) / max_points))  # surfaces: count ~ 1 / voxel area
    if min_views > 1:  # support: distinct views that saw the voxel; drop the rest (noise, floaters)
        pair = np.unique(inv * len(parts) + Vi)
        support = np.bincount(pair // len(parts), minlength=len(uniq))
        ok = support[inv] >= min_views
        P, Nm, Cl, Ft = P[ok], Nm[ok], Cl[ok], Ft[ok]
        uniq, inv, counts = np.unique(inv[ok], return_inverse=True, return_counts=True)
    n = len(uniq)
    avg = lambda a: np.stack([np.bincount(inv, a[:, i], n) for i in range(a.shape[1])], 1) / counts[:, None]  # noqa: E731
    means, cols = avg(P), avg(Cl)
    nrm = avg(Nm)
    nn_ = np.linalg.norm(nrm, axis=1, keepdims=True)
    nrm = np.where(nn_ > 1e-6, nrm / np.maximum(nn_, 1e-12), np.array([0.0, 0.0, 1.0]))
    foot = np.bincount(inv, Ft, n) / counts
    if carve_tol > 0:  # free-space carving: drop voxels more than carve_frac of their views see through
        seen, bad = free_space_violations(means, views, carve_tol)
        keep = bad <= carve_frac * np.maximum(seen, 1)
        means, nrm, cols, foot = means[keep], nrm[keep], cols[keep], foot[keep]
    return means, nrm, cols, foot, vox


def _edges(d: np.ndarray) -> np.ndarray:
    """[H, W] bool: valid pixels with a 4-neighbour that is invalid or more than 5% nearer / farther
    (flying pixels sit between a foreground and its background)."""
    p = np.pad(d, 1, mode="edge")
    H, W = d.shape
    e = np.zeros(d.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        n = p[dy:dy + H, dx:dx + W]
        e |= (n <= 0) | (np.abs(n - d) > _EDGE * np.maximum(d, 1e-6))
    return e & (d > 0)


def normal_quats(normals: np.ndarray) -> np.ndarray:
    """[N, 3] unit normals -> [N, 4] quaternions (w, x, y, z) of rotations whose z axis is the normal."""
    from scipy.spatial.transform import Rotation

    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    a = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t1 = np.cross(n, a)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(n, t1)
    q = Rotation.from_matrix(np.stack([t1, t2, n], 2)).as_quat()  # scipy: (x, y, z, w)
    return np.concatenate([q[:, 3:], q[:, :3]], 1)


def surfel_params(means, normals, colors, radius, *, opacity: float, flat: float, feature_dim: int,
                  max_sh_degree: int, device) -> dict[str, nn.Parameter]:
    """Raw Gaussian parameters (``init_params`` layout): flat discs of in-plane scale ``radius`` [N]
    (flat axis ``flat x radius``) along ``normals`` [N, 3], opacity ``opacity``, SH DC from ``colors``."""
    from fit3d.splat.gaussians import rgb_to_sh_dc

    n = len(means)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    r = np.asarray(radius, np.float64)
    ls = np.log(np.stack([r, r, flat * r], 1))
    kb = (max_sh_degree + 1) ** 2
    p = {
        "means": t(means),
        "quats": t(normal_quats(normals)),
        "log_scales": t(ls),
        "opacity_logits": torch.full((n,), math.log(opacity / (1 - opacity)), device=device),
        "sh_dc": rgb_to_sh_dc(t(np.clip(colors, 0, 1)))[:, None, :],
        "sh_rest": torch.zeros(n, kb - 1, 3, device=device),
        "features": torch.zeros(n, feature_dim, device=device),
    }
    return {k: nn.Parameter(v.contiguous()) for k, v in p.items()}
