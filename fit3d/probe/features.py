"""Frozen features of a feature source (``fit3d.probe.sources``) for probes, through the one token cache.

Every resolved source has ``.features(images [B,3,H,W] in [0,1], layers=None) -> (patch [B,D,h,w],
cls [B,D])``. Probes train only a head on frozen features, so with augmentation off each image's features are
computed once (``extract_features``) and kept in ``fit3d.models.tokens.TokenCache`` (``FeatureCache``: one
entry per image, keyed by the source's model identity, the layers and the image's pixels at the probe
resolution); the head then trains on them. The original model's entries are the ones Stage 1 writes for its
targets (the same key), so a probe of images a lift already ran at the same input size reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from fit3d.models.tokens import TokenCache, extract_features, image_id, token_key
from fit3d.probe.sources import FeatureSource, source_identity

__all__ = ["CachedFeatures", "FeatureCache", "concat_features", "extract_features", "source_key"]


@dataclass
class CachedFeatures:
    """Features of one image set: patch [N, D, h, w], cls [N, Dc], the image names and patch size."""

    patch: torch.Tensor
    cls: torch.Tensor
    names: list[str]
    patch_size: int
    seconds: float = 0.0  # time it took to compute them (0 when loaded from the cache)
    from_cache: bool = False
    meta: dict = field(default_factory=dict)


def concat_features(o: CachedFeatures, f: CachedFeatures, n_layers: int = 1) -> CachedFeatures:
    """The ``concat`` source's features from the original's and the fine-tuned model's: what
    ``ConcatFeatures`` gives (per layer the original's patch channels, then the fine-tuned's; [CLS] of the
    original), without running either model again. ``n_layers``: layers concatenated in each (linear4)."""
    if o.names != f.names:
        raise ValueError("concat_features: the two sources hold different images")
    po, pf = o.patch.chunk(n_layers, 1), f.patch.chunk(n_layers, 1)
    patch = torch.cat([t for pair in zip(po, pf) for t in pair], 1)
    return CachedFeatures(patch, o.cls, list(o.names), o.patch_size, o.seconds + f.seconds,
                          o.from_cache and f.from_cache, {"from": [o.meta.get("path"), f.meta.get("path")]})


def source_key(source: FeatureSource, device: str | torch.device = "cpu", variant: str | None = None,
               precision: str | None = None) -> dict:
    """``fit3d.models.tokens.token_key`` of a source: the original model by its weights' identity (the key of
    Stage 1's targets too), any other by the source's whole key (fine-tuned folder, paths, mtimes)."""
    model = source_identity(source).get("original") if source.kind == "original" else None
    return token_key(model or {"source": source.key()}, source.layers, device, variant, precision)


class FeatureCache(TokenCache):
    """The probes' view of the token cache under ``root`` (None: features are computed every time)."""

    def features(self, source: FeatureSource, images: Sequence[np.ndarray], names: Sequence[str],
                 load_model: Callable[[], object], *, batch_size: int = 8, device: str | torch.device = "cpu",
                 desc: str = "features", precision: str | None = None) -> CachedFeatures:
        """``source``'s features of ``images`` (each [H, W, 3] float 0-1, one size): read per image from the cache,
        the rest computed with ``load_model()`` (called only then) and stored."""

        def compute(idx):
            model = load_model()
            p, c = extract_features(model, [images[i] for i in idx], batch_size, source.layers, desc=desc, device=device,
                                    precision=precision)
            return p, c, {"patch_size": int(getattr(model, "patch_size", 14))}

        got = self.get(source_key(source, device, precision=precision), [image_id(im) for im in images], compute)
        return CachedFeatures(got.patch, got.cls, list(names), int((got.info or {}).get("patch_size", 14)),
                              got.seconds, got.from_cache, {"path": None if self.root is None else str(self.root),
                                                            "computed": got.computed})
