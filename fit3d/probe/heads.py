"""Trained probe heads on disk: ``<probe out>/heads/<source label>.pt``.

Each file holds ``{"state_dict": ..., "meta": {...}}`` with everything needed to rebuild the head and to
feed it the features it was trained on:

    type         "depth" | "seg"
    patch_dim    patch-token width D the head reads (e.g. 384 original, 768 concat, 4 x 384 with 4 layers)
    cls_dim      [CLS] width (depth heads; 0 when the head does not read it)
    n_bins, min_depth, max_depth, upsample, use_cls     depth head settings
    num_classes, class_names, ignore_index               seg head settings
    source       the feature source: kind, backbone, model_path, finetuned_dir, layers, label
    resolution   probe resolution [W, H] the head was trained at; patch_size of the features

    head, meta = load_depth_head("runs/probe/heads/concat.pt")
    depth = head(patch, cls, (H, W))       # [B, 1, H, W] metres
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from fit3d.errors import Fit3DError, ModelNotFoundError
from fit3d.io import torch_save
from fit3d.probe.depth import LinearDepthHead
from fit3d.probe.seg import LinearSegHead

FORMAT = 1
HEADS_DIR = "heads"


def head_path(out_dir: str | Path, label: str) -> Path:
    """``<out_dir>/heads/<label>.pt`` (path separators in the label replaced)."""
    return Path(out_dir) / HEADS_DIR / (label.replace("/", "_").replace("\\", "_") + ".pt")


def source_meta(source) -> dict:
    """A ``FeatureSource`` as plain data (layers a list) plus its label."""
    d = asdict(source)
    d["layers"] = list(d["layers"]) if d.get("layers") else None
    return {**d, "label": source.label}


def depth_head_meta(head: LinearDepthHead, patch_dim: int, cls_dim: int, min_depth: float, max_depth: float,
                    **extra) -> dict:
    """Meta of a depth head: its constructor arguments plus ``extra`` (source, resolution, ...)."""
    return {"type": "depth", "format": FORMAT, "patch_dim": int(patch_dim), "cls_dim": int(cls_dim),
            "n_bins": int(head.bins.numel()), "min_depth": float(min_depth), "max_depth": float(max_depth),
            "upsample": int(head.upsample), "use_cls": bool(head.use_cls), **extra}


def seg_head_meta(head: LinearSegHead, **extra) -> dict:
    return {"type": "seg", "format": FORMAT, "patch_dim": int(head.conv.in_channels),
            "num_classes": int(head.conv.out_channels), **extra}


def save_head(path: str | Path, head: torch.nn.Module, meta: dict) -> Path:
    """Write ``{"state_dict", "meta"}`` atomically (tensors moved to the CPU)."""
    state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    torch_save({"state_dict": state, "meta": meta}, path)
    return Path(path)


def _read(path: str | Path, kind: str | None) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"probe head not found: {path}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated / foreign file
        raise Fit3DError(f"{path}: not a readable probe head ({e})") from e
    if not isinstance(d, dict) or "state_dict" not in d or "meta" not in d:
        raise Fit3DError(f"{path}: not a fit3d probe head (no state_dict / meta)")
    meta = dict(d["meta"])
    if kind and meta.get("type") != kind:
        raise Fit3DError(f"{path}: a {meta.get('type')!r} probe head, expected {kind!r}")
    return d["state_dict"], meta


def _build(state: dict, meta: dict, path) -> torch.nn.Module:
    if meta["type"] == "depth":
        head = LinearDepthHead(meta["patch_dim"], meta["cls_dim"], meta["n_bins"], meta["min_depth"],
                               meta["max_depth"], upsample=meta.get("upsample", 4), use_cls=meta.get("use_cls", True))
    elif meta["type"] == "seg":
        head = LinearSegHead(meta["patch_dim"], meta["num_classes"])
    else:
        raise Fit3DError(f"{path}: unknown probe head type {meta.get('type')!r}")
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise Fit3DError(f"{path}: weights do not match the recorded head shape ({e})") from e
    return head.eval()


def load_head(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(head in eval mode, meta) of a depth or seg head file."""
    state, meta = _read(path, None)
    return _build(state, meta, path).to(device), meta


def load_depth_head(path: str | Path, device: str | torch.device = "cpu") -> tuple[LinearDepthHead, dict]:
    """(``LinearDepthHead`` in eval mode, meta); ``Fit3DError`` if the file holds another head type."""
    state, meta = _read(path, "depth")
    return _build(state, meta, path).to(device), meta


def load_seg_head(path: str | Path, device: str | torch.device = "cpu") -> tuple[LinearSegHead, dict]:
    """(``LinearSegHead`` in eval mode, meta); ``Fit3DError`` if the file holds another head type."""
    state, meta = _read(path, "seg")
    return _build(state, meta, path).to(device), meta
