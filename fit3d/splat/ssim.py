"""SSIM with an 11x11 Gaussian window (sigma 1.5), as 3DGS / FiT3D use it in the colour loss.

Hand-written (a dozen lines of torch) rather than a dependency: the SSIM packages on the registries
either pull their own torch build or torchvision, which does not work here.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

C1 = 0.01 ** 2
C2 = 0.03 ** 2


@functools.lru_cache(maxsize=8)
def _window(size: int, sigma: float, channels: int, dtype: torch.dtype, device: str) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).to(dtype=dtype, device=device)  # [size, size]
    return w.expand(channels, 1, size, size).contiguous()  # depthwise [C, 1, size, size]


def ssim(img1: Tensor, img2: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two images in [0, 1].

    img1, img2 [H, W, C] or [B, C, H, W]; returns a scalar (zero-padded borders, like 3DGS).
    """
    if img1.ndim == 3:
        img1, img2 = img1.permute(2, 0, 1)[None], img2.permute(2, 0, 1)[None]
    c = img1.shape[1]
    w = _window(window_size, sigma, c, img1.dtype, str(img1.device))
    pad = window_size // 2
    # One grouped conv over the five moments (x, y, x^2, y^2, xy) instead of five convs.
    stack = torch.cat([img1, img2, img1 * img1, img2 * img2, img1 * img2], 1)  # [B, 5C, H, W]
    mom = F.conv2d(stack, w.repeat(5, 1, 1, 1), padding=pad, groups=5 * c)
    mu1, mu2, e11, e22, e12 = mom.split(c, 1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    num = (2 * mu12 + C1) * (2 * s12 + C2)
    den = (mu1_sq + mu2_sq + C1) * (s1 + s2 + C2)
    return (num / den).mean()
