"""A lifted scene as the arrays a splat viewer draws, and its colour modes (pure numpy / torch, no viewer).

``splat_arrays(gaussians, decoder)`` gives centres [N, 3], covariances [N, 3, 3], SH DC colours [N, 3],
opacities [N, 1] and the features, decoded to the backbone's space (so features of different scenes
compare), optionally subsampled to a budget. Colour modes:

- ``rgb``: the SH DC colour (view-independent part);
- ``pca``: the first three principal components of the decoded features, one basis per scene or one
  shared by several scenes (:func:`pca_colors`);
- ``similarity``: cosine of each Gaussian's decoded feature to a query feature (a clicked Gaussian's),
  coloured above a threshold and greyed below (:func:`similarity_colors`).

:func:`pick_gaussian` finds the Gaussian a click ray hits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fit3d.splat.gaussians import FeatureGaussians
from fit3d.splat.sh import SH_C0
from fit3d.splat.projection import quat_to_rotmat
from fit3d.viz.images import colorize
from fit3d.viz.pca import PCABasis, fit_pca

BELOW_THRESHOLD = np.array([0.35, 0.35, 0.35], np.float32)  # grey of Gaussians under the similarity threshold


@dataclass
class SplatArrays:
    """What a viewer draws of N Gaussians (N <= the scene's ``total``; ``index`` [N] says which were kept).

    centers [N, 3], covariances [N, 3, 3], rgbs [N, 3] in [0, 1], opacities [N, 1] in [0, 1] (float32);
    features [N, F] the Gaussians' low-dimensional f, decoded to the backbone's D by the linear map
    ``decode_w`` [D, F] + ``decode_b`` [D] (:func:`decoded_map`): colours are computed in f-space, so a
    scene costs N x F floats, not N x D.
    """

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray
    features: np.ndarray
    decode_w: np.ndarray
    decode_b: np.ndarray
    index: np.ndarray
    total: int
    scale_gain: float = 1.0

    def __post_init__(self) -> None:
        self.norms = np.linalg.norm(self.decoded(), axis=1).clip(1e-12)  # [N] of the decoded features

    def __len__(self) -> int:
        return len(self.centers)

    @property
    def feature_dim(self) -> int:
        """D, the width of the decoded features (the backbone's)."""
        return self.decode_w.shape[0]

    def decoded(self, rows: np.ndarray | None = None) -> np.ndarray:
        """[M, D] decoded features of ``rows`` (default all)."""
        f = self.features if rows is None else self.features[rows]
        return f @ self.decode_w.T + self.decode_b

    def cosine_to(self, query: np.ndarray) -> np.ndarray:
        """[N] cosine of every decoded feature to ``query`` [D]."""
        q = np.asarray(query, np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        return (self.features @ (self.decode_w.T @ q) + float(self.decode_b @ q)) / self.norms

    def describe(self) -> str:
        """One line saying what is shown, e.g. for a budget: which Gaussians and how they were grown."""
        if len(self) == self.total:
            return f"all {self.total:,} Gaussians"
        return (f"{len(self):,} of {self.total:,} Gaussians (a uniform random subset, --max-splats; "
                f"scales x{self.scale_gain:.2f} so surfaces stay covered)")


def decoded_map(decoder) -> tuple[np.ndarray, np.ndarray]:
    """(W [D, F], b [D]): a Gaussian's decoded feature is ``W f + b``, the decoder's response to a feature
    field constant at f (its conv taps summed, plus the bias): what it gives inside a splat's footprint."""
    w = decoder.conv.weight.detach().float().cpu().sum((-2, -1)).numpy()
    b = decoder.conv.bias.detach().float().cpu().numpy() if decoder.conv.bias is not None else np.zeros(len(w))
    return np.ascontiguousarray(w, np.float32), np.asarray(b, np.float32)


def subsample(n: int, max_splats: int, seed: int = 0) -> np.ndarray:
    """Sorted indices [M] of a uniform random subset of ``n`` of size ``min(n, max_splats)`` (0: all)."""
    if max_splats <= 0 or n <= max_splats:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_splats, replace=False))


def splat_arrays(gaussians: FeatureGaussians, decoder, max_splats: int = 0, seed: int = 0) -> SplatArrays:
    """The viewer's arrays of ``gaussians`` (raw 3DGS parameters), at most ``max_splats`` of them (0: all).

    A subset keeps 1/k of a surface's splats; each kept one's scales grow by sqrt(k) (capped at 3) so the
    drawn surfaces keep their area instead of turning into sparse dots.
    """
    idx = subsample(len(gaussians), max_splats, seed)
    gain = float(min(3.0, np.sqrt(len(gaussians) / max(len(idx), 1))))
    t = torch.as_tensor(idx)
    g = gaussians.detach().to("cpu")
    R = quat_to_rotmat(g.quats[t].float())  # [N, 3, 3]
    s = torch.exp(g.log_scales[t].float()) * gain
    cov = R @ torch.diag_embed(s * s) @ R.transpose(1, 2)
    rgb = (SH_C0 * g.sh[t, 0].float() + 0.5).clamp(0, 1)
    op = torch.sigmoid(g.opacity_logits[t].float())[:, None]
    w, b = decoded_map(decoder)
    np32 = lambda x: np.ascontiguousarray(x.numpy(), np.float32)  # noqa: E731
    return SplatArrays(np32(g.means[t].float()), np32(cov), np32(rgb), np32(op), np32(g.features[t].float()),
                       w, b, idx, len(gaussians), gain)


def fit_feature_pca(scenes: Sequence[SplatArrays], max_fit: int = 20_000, seed: int = 0) -> PCABasis:
    """One PCA basis (``fit3d.viz.pca``) of the decoded features of all ``scenes``, fitted on at most
    ``max_fit`` Gaussians drawn evenly from each."""
    rng = np.random.default_rng(seed)
    per = max(1, max_fit // max(len(scenes), 1))
    rows = [s.decoded(rng.choice(len(s), per, replace=False) if len(s) > per else None) for s in scenes]
    return fit_pca([torch.from_numpy(np.ascontiguousarray(r.T))[:, :, None] for r in rows])


def basis_colors(basis: PCABasis, scene: SplatArrays) -> np.ndarray:
    """[N, 3] float32 colours in [0, 1] of ``scene``'s decoded features through ``basis`` (scores computed in
    f-space: (W f + b - mean) C^T = f (C W)^T + (b - mean) C^T)."""
    C = basis.components.numpy()  # [3, D]
    scores = scene.features @ (C @ scene.decode_w).T + (scene.decode_b - basis.mean.numpy()) @ C.T
    lo, hi = basis.lo.numpy(), basis.hi.numpy()
    return np.clip((scores - lo) / np.maximum(hi - lo, 1e-12), 0, 1).astype(np.float32)


def pca_colors(scenes: Sequence[SplatArrays], shared: bool = False) -> list[np.ndarray]:
    """PCA colours [N_i, 3] of each scene's decoded features: one basis per scene, or (``shared``) one basis
    for all of them, so a colour means the same feature in every scene."""
    if shared:
        basis = fit_feature_pca(scenes)
        return [basis_colors(basis, s) for s in scenes]
    return [basis_colors(fit_feature_pca([s]), s) for s in scenes]


def similarity_colors(cosine: np.ndarray, threshold: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """[N, 3] float32 from cosines [N] (``SplatArrays.cosine_to``): those >= ``threshold`` coloured by the
    cosine (``cmap`` over [threshold, 1]: bright = most similar), the others grey."""
    cos = np.asarray(cosine, np.float32)
    lo = min(float(threshold), 0.999)
    rgb = colorize(cos[:, None], lo, 1.0, cmap)[:, 0].astype(np.float32) / 255
    rgb[cos < threshold] = BELOW_THRESHOLD
    return rgb


def pick_gaussian(centers: np.ndarray, opacities: np.ndarray, covariances: np.ndarray, origin, direction,
                  min_opacity: float = 0.1, sigmas: float = 2.0) -> tuple[int, float] | None:
    """(index, t) of the first Gaussian along the ray ``origin + t * direction / |direction|`` (t > 0): among those whose centre
    lies within ``sigmas`` times its RMS axis length of the ray and with opacity >=
    ``min_opacity``, the nearest to the origin. None when the ray passes no Gaussian.

    The ray itself comes from the viewer's click (a splat renderer draws no per-Gaussian ids to pick)."""
    o = np.asarray(origin, np.float64)
    d = np.asarray(direction, np.float64)
    d = d / max(np.linalg.norm(d), 1e-12)
    rel = centers.astype(np.float64) - o
    t = rel @ d
    dist = np.linalg.norm(rel - t[:, None] * d, axis=1)
    radius = sigmas * np.sqrt(np.maximum(np.trace(covariances, axis1=1, axis2=2) / 3, 1e-12))  # [N]
    ok = (t > 0) & (dist <= radius) & (opacities[:, 0] >= min_opacity)
    if not ok.any():
        return None
    cand = np.flatnonzero(ok)
    k = int(cand[np.argmin(t[cand])])
    return k, float(t[k])
