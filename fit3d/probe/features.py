"""Frozen features of a feature source (``fit3d.probe.sources``) for probes, and their on-disk cache.

Every resolved source has ``.features(images [B,3,H,W] in [0,1], layers=None) -> (patch [B,D,h,w],
cls [B,D])``. Probes train only a head on frozen features, so with augmentation off the features of an
image set are computed once (``extract_features``) and cached to disk (``FeatureCache``) keyed by the
source, the image set and the resolution; the head then trains on the cache.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fit3d.io import torch_save
from fit3d.probe.sources import FeatureSource

def extract_features(model, images: Sequence[np.ndarray], batch_size: int = 8,
                     layers: Sequence[int] | None = None, desc: str = "features",
                     device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model.features`` over ``images`` (each [H, W, 3] float 0-1, all the same size).

    Returns (patch [N, D, h, w] float32 cpu, cls [N, Dc] float32 cpu).
    """
    patches, clss = [], []
    kw = {"layers": list(layers)} if layers else {}
    for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=len(images) <= batch_size):
        batch = torch.from_numpy(np.stack(images[i:i + batch_size])).permute(0, 3, 1, 2).contiguous()
        if hasattr(model, "prepare"):  # sides to patch multiples (a no-op at the default resolutions)
            batch = model.prepare(batch)
        with torch.inference_mode():
            out = model.features(batch.to(device), **kw)
        if isinstance(out, list):  # one (patch, cls) per requested layer: DINOv2 "linear4" concatenation
            out = (torch.cat([o[0] for o in out], 1), torch.cat([o[1] for o in out], 1))
        p, c = out
        patches.append(p.float().cpu())
        clss.append(c.float().cpu())
    return torch.cat(patches), torch.cat(clss)


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


class FeatureCache:
    """Features on disk under ``root/<sha1>.pt`` keyed by source + image set + resolution.

    ``root=None`` disables caching (features are computed every time).
    """

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    @staticmethod
    def key(source: FeatureSource, image_set: str, names: Sequence[str], resolution: tuple[int, int]) -> str:
        blob = json.dumps({"source": source.key(), "set": image_set, "names": list(names),
                           "resolution": list(resolution), "version": 1}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()

    def get(self, source: FeatureSource, image_set: str, names: Sequence[str], resolution: tuple[int, int],
            compute: Callable[[], CachedFeatures]) -> CachedFeatures:
        """Load the cached features, or ``compute()`` and store them."""
        if self.root is None:
            return compute()
        path = self.root / f"{self.key(source, image_set, names, resolution)}.pt"
        if path.exists():
            try:
                d = torch.load(path, map_location="cpu", weights_only=True)
                if list(d["names"]) == list(names):
                    return CachedFeatures(d["patch"].float(), d["cls"].float(), list(d["names"]),
                                          int(d["patch_size"]), 0.0, True, {"path": str(path)})
            except Exception as e:  # truncated / corrupt / foreign file (torch raises many types): recompute
                warnings.warn(f"{path}: unreadable feature cache ({type(e).__name__}); recomputing", stacklevel=2)
        out = compute()
        torch_save({"patch": out.patch, "cls": out.cls, "names": list(out.names),
                    "patch_size": out.patch_size, "source": source.key(), "set": image_set,
                    "resolution": list(resolution)}, path)
        out.meta["path"] = str(path)
        return out
