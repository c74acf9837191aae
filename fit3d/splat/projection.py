"""EWA projection of 3D Gaussians to the image plane, with gsplat 1.5's culling rules.

Mirrors gsplat's ``fully_fused_projection`` (pinhole, ``packed=False``, classic mode):
camera-space mean, covariance ``W R S S^T R^T W^T``, Jacobian of the perspective map evaluated at a
mean whose x/z, y/z are clamped to 1.3x the field of view, ``eps2d`` added to the 2D covariance,
opacity-aware per-axis bounding box. Written in plain torch so autograd gives the backward (all
ops are per Gaussian, O(N)); only the per-pixel compositing needs a hand-written backward.

Culled Gaussians (behind the near plane, beyond the far plane, degenerate 2D covariance, opacity
below 1/255, or bounding box off the image) are dropped before any division, so their gradients
are exactly zero and never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
FAR_PLANE = 1e10


@dataclass
class Projected:
    """Kept Gaussians after projection (M of the N inputs).

    ids      [M]    long, index into the inputs
    means2d  [M, 2] pixel coordinates (pixel centres at +0.5)
    conics   [M, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    depths   [M]    camera-space z
    opacities[M]
    radii    [M, 2] int64 half-extent of the bounding box in pixels (no grad)
    """

    ids: Tensor
    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    radii: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N, 4] (w, x, y, z), any norm -> [N, 3, 3] rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def project(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor,
            K: Tensor, width: int, height: int, *, near_plane: float = 0.01, eps2d: float = 0.3,
            far_plane: float = FAR_PLANE) -> Projected:
    """Project and cull. means [N, 3], quats [N, 4], scales [N, 3], opacities [N], viewmat [4, 4], K [3, 3]."""
    dtype = means.dtype
    Wr, t = viewmat[:3, :3].to(dtype), viewmat[:3, 3].to(dtype)
    K = K.to(dtype)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    # 1) depth culling, before anything divides by z
    with torch.no_grad():
        z_all = means @ Wr[2] + t[2]
        ids = torch.nonzero((z_all >= near_plane) & (z_all <= far_plane)).squeeze(-1)
    mean_c = means[ids] @ Wr.T + t                                   # [M1, 3]
    # W R S as one GEMM and the 2x3 Jacobian product written out: batched 3x3 matmuls are slow on CPU
    R = quat_to_rotmat(quats[ids])                                   # [M1, 3, 3]
    M1 = R.shape[0]
    WR = (R.transpose(1, 2).reshape(-1, 3) @ Wr.T).reshape(M1, 3, 3).transpose(1, 2)
    WRS = WR * scales[ids][:, None, :]                               # [M1, 3, 3]; cov_c = WRS WRS^T

    x, y, z = mean_c.unbind(-1)
    rz = 1.0 / z
    # gsplat's Jacobian clamp: evaluate J at x/z limited to the frustum widened by 30%
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(lim_xp, torch.maximum(-lim_xn, x * rz))
    ty = z * torch.minimum(lim_yp, torch.maximum(-lim_yn, y * rz))
    # J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]];  P = J W R S  [M1, 2, 3]
    P0 = (fx * rz)[:, None] * WRS[:, 0] - (fx * tx * rz * rz)[:, None] * WRS[:, 2]
    P1 = (fy * rz)[:, None] * WRS[:, 1] - (fy * ty * rz * rz)[:, None] * WRS[:, 2]
    a = (P0 * P0).sum(-1) + eps2d                                    # cov2d = P P^T + eps2d I
    b = (P0 * P1).sum(-1)
    c = (P1 * P1).sum(-1) + eps2d
    det = a * c - b * b
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)  # [M1, 2]
    op = opacities[ids]

    # 2) degenerate covariance, transparent, empty or off-image bounding box
    with torch.no_grad():
        ok = det > 0
        o_safe = op.clamp_min(ALPHA_THRESHOLD)
        extend = torch.clamp(torch.sqrt(2.0 * torch.log(o_safe / ALPHA_THRESHOLD)), max=3.33)
        rx = torch.ceil(extend * a.clamp_min(0).sqrt())
        ry = torch.ceil(extend * c.clamp_min(0).sqrt())
        ok &= op >= ALPHA_THRESHOLD
        ok &= (rx > 0) | (ry > 0)
        mx, my = means2d[:, 0], means2d[:, 1]
        ok &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        ok &= torch.isfinite(mx) & torch.isfinite(my)
        keep = torch.nonzero(ok).squeeze(-1)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    return Projected(ids=ids[keep], means2d=means2d[keep], conics=conics[keep], depths=z[keep],
                     opacities=op[keep], radii=torch.stack([rx, ry], -1)[keep].long())
