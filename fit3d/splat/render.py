"""Render feature Gaussians from a camera: RGB, low-dim features, depth, alpha in one pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fit3d.splat.gaussians import FeatureGaussians


@dataclass
class Rendered:
    """rgb [H, W, 3], features [H, W, F], depth [H, W] (expected depth), alpha [H, W]."""

    rgb: Tensor
    features: Tensor
    depth: Tensor
    alpha: Tensor


def as_tensor(a, device, dtype=torch.float32) -> Tensor:
    return a.to(device=device, dtype=dtype) if isinstance(a, Tensor) else torch.as_tensor(
        np.asarray(a), device=device, dtype=dtype)


def render(gaussians: FeatureGaussians, K, c2w, width: int, height: int, *, with_rgb: bool = True,
           with_features: bool = True, detach_geometry_for_features: bool = False,
           backend: str = "auto", **raster_kwargs) -> Rendered:
    """Composite colour and features front to back with :func:`fit3d.splat.rasterize`.

    K [3, 3], c2w [4, 4] (OpenCV axes; numpy or tensor). Colour and features share one pass
    (FiT3D: "features are composited in the same pass as RGB, no background term").
    ``detach_geometry_for_features``: feature gradients reach only ``f``, never geometry or opacity
    (FiT3D's default during lifting); still one pass (``rasterize(..., geometry_channels=3)``).
    """
    from fit3d.splat.rasterize import rasterize, resolve_backend

    dev = gaussians.means.device
    backend = resolve_backend(backend, dev)
    c2w_t = as_tensor(c2w, dev)
    viewmat = torch.linalg.inv(c2w_t)
    K_t = as_tensor(K, dev)
    g = gaussians
    args = (g.means, g.quats, g.log_scales.exp(), g.opacities)
    chans = []
    if with_rgb:
        chans.append(g.colors(c2w_t[:3, 3], backend="numba" if backend == "numba" else "torch"))
    F = g.feature_dim
    if with_features or not chans:  # features alone still give depth and alpha
        chans.append(g.features)
    colors = chans[0] if len(chans) == 1 else torch.cat(chans, -1)  # [N, 3 + F] / [N, 3] / [N, F] (no copy of one)
    geometry_channels = (3 if with_rgb else 0) if with_features and detach_geometry_for_features else None
    image, depth, alpha = rasterize(*args, colors, viewmat, K_t, width, height, backend=backend,
                                    geometry_channels=geometry_channels, **raster_kwargs)
    C = image.shape[-1]
    rgb = image[..., :3] if with_rgb else image.new_zeros(height, width, 3)
    feats = image[..., C - F:] if with_features else image.new_zeros(height, width, F)
    return Rendered(rgb=rgb, features=feats, depth=depth, alpha=alpha)
