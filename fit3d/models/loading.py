"""``load_backbone``: resolve a backbone name and a model source (local folder or hub id) to a ``Backbone``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fit3d.errors import Fit3DError, ModelNotFoundError, NonFiniteError
from fit3d.models.backbone import Backbone
from fit3d.models.families import load_with_family
from fit3d.models.identity import check_architecture, read_architecture, resolve_source
from fit3d.models.registry import get_spec

def load_backbone(name: str, model_path: str | os.PathLike | None = None,
                  device: str | torch.device = "cpu") -> Backbone:
    """Load registered backbone ``name`` (see ``list_backbones()``) on ``device``, in eval mode, float32.

    model_path: a local folder in the hub layout, or a hub id; falls back to ``$FIT3D_MODEL_PATH``, then to
    the registered hub id. Raises ModelNotFoundError for an unknown name, a missing folder, or a hub id that
    cannot be reached (the message says how to use a local folder instead).
    """
    spec = get_spec(name)
    source, is_local = resolve_source(spec, model_path)
    if is_local and (Path(source) / "config.json").is_file():  # before the weights load: a wrong name is an error
        check_architecture(spec, read_architecture(Path(source) / "config.json"), source)
    try:
        backbone = load_with_family(spec, source, is_local)
        check_architecture(spec, {"width": backbone.embed_dim, "depth": backbone.num_layers}, source)
        check_finite_weights(backbone.model, source)
        if is_local:
            backbone.cls_map = _cls_map_of(source, backbone)
            backbone.cls_branch = _cls_branch_of(source, backbone)
        return backbone.to(device)
    except Fit3DError:
        raise
    except Exception as e:  # a damaged local folder: safetensors / torch / transformers raise their own types
        if not is_local:
            raise
        raise ModelNotFoundError(f"{source}: model weights are unreadable or corrupt for backbone '{spec.name}' "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None


def _cls_map_of(source, backbone):
    """The folder's [CLS] map (``fit3d.models.cls_map``), checked against the backbone's width; None if none."""
    from fit3d.models.cls_map import CLS_MAP_FILE, load_cls_map

    m = load_cls_map(source)
    if m is not None:
        if m.dim != backbone.cls_dim:
            raise ModelNotFoundError(f"{Path(source) / CLS_MAP_FILE}: a map of width {m.dim} for a [CLS] of "
                                     f"{backbone.cls_dim}: not this model's")
        check_finite_weights(m, str(Path(source) / CLS_MAP_FILE))
    return m


def _cls_branch_of(source, backbone):
    """The folder's [CLS] branch (``fit3d.models.cls_branch``), checked against the backbone's width; None if none."""
    from fit3d.models.cls_branch import CLS_BRANCH_FILE, load_cls_branch

    norm_attr = getattr(backbone._family, "norm_attr", None)
    if not (Path(source) / CLS_BRANCH_FILE).is_file():
        return None
    if norm_attr is None or getattr(backbone.model, norm_attr, None) is None:
        raise ModelNotFoundError(f"{Path(source) / CLS_BRANCH_FILE}: backbone family '{backbone.family}' has no final "
                                 f"norm to build a [CLS] branch from")
    b = load_cls_branch(source, backbone.model, norm_attr)
    check_finite_weights(b, str(Path(source) / CLS_BRANCH_FILE))
    return b


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """``NonFiniteError`` naming ``source`` and the first tensor holding NaN / inf (damaged weights would
    otherwise surface much later, e.g. as a ``LinAlgError`` in a PCA)."""
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"{source}: the model weights hold NaN or inf values (tensor {name}); the "
                                     f"weights are damaged")
