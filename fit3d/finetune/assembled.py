"""Load a fine-tuned folder: the original and fine-tuned backbones, or FiT3D's assembled features.

FiT3D evaluates concat(original, fine-tuned) last-layer patch tokens, both frozen, with the [CLS]
token of the original (fine-tuned features alone were reported worse than the original).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from fit3d.errors import ModelNotFoundError
from fit3d.finetune.trainer import LOSSES_FILE, MANIFEST_FILE, MODEL_DIR, _save_pretrained_atomic
from fit3d.finetune.wise import check_alpha, interpolate_weights
from fit3d.guard import check_not_input
from fit3d.io import read_json_dict, write_json
from fit3d.models import ConcatFeatures, get_spec, load_backbone
from fit3d.models.identity import check_architecture, folder_fingerprint, read_architecture

log = logging.getLogger(__name__)


def read_manifest(path) -> dict:
    """The ``fit3d.json`` manifest of a ``fit3d finetune`` output folder."""
    p = Path(path)
    f = p / MANIFEST_FILE
    if not f.exists():
        raise ModelNotFoundError(f"{p}: not a fit3d fine-tuned folder (no {MANIFEST_FILE}); "
                                 f"run `fit3d finetune --out {p}` first")
    m = read_json_dict(f, "fine-tuning manifest", keys=("backbone",))
    if not (p / m.get("model_dir", MODEL_DIR)).is_dir():
        raise ModelNotFoundError(f"{p / m.get('model_dir', MODEL_DIR)}: fine-tuned model folder missing")
    return m


def check_manifest(p: Path, m: dict) -> None:
    """The record ``fit3d.json`` agrees with the weights in ``model/``: the backbone it names has their width
    and depth (when they are a registered size), its ``embed_dim`` / ``patch_size`` are theirs, and their
    fingerprint is the one recorded. A mismatch is a ``ModelNotFoundError`` naming both files."""
    model_dir = p / m.get("model_dir", MODEL_DIR)
    arch = read_architecture(model_dir / "config.json")
    record = p / MANIFEST_FILE
    try:
        check_architecture(get_spec(m["backbone"]), arch, str(model_dir), what=f"{record} names backbone")
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"{e} (the record does not match its model)") from None
    for key, have in (("embed_dim", arch["width"]), ("patch_size", arch["patch_size"])):
        if m.get(key) is not None and have is not None and int(m[key]) != int(have):
            raise ModelNotFoundError(f"{record} records {key} {m[key]}, but {model_dir}/config.json says {have}: "
                                     f"the record does not match its model")
    recorded = m.get("finetuned_fingerprint")
    if recorded and folder_fingerprint(model_dir) != recorded:
        raise ModelNotFoundError(f"{model_dir}: the weights are not the ones {record} records (fingerprint "
                                 f"{folder_fingerprint(model_dir)} != {recorded}); fine-tune again or restore them")


def load_finetuned(path, device: str = "cpu"):
    """(original Backbone, fine-tuned Backbone), both frozen in eval mode, from a fine-tuned folder (its
    record checked against its weights first: :func:`check_manifest`)."""
    p = Path(path)
    m = read_manifest(p)
    check_manifest(p, m)
    orig_path = m.get("original_model_path")
    if orig_path and (orig_path.startswith(("/", ".", "~")) and not Path(orig_path).expanduser().exists()):
        log.warning("%s: original model %s no longer exists; using the registry's %r", p, orig_path, m["backbone"])
        orig_path = None
    original = load_backbone(m["backbone"], model_path=orig_path, device=device)
    finetuned = load_backbone(m["backbone"], model_path=str(p / m.get("model_dir", MODEL_DIR)), device=device)
    if (original.embed_dim, original.num_layers, original.patch_size) != \
            (finetuned.embed_dim, finetuned.num_layers, finetuned.patch_size):
        raise ModelNotFoundError(
            f"{p}: the original weights ({orig_path or m['backbone']}: {original.embed_dim} wide, {original.num_layers} "
            f"blocks, patch {original.patch_size}) are not the model that was fine-tuned ({finetuned.embed_dim}, "
            f"{finetuned.num_layers}, {finetuned.patch_size}); pass the original weights with --model-path")
    for b in (original, finetuned):
        b.eval()
        b.requires_grad_(False)
    return original, finetuned


def load_assembled(path, device: str = "cpu"):
    """``ConcatFeatures(original, fine-tuned)``: features() gives [B, 2D, h, w] patch tokens, CLS of the original."""
    return ConcatFeatures(*load_finetuned(path, device=device))


def interpolate_folder(src, dest, alpha: float, device: str = "cpu") -> dict:
    """WiSE-FT (``fit3d.finetune.wise``) of a finished folder: ``src`` (``fit3d finetune``'s model/ + fit3d.json)
    -> ``dest`` with the weights at ``alpha`` between the original (its manifest's ``original_model_path`` /
    backbone) and ``src``'s (``src``'s record is checked against its weights by :func:`load_finetuned`). The new
    manifest records ``config.interpolate`` and ``settings.interpolate`` = alpha (times ``src``'s own alpha when it
    was interpolated already) and the new weights' fingerprint; ``src`` is never changed. Returns the manifest."""
    a = check_alpha(alpha)
    src, dest = Path(src), Path(dest)
    check_not_input(dest, [src])
    m = read_manifest(src)
    original, finetuned = load_finetuned(src, device=device)
    interpolate_weights(original.model, finetuned.model, a)
    dest.mkdir(parents=True, exist_ok=True)
    _save_pretrained_atomic(finetuned.model, dest / MODEL_DIR)
    if (src / LOSSES_FILE).exists():
        shutil.copyfile(src / LOSSES_FILE, dest / LOSSES_FILE)
    total = a * float((m.get("config") or {}).get("interpolate", 1.0))
    manifest = {**m, "model_dir": MODEL_DIR, "finetuned_fingerprint": folder_fingerprint(dest / MODEL_DIR),
                # a [CLS] map of src (cls_align) was fitted to src's weights: load_finetuned applied it, the save drops it
                "config": {**(m.get("config") or {}), "interpolate": total, "cls_align": "none", "cls_align_views": 0},
                "settings": {**(m.get("settings") or {}), "interpolate": total, "cls_align": "none",
                             "cls_align_views": 0},
                "interpolated_from": str(src.resolve()),
                # held-out fits were measured on src's weights, not these
                "metrics": {k: v for k, v in (m.get("metrics") or {}).items() if k != "heldout"}}
    write_json(dest / MANIFEST_FILE, manifest)
    return manifest


