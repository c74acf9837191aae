"""The training tokens in the decoder's basis: what the solve's features are fitted to."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fit3d.lift.decoder import FeatureDecoder


def decoder_projection(decoder: FeatureDecoder) -> Tensor:
    """[f, D] least-squares inverse of the decoder's centre tap ([D, f]): decoded = tap @ f."""
    w = decoder.conv.weight.detach()
    c = w.shape[-1] // 2
    return torch.linalg.pinv(w[:, :, c, c].double()).float()


def view_targets(cache, name: str, proj: Tensor, width: int, height: int, at: str) -> Tensor:
    """[H, W, f] the view's tokens in the decoder's basis at the render size: ``render`` bilinearly
    upsampled (FiT3D's targets), ``grid`` each token repeated over its pixels (the adjoint of the grid
    loss's average pooling, up to the constant pool area)."""
    g = torch.einsum("kd,dhw->khw", proj, cache.grid(cache.index(name), proj.device))[None]
    mode = {"render": dict(mode="bilinear", align_corners=False), "grid": dict(mode="nearest")}[at]
    return F.interpolate(g, size=(height, width), **mode)[0].permute(1, 2, 0).contiguous()


def stacked_targets(cache, names, proj: Tensor, width: int, height: int, at: str) -> Tensor:
    """[V*R, f] the views' tokens in the decoder's basis, one row per row of ``ViewWeights.M``: the token grid
    (``grid``) or the render's pixels, tokens bilinearly upsampled (``render``)."""
    rows = []
    for name in names:
        if at == "grid":
            g = torch.einsum("kd,dhw->hwk", proj, cache.grid(cache.index(name), proj.device))
            rows.append(g.reshape(-1, g.shape[-1]))
        else:
            rows.append(view_targets(cache, name, proj, width, height, at).reshape(width * height, -1))
    return torch.cat(rows).float().cpu()
