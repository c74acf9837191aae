"""Feature sources: which frozen features a probe, ``fit3d compare`` or the pipeline reads.

A source is a backbone (a registered name + optional local weights, or a fit3d fine-tuned folder) plus
a *kind*:

- ``original``  : the frozen pretrained model,
- ``finetuned`` : the Stage 2 model alone (needs ``finetuned_dir``),
- ``concat``    : FiT3D's default, original and fine-tuned patch tokens concatenated along D, [CLS]
  from the original (``fit3d.models.ConcatFeatures``).

``resolve_source`` loads the model(s) behind a source (``fit3d.finetune.assembled.load_finetuned`` for
a fine-tuned folder); the result has ``.features(images, layers=None) -> (patch, cls)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fit3d.errors import Fit3DError, ModelNotFoundError
from fit3d.finetune.assembled import load_finetuned
from fit3d.models import ConcatFeatures, load_backbone

KINDS = ("original", "finetuned", "concat")  # the feature sources, in table order


@dataclass(frozen=True)
class FeatureSource:
    """Which frozen features a probe reads."""

    kind: str = "original"
    backbone: str = "dinov2_small"
    model_path: str | None = None
    finetuned_dir: str | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise Fit3DError(f"unknown feature kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.kind in ("finetuned", "concat") and not self.finetuned_dir:
            raise Fit3DError(f"features '{self.kind}' need a fine-tuned folder (--finetuned DIR)")

    @property
    def label(self) -> str:
        """Short name for tables: ``original`` / ``finetuned`` / ``concat`` (+ layers)."""
        return self.kind + (f"[{','.join(map(str, self.layers))}]" if self.layers else "")

    def key(self) -> str:
        """Stable identity for the cache (paths resolved, weights' mtime included)."""
        d = asdict(self)
        for k in ("model_path", "finetuned_dir"):
            if d[k]:
                p = Path(d[k]).expanduser().resolve()
                d[k] = str(p)
                d[k + "_mtime"] = _tree_mtime(p)
        return json.dumps(d, sort_keys=True, default=list)


def config_sources(cfg) -> list[FeatureSource]:
    """The feature sources a ``ProbeConfig`` names (``cfg.features``: original / finetuned / concat)."""
    return [FeatureSource(kind=k, backbone=cfg.backbone, model_path=cfg.model_path,
                          finetuned_dir=cfg.finetuned, layers=tuple(cfg.layers) if cfg.layers else None)
            for k in cfg.features]


def _tree_mtime(p: Path) -> float:
    """Latest mtime among weight files under ``p`` (so re-trained weights invalidate the cache)."""
    if not p.exists():
        return 0.0
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.suffix in (".safetensors", ".bin", ".pt",
                                                                           ".pth", ".json")]
    return max((f.stat().st_mtime for f in files), default=p.stat().st_mtime)


def resolve_source(source: FeatureSource, device: str = "cpu"):
    """Load the model(s) behind ``source``; returns an object with ``.features`` / ``.patch_size``."""
    if source.finetuned_dir:
        if not Path(source.finetuned_dir).is_dir():
            raise ModelNotFoundError(f"fine-tuned folder not found: {source.finetuned_dir}")
        original, finetuned = load_finetuned(source.finetuned_dir, device=device)
        if source.kind == "original":
            return original
        if source.kind == "finetuned":
            return finetuned
        return ConcatFeatures(original, finetuned)
    return load_backbone(source.backbone, model_path=source.model_path, device=device)
