"""Stage 1's loss (FiT3D): (1 - l) L1(RGB) + l (1 - SSIM) + w L1(decoded features, targets).

The feature L1 is taken at the backbone's token grid (the decoded render average-pooled to it; the
held-out metric's footprint) or, as FiT3D, at the render size against bilinearly upsampled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from fit3d.lift.config import LiftConfig
from fit3d.lift.targets import TargetCache
from fit3d.splat.ssim import ssim


@dataclass
class LiftLoss:
    total: Tensor
    rgb: Tensor
    feature: Tensor


def color_loss(rgb: Tensor, gt: Tensor, lambda_dssim: float) -> Tensor:
    """(1 - l) L1 + l (1 - SSIM). rgb, gt [H, W, 3]."""
    return (1 - lambda_dssim) * (rgb - gt).abs().mean() + lambda_dssim * (1 - ssim(rgb, gt))


def feature_loss(decoded: Tensor, cache: TargetCache, index: int, at: str) -> Tensor:
    """L1 between decoded features [1, D, H, W] and view ``index``'s tokens, at the grid or the render size."""
    if at == "grid":
        tgt = cache.grid(index, decoded.device)  # [D, h, w]
        return (F.adaptive_avg_pool2d(decoded, tgt.shape[-2:])[0] - tgt).abs().mean()
    H, W = decoded.shape[-2:]
    return (decoded - cache.target(index, W, H, decoded.device)).abs().mean()


def lift_loss(rgb: Tensor, gt: Tensor, decoded: Tensor, cache: TargetCache, index: int, cfg: LiftConfig) -> LiftLoss:
    """The whole loss for one view: rgb/gt [H, W, 3], decoded [1, D, H, W], ``index`` the view's cache row."""
    l_rgb = color_loss(rgb, gt, cfg.lambda_dssim)
    l_feat = feature_loss(decoded, cache, index, cfg.feature_loss_at)
    return LiftLoss(l_rgb + cfg.feature_weight * l_feat, l_rgb, l_feat)
