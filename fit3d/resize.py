"""Bilinear resizing as matrices: ``resize(x, rows, cols_t)`` = ``F.interpolate(x, (H, W), bilinear,
align_corners=False)`` with ``rows = interp_matrix(h, H)`` and ``cols_t = interp_matrix(w, W).T``.

A matrix form lets a caller keep only some output rows / columns (strided label pixels, a grid) and
fold the resize into other products; its backward is a matmul too. The weights are PyTorch's own
(``F.interpolate`` applied to the identity), so results equal ``F.interpolate``'s up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def interp_matrix(n_in: int, n_out: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """[n_out, n_in]: 1-D bilinear (align_corners=False) resize as a matrix (2-D bilinear is separable)."""
    eye = torch.eye(n_in, dtype=dtype, device=device)[None]  # [1, n_in channels, n_in samples]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def area_matrix(n_in: int, n_out: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """[n_out, n_in]: 1-D adaptive average pooling as a matrix (2-D adaptive pooling is separable)."""
    eye = torch.eye(n_in, dtype=dtype, device=device)[None]
    return F.adaptive_avg_pool1d(eye, n_out)[0].T.contiguous()


def resize(x: torch.Tensor, rows: torch.Tensor, cols_t: torch.Tensor) -> torch.Tensor:
    """x [..., h, w] -> [..., H, W] with rows [H, h] and cols_t [w, W] (``interp_matrix`` / its transpose)."""
    return torch.matmul(rows, torch.matmul(x, cols_t))
