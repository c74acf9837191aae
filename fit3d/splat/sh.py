"""Real spherical harmonics as 3DGS uses them: the basis constants, the basis of view directions, colour from
coefficients (``eval_sh``, the torch reference; ``fit3d.splat.sh_numba`` is the CPU kernel held to it) and the
DC coefficient of a colour."""

from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """[..., 3] colour in [0, 1] -> DC coefficient."""
    return (rgb - 0.5) / SH_C0


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """[N, (degree+1)^2] real SH basis (3DGS convention) of unit directions ``dirs`` [N, 3]."""
    cols = [torch.full_like(dirs[:, 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
        cols += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        cols += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2.0 * zz - xx - yy), SH_C2[3] * xz,
                 SH_C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                 SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                 SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(cols, 1)


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate real SH (3DGS convention) up to ``degree``.

    sh   [N, K, 3] coefficients, K >= (degree+1)^2
    dirs [N, 3] unit view directions (camera centre -> Gaussian)
    returns [N, 3] colour (before +0.5 and clamping)
    One contraction with the basis rather than a sum of ``sh[:, k]`` terms: each such slice's backward
    allocates and zero-fills a full [N, K, 3] gradient (16 of them per view at degree 3: ~a third of a
    colour iteration on CPU with 50k Gaussians).
    """
    if degree < 1:
        return SH_C0 * sh[:, 0]
    basis = sh_basis(degree, dirs)  # [N, k]
    return (basis[:, :, None] * sh[:, :basis.shape[1]]).sum(1)  # elementwise: einsum runs N tiny bmm
