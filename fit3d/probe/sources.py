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
from fit3d.finetune.assembled import check_manifest, load_finetuned, read_manifest
from fit3d.finetune.trainer import MANIFEST_FILE, MODEL_DIR
from fit3d.models import ConcatFeatures, load_backbone
from fit3d.models.identity import folder_fingerprint, model_identity

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
        """Stable identity for the cache (paths resolved, weights' mtime and :func:`source_identity` included)."""
        d = asdict(self)
        for k in ("model_path", "finetuned_dir"):
            if d[k]:
                p = Path(d[k]).expanduser().resolve()
                d[k] = str(p)
                d[k + "_mtime"] = _tree_mtime(p)
        d["identity"] = source_identity(self)
        return json.dumps(d, sort_keys=True, default=list)


def config_sources(cfg) -> list[FeatureSource]:
    """The feature sources a ``ProbeConfig`` names (``cfg.features``: original / finetuned / concat)."""
    return [FeatureSource(kind=k, backbone=cfg.backbone, model_path=cfg.model_path,
                          finetuned_dir=cfg.finetuned, layers=tuple(cfg.layers) if cfg.layers else None)
            for k in cfg.features]


def source_identity(source: FeatureSource) -> dict:
    """Which weights a source reads (recorded in probe.json, part of the cache key): ``{"original":
    fit3d.models.identity.model_identity}``, plus ``"finetuned"``: the fingerprint of a fine-tuned folder's model."""
    if not source.finetuned_dir:
        return {"original": model_identity(source.backbone, source.model_path)}
    ft = Path(source.finetuned_dir)
    try:
        m = read_manifest(ft)
    except Fit3DError:
        return {}  # resolve_source names the missing or damaged folder / record when it loads
    check_manifest(ft, m)
    return {"original": m.get("model"), "finetuned": folder_fingerprint(ft / m.get("model_dir", MODEL_DIR))}


def check_sources(srcs: list[FeatureSource], layers: list[int] | None, option: str = "--layers") -> None:
    """Before any model loads: each source's weights fit its backbone name / record (:func:`source_identity`),
    and ``layers`` index blocks the backbone has (``Fit3DError`` naming ``option``)."""
    depths = set()
    for s in srcs:
        arch = (source_identity(s).get("original") or {}).get("architecture") or {}
        if arch.get("depth"):
            depths.add(int(arch["depth"]))
    for d in sorted(depths):
        bad = [i for i in layers or () if not -d <= int(i) < d]
        if bad:
            raise Fit3DError(f"{option} {' '.join(map(str, layers))}: the backbone has {d} blocks, so layers must "
                             f"lie in [{-d}, {d - 1}] (negative counts from the end); got {', '.join(map(str, bad))}")


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
