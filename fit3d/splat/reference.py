"""Deliberately simple float64 reference rasterizer (the yardstick for the fast backends).

No tiles, no custom backward: one Python loop over the Gaussians in global depth order, each
updating every pixel's transmittance (so per-pixel semantics are those of gsplat's classic
rasterizer), gradients by autograd. Projection is written again here, per Gaussian, without
sharing code with :mod:`fit3d.splat.projection`, so the two check each other. Slow: tests only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_ALPHA_MIN = 1.0 / 255.0
_T_MIN = 1e-4


def _rotmat(q: Tensor) -> Tensor:
    """[4] (w, x, y, z) -> [3, 3]."""
    w, x, y, z = q / torch.sqrt((q * q).sum())
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
    ])


def rasterize_reference(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                        viewmat: Tensor, K: Tensor, width: int, height: int, *, near_plane: float = 0.01,
                        eps2d: float = 0.3, far_plane: float = 1e10, geometry_channels: int | None = None):
    """Same contract as :func:`fit3d.splat.rasterize.rasterize`; computes in float64.
    Channels from ``geometry_channels`` on are weighted by detached blend weights (same values,
    gradients to the colours only)."""
    f64 = torch.float64
    means, quats, scales = means.to(f64), quats.to(f64), scales.to(f64)
    opacities, colors = opacities.to(f64), colors.to(f64)
    V, K = viewmat.detach().to(f64), K.detach().to(f64)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    C = colors.shape[1]
    k = C if geometry_channels is None else int(geometry_channels)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=f64) + 0.5, torch.arange(width, dtype=f64) + 0.5,
                            indexing="ij")

    splats = []  # (depth, index, mean2d, conic entries)
    for i in range(means.shape[0]):
        p = V[:3, :3] @ means[i] + V[:3, 3]
        zf = float(p[2].detach())
        if not (near_plane <= zf <= far_plane):
            continue
        R = _rotmat(quats[i])
        M = V[:3, :3] @ R @ torch.diag(scales[i])
        cov = M @ M.T
        x, y, z = p[0], p[1], p[2]
        limx = (1.3 * 0.5 * width / fx + (width - cx) / fx - 0.5 * width / fx,
                1.3 * 0.5 * width / fx + cx / fx - 0.5 * width / fx)
        limy = (1.3 * 0.5 * height / fy + (height - cy) / fy - 0.5 * height / fy,
                1.3 * 0.5 * height / fy + cy / fy - 0.5 * height / fy)
        u = torch.clamp(x / z, min=-limx[1], max=limx[0])
        v = torch.clamp(y / z, min=-limy[1], max=limy[0])
        zero = z * 0
        J = torch.stack([torch.stack([fx / z, zero, -fx * u / z]),
                         torch.stack([zero, fy / z, -fy * v / z])])
        S = J @ cov @ J.T + eps2d * torch.eye(2, dtype=f64)
        det = S[0, 0] * S[1, 1] - S[0, 1] * S[1, 0]
        o = float(opacities[i].detach())
        if float(det.detach()) <= 0 or o < _ALPHA_MIN:
            continue
        ext = min(3.33, math.sqrt(2 * math.log(o / _ALPHA_MIN)))
        sxx, syy = float(S[0, 0].detach()), float(S[1, 1].detach())
        rx, ry = math.ceil(ext * math.sqrt(sxx)), math.ceil(ext * math.sqrt(syy))
        mu = torch.stack([fx * x / z + cx, fy * y / z + cy])
        mx, my = float(mu[0].detach()), float(mu[1].detach())
        if (rx <= 0 and ry <= 0) or mx + rx <= 0 or mx - rx >= width or my + ry <= 0 or my - ry >= height:
            continue
        conic = torch.stack([S[1, 1] / det, -S[0, 1] / det, S[0, 0] / det])
        splats.append((zf, i, mu, conic, z))
    splats.sort(key=lambda s: (s[0], s[1]))  # depth, ties by index (a stable sort)

    T = torch.ones(height, width, dtype=f64)
    done = torch.zeros(height, width, dtype=torch.bool)
    out = torch.zeros(height, width, k + 1, dtype=f64)       # geometry channels + depth
    rest = torch.zeros(height, width, C - k, dtype=f64)     # channels that see detached geometry
    for _, i, mu, conic, z in splats:
        dx, dy = mu[0] - xs, mu[1] - ys
        sigma = 0.5 * (conic[0] * dx * dx + conic[2] * dy * dy) + conic[1] * dx * dy
        alpha = torch.clamp(opacities[i] * torch.exp(-sigma), max=0.999)
        use = (~done) & (sigma >= 0) & (alpha >= _ALPHA_MIN)
        next_T = T * (1 - alpha)
        stop = use & (next_T <= _T_MIN)
        done = done | stop
        use = use & ~stop
        w = torch.where(use, alpha * T, torch.zeros_like(T))
        feat = torch.cat([colors[i, :k], z.reshape(1)])
        out = out + w[..., None] * feat
        rest = rest + w.detach()[..., None] * colors[i, k:]
        T = torch.where(use, next_T, T)
    alpha_acc = 1 - T
    depth = out[..., k] / alpha_acc.clamp_min(1e-10)
    return torch.cat([out[..., :k], rest], -1), depth, alpha_acc
