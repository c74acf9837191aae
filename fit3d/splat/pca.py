"""PCA pictures of feature maps with one shared basis (so colours are comparable across maps).

A small stand-in used by Stage 1's held-out figure; ``fit3d.viz`` holds the general tools.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pca_rgb(maps: list[Tensor]) -> list[np.ndarray]:
    """Feature maps [D, h, w] (any sizes, same D) -> RGB uint8 [h, w, 3] each, through the top three
    principal components of all their pixels together, each component scaled by its 1st-99th percentile."""
    flat = [m.detach().float().cpu().reshape(m.shape[0], -1).T for m in maps]  # [h*w, D] each
    x = torch.cat(flat)
    mean = x.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(x - mean, q=3, center=False)  # v [D, 3]
    proj = [(f - mean) @ v for f in flat]
    allp = torch.cat(proj)
    lo, hi = torch.quantile(allp, 0.01, dim=0), torch.quantile(allp, 0.99, dim=0)
    out = []
    for p, m in zip(proj, maps):
        rgb = ((p - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
        out.append((rgb.reshape(m.shape[1], m.shape[2], 3).numpy() * 255).astype(np.uint8))
    return out
