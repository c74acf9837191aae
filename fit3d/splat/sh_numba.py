"""View-dependent colour on the CPU with numba: ``FeatureGaussians.colors`` as one loop per Gaussian.

``clamp_min(eval_sh(degree, sh, normalize(means - cam_center)) + 0.5, 0)`` (:func:`fit3d.splat.sh.eval_sh`,
the reference; tests hold values and gradients to it), with a hand-written backward to the coefficients and
the means (through the view direction), as gsplat's ``spherical_harmonics`` kernel does on CUDA. Hand-written
because the torch version is ~40 elementwise ops on [N] and [N, 16, 3] tensors each way, each a pass over
memory: at degree 3 and 50k Gaussians, a sizeable share of a CPU colour iteration. Computes in float64 per
Gaussian, stores in the inputs' dtype.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch
from torch import Tensor

from fit3d.splat.sh import SH_C0, SH_C1, SH_C2, SH_C3

_C = np.array([SH_C0, SH_C1, *SH_C2, *SH_C3], dtype=np.float64)  # 0, 1, 2..6, 7..13
_EPS = 1e-12  # F.normalize's


@nb.njit(cache=True, inline="always")
def _basis(deg, x, y, z, C, b):
    """b[:(deg+1)^2] = the real SH basis at unit direction (x, y, z) (``sh_basis``'s order and signs)."""
    b[0] = C[0]
    if deg >= 1:
        b[1], b[2], b[3] = -C[1] * y, C[1] * z, -C[1] * x
    if deg >= 2:
        xx, yy, zz = x * x, y * y, z * z
        b[4], b[5], b[6], b[7], b[8] = C[2] * x * y, C[3] * y * z, C[4] * (2 * zz - xx - yy), C[5] * x * z, C[6] * (xx - yy)
    if deg >= 3:
        b[9], b[10] = C[7] * y * (3 * xx - yy), C[8] * x * y * z
        b[11], b[12] = C[9] * y * (4 * zz - xx - yy), C[10] * z * (2 * zz - 3 * xx - 3 * yy)
        b[13], b[14], b[15] = C[11] * x * (4 * zz - xx - yy), C[12] * z * (xx - yy), C[13] * x * (xx - 3 * yy)


@nb.njit(cache=True, inline="always")
def _direction(means, i, cam):
    dx, dy, dz = means[i, 0] - cam[0], means[i, 1] - cam[1], means[i, 2] - cam[2]
    n = max(math.sqrt(dx * dx + dy * dy + dz * dz), _EPS)
    return dx / n, dy / n, dz / n, n


@nb.njit(cache=True)
def _forward_kernel(deg, sh, means, cam, C, out):
    b = np.empty(16)
    k = (deg + 1) * (deg + 1)
    for i in range(sh.shape[0]):
        x, y, z, _ = _direction(means, i, cam)
        _basis(deg, x, y, z, C, b)
        for c in range(3):
            s = 0.5
            for j in range(k):
                s += b[j] * sh[i, j, c]
            out[i, c] = max(s, 0.0)


@nb.njit(cache=True)
def _backward_kernel(deg, sh, means, cam, C, out, g_out, g_sh, g_means):
    b, gb = np.empty(16), np.empty(16)
    k = (deg + 1) * (deg + 1)
    for i in range(sh.shape[0]):
        x, y, z, n = _direction(means, i, cam)
        _basis(deg, x, y, z, C, b)
        g0 = g_out[i, 0] if out[i, 0] > 0 else 0.0  # clamp_min(., 0): out 0 <=> clamped (or exactly 0)
        g1 = g_out[i, 1] if out[i, 1] > 0 else 0.0
        g2 = g_out[i, 2] if out[i, 2] > 0 else 0.0
        for j in range(k):
            g_sh[i, j, 0], g_sh[i, j, 1], g_sh[i, j, 2] = b[j] * g0, b[j] * g1, b[j] * g2
            gb[j] = sh[i, j, 0] * g0 + sh[i, j, 1] * g1 + sh[i, j, 2] * g2
        if deg < 1:
            continue
        gx = -C[1] * gb[3]
        gy = -C[1] * gb[1]
        gz = C[1] * gb[2]
        if deg >= 2:
            xx, yy, zz = x * x, y * y, z * z
            gx += C[2] * y * gb[4] + C[5] * z * gb[7] - 2 * C[4] * x * gb[6] + 2 * C[6] * x * gb[8]
            gy += C[2] * x * gb[4] + C[3] * z * gb[5] - 2 * C[4] * y * gb[6] - 2 * C[6] * y * gb[8]
            gz += C[3] * y * gb[5] + 4 * C[4] * z * gb[6] + C[5] * x * gb[7]
        if deg >= 3:
            gx += (C[7] * 6 * x * y * gb[9] + C[8] * y * z * gb[10] - C[9] * 2 * x * y * gb[11]
                   - C[10] * 6 * x * z * gb[12] + C[11] * (4 * zz - 3 * xx - yy) * gb[13] + C[12] * 2 * x * z * gb[14]
                   + C[13] * (3 * xx - 3 * yy) * gb[15])
            gy += (C[7] * (3 * xx - 3 * yy) * gb[9] + C[8] * x * z * gb[10] + C[9] * (4 * zz - xx - 3 * yy) * gb[11]
                   - C[10] * 6 * y * z * gb[12] - C[11] * 2 * x * y * gb[13] - C[12] * 2 * y * z * gb[14]
                   - C[13] * 6 * x * y * gb[15])
            gz += (C[8] * x * y * gb[10] + C[9] * 8 * y * z * gb[11] + C[10] * (6 * zz - 3 * xx - 3 * yy) * gb[12]
                   + C[11] * 8 * x * z * gb[13] + C[12] * (xx - yy) * gb[14])
        # direction = d / max(|d|, eps): the tangential part of the gradient, over |d|
        if n > _EPS:
            dot = x * gx + y * gy + z * gz
            gx, gy, gz = gx - x * dot, gy - y * dot, gz - z * dot
        g_means[i, 0], g_means[i, 1], g_means[i, 2] = gx / n, gy / n, gz / n


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Colors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh, means, cam, degree):
        out = np.zeros((sh.shape[0], 3), _np(sh).dtype)
        _forward_kernel(degree, _np(sh), _np(means), cam, _C, out)
        out_t = torch.from_numpy(out)
        ctx.save_for_backward(sh, means, out_t)
        ctx.cam, ctx.degree = cam, degree
        return out_t

    @staticmethod
    def backward(ctx, g_out):
        sh, means, out = ctx.saved_tensors
        g_sh, g_means = torch.zeros_like(sh), torch.zeros_like(means)
        _backward_kernel(ctx.degree, _np(sh), _np(means), ctx.cam, _C, _np(out), _np(g_out.to(sh.dtype)),
                         g_sh.numpy(), g_means.numpy())
        return g_sh, g_means, None, None


def sh_colors(degree: int, sh: Tensor, means: Tensor, cam_center: Tensor) -> Tensor:
    """[N, 3] ``clamp_min(eval_sh(degree, sh, normalize(means - cam_center)) + 0.5, 0)`` for CPU tensors
    sh [N, K, 3] (K >= (degree+1)^2, degree <= 3), means [N, 3], cam_center [3]."""
    if not 0 <= degree <= 3 or sh.shape[1] < (degree + 1) ** 2:
        raise ValueError(f"sh_colors: degree {degree} needs {(degree + 1) ** 2} <= {sh.shape[1]} coefficients, "
                         f"degree <= 3")
    cam = cam_center.detach().double().cpu().numpy().reshape(3)
    return _Colors.apply(sh, means, cam, int(degree))