def align_folder(src, dest, device: str = "cpu", progress: bool = False, kind: str = "ridge",
                 max_views: int = 0) -> dict:
    """``fit3d.finetune.cls_align`` on a finished folder: ``src`` -> ``dest`` with a [CLS] map fitted on ``src``'s Stage 2
    scenes (its manifest's ``scenes`` and ``config.resolution``), or with ``kind`` original the original's [CLS] branch
    (no fit; the shift where the model cannot have one, ``align_backbone``); ``src`` is never changed. The new manifest records ``config.cls_align`` /
    ``settings.cls_align`` = ``kind``, ``cls_align_views`` = ``max_views`` (0: every training view), the fit and the
    new fingerprint. Returns it."""
    from fit3d.finetune.cls_align import align_backbone
    from fit3d.finetune.data import load_scenes

    src, dest = Path(src), Path(dest)
    check_not_input(dest, [src])
    m = read_manifest(src)
    if not m.get("scenes"):
        raise Fit3DError(f"{src}: its record lists no Stage 2 scenes to fit the [CLS] map on")
    original, finetuned = load_finetuned(src, device=device)
    cfg = m.get("config") or {}
    scenes = lambda: load_scenes(m["scenes"], embed_dim=finetuned.embed_dim,  # noqa: E731 - read only for a map
                                 cache_dir=dest / "scene-columns")
    info = align_backbone(original, finetuned, scenes, finetuned.patch_size, cfg.get("resolution"), progress=progress,
                          kind=kind, max_views=max_views)
    dest.mkdir(parents=True, exist_ok=True)
    _save_pretrained_atomic(finetuned.model, dest / MODEL_DIR, cls_map=finetuned.cls_map,
                            cls_branch=finetuned.cls_branch)
    shutil.rmtree(dest / "scene-columns", ignore_errors=True)
    if (src / LOSSES_FILE).exists():
        shutil.copyfile(src / LOSSES_FILE, dest / LOSSES_FILE)
    metrics = dict(m.get("metrics") or {})
    metrics["cls_align"] = info
    manifest = {**m, "model_dir": MODEL_DIR, "finetuned_fingerprint": folder_fingerprint(dest / MODEL_DIR),
                "config": {**cfg, "cls_align": kind, "cls_align_views": max_views},
                "settings": {**(m.get("settings") or {}), "cls_align": kind, "cls_align_views": max_views},
                "aligned_from": str(src.resolve()), "metrics": metrics}
    write_json(dest / MANIFEST_FILE, manifest)
    return manifest
