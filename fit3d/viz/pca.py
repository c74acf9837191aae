"""PCA of feature maps to RGB, with one basis shared by several maps (so colours are comparable).

The basis is fitted on the union of all tokens of all maps: the same feature vector gets the same
colour in every map, which is what makes "original vs fine-tuned" pictures comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class PCABasis:
    """mean [D], components [3, D] (rows), lo / hi [3]: the percentile range mapped to 0 / 255."""

    mean: torch.Tensor
    components: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def project(self, feat: torch.Tensor) -> torch.Tensor:
        """[D, h, w] -> [h, w, 3] principal-component scores (float)."""
        D, h, w = feat.shape
        x = feat.detach().to(torch.float64).reshape(D, -1).T.cpu()
        return ((x - self.mean) @ self.components.T).reshape(h, w, -1)

    def to_rgb(self, feat: torch.Tensor) -> np.ndarray:
        """[D, h, w] -> [h, w, 3] uint8."""
        s = (self.project(feat) - self.lo) / (self.hi - self.lo).clamp_min(1e-12)
        return (s.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def fit_pca(feats: Sequence[torch.Tensor], n_components: int = 3,
            percentiles: tuple[float, float] = (1.0, 99.0)) -> PCABasis:
    """Fit one PCA basis on the tokens of every map in ``feats`` (each [D, h, w]).

    Components come from an SVD of the centred tokens (for many tokens, the eigenvectors of their D x D
    scatter matrix: the same directions); each component's sign is fixed so that its
    largest-magnitude loading is positive (deterministic colours). ``lo`` / ``hi`` are per-channel
    percentiles of the scores over all maps (robust to outlier tokens).
    """
    if not feats:
        raise ValueError("fit_pca: no feature maps given")
    dims = {int(f.shape[0]) for f in feats}
    if len(dims) != 1 or any(f.ndim != 3 for f in feats):
        raise ValueError(f"fit_pca: every map must be [D, h, w] with one D, got {[tuple(f.shape) for f in feats]}")
    x = torch.cat([f.detach().to(torch.float64).reshape(f.shape[0], -1).T.cpu() for f in feats])  # [N, D]
    mean = x.mean(0)
    xc = x - mean
    k = min(n_components, *xc.shape)
    if xc.shape[0] > 4 * xc.shape[1]:  # many tokens: eigenvectors of the D x D scatter (an SVD of [N, D] is
        _, evecs = torch.linalg.eigh(xc.T @ xc)  # ~20x slower: 20 s for 40k x 384 on 2 cores)
        comps = evecs[:, -k:].flip(1).T
    else:
        _, _, vh = torch.linalg.svd(xc, full_matrices=False)
        comps = vh[:k]
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    if k < n_components:  # fewer tokens / dims than components: pad with zero scores
        comps = torch.cat([comps, torch.zeros(n_components - k, comps.shape[1], dtype=comps.dtype)])
    scores = xc @ comps.T
    q = torch.tensor([percentiles[0] / 100, percentiles[1] / 100], dtype=scores.dtype)
    lo, hi = torch.quantile(scores, q, dim=0)
    return PCABasis(mean=mean, components=comps, lo=lo, hi=hi)


def pca_rgb(feats: Sequence[torch.Tensor], percentiles: tuple[float, float] = (1.0, 99.0)) -> list[np.ndarray]:
    """First three principal components of ``feats`` (list of [D, h, w]) as colours, one shared basis:
    returns a list of [h, w, 3] uint8."""
    basis = fit_pca(feats, 3, percentiles)
    return [basis.to_rgb(f) for f in feats]
