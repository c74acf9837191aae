"""Model identity: which weights a run used, recorded in every record and compared by the resume rule.

``model_identity(name, model_path)`` -> ``{"backbone", "source", "fingerprint", "architecture"}``:

- ``source``: the resolved weights (a local folder, absolute, symlinks followed; or a hub id), whichever way
  they were given (``--model-path``, ``$FIT3D_MODEL_PATH``, the registry's hub id);
- ``fingerprint``: a cheap content hash of the weights file(s): size + SHA-256 of the first 64 KiB, four
  evenly spaced 64 KiB blocks and the last 64 KiB (re-saved or re-trained weights change it; reading is
  ~0.4 MB whatever the model's size). For a hub id: of the local hub cache's copy, None when not cached;
- ``architecture``: what the weights' ``config.json`` says (model type, width, depth, patch, registers).

:func:`check_architecture` makes a ``--backbone`` whose width or depth disagrees with the weights an error
when the weights are a registered checkpoint's size (``--backbone dinov2_large`` on DINOv2-S weights); weights
of a size no registered backbone has (a custom or test model) load under the name given, their own
architecture recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from fit3d.errors import ModelNotFoundError
from fit3d.models.hub import MODEL_PATH_ENV
from fit3d.models.registry import BACKBONES, BackboneSpec, get_spec

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_BLOCK = 1 << 16
_CACHE: dict[tuple, str] = {}


def file_fingerprint(path: str | os.PathLike, blocks: int = 4) -> str:
    """``"<size>:<sha256[:16]>"`` of the file's size, first and last 64 KiB and ``blocks`` evenly spaced blocks."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _CACHE:
        return _CACHE[key]
    h = hashlib.sha256(str(st.st_size).encode())
    with open(p, "rb") as f:
        offsets = [0] + [st.st_size * (k + 1) // (blocks + 1) for k in range(blocks)] + [max(0, st.st_size - _BLOCK)]
        for off in offsets:
            f.seek(off)
            h.update(f.read(_BLOCK))
    fp = f"{st.st_size}:{h.hexdigest()[:16]}"
    _CACHE[key] = fp
    return fp


def weights_files(folder: str | os.PathLike) -> list[Path]:
    """The weights file(s) of a hub-layout folder: one file, or the shards an index lists; then the [CLS] map
    (``fit3d.models.cls_map``) / branch (``fit3d.models.cls_branch``) when the folder has one (they change the
    model's output)."""
    from fit3d.models.cls_branch import CLS_BRANCH_FILE
    from fit3d.models.cls_map import CLS_MAP_FILE

    d = Path(folder)
    extra = [d / f for f in (CLS_MAP_FILE, CLS_BRANCH_FILE) if (d / f).is_file()]
    for name in INDEX_FILES:
        if (d / name).is_file():
            try:
                shards = sorted(set(json.loads((d / name).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ModelNotFoundError(f"{d / name}: unreadable weights index ({e})") from None
            return [d / name] + [d / s for s in shards] + extra
    files = [d / n for n in WEIGHT_FILES if (d / n).is_file()]
    return files + extra if files else []


def folder_fingerprint(folder: str | os.PathLike) -> str | None:
    """Fingerprint of a folder's weights (files combined), None when it holds none."""
    files = [f for f in weights_files(folder) if f.is_file()]
    if not files:
        return None
    if len(files) == 1:
        return file_fingerprint(files[0])
    return "shards:" + hashlib.sha256("".join(f"{f.name}={file_fingerprint(f)};" for f in files).encode()).hexdigest()[:16]


def read_architecture(config_file: str | os.PathLike) -> dict:
    """{model_type, width, depth, patch_size, registers} from a transformers ``config.json`` (CLIP's vision
    part when the file holds a whole CLIP model)."""
    p = Path(config_file)
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{p}: unreadable model config ({e})") from None
    if not isinstance(cfg, dict):
        raise ModelNotFoundError(f"{p}: model config must be a JSON object")
    if isinstance(cfg.get("vision_config"), dict):  # a whole CLIP model: the vision tower's numbers
        cfg = {**cfg["vision_config"], "model_type": cfg.get("model_type")}
    patch = cfg.get("patch_size")
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    return {"model_type": cfg.get("model_type"), "width": cfg.get("hidden_size"),
            "depth": cfg.get("num_hidden_layers"), "patch_size": patch,
            "registers": cfg.get("num_register_tokens", 0) or 0}


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(spec: BackboneSpec, model_path: str | os.PathLike | None) -> tuple[str, bool]:
    """(source, is_local): ``model_path``, else ``$FIT3D_MODEL_PATH``, else the spec's hub id.

    An existing folder is local. A given path that does not exist is an error naming it, unless it reads
    like a hub id (``owner/name``), which is then downloaded.
    """
    given = model_path if model_path not in (None, "") else os.environ.get(MODEL_PATH_ENV) or None
    if given is None:
        return spec.hub_id, False
    where = "--model-path" if model_path not in (None, "") else MODEL_PATH_ENV
    path = Path(given).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path}: not a model folder in the hub layout (no config.json) "
                                     f"for backbone '{spec.name}' (from {where})")
        return str(path.resolve()), True
    if path.exists():
        raise ModelNotFoundError(f"{path}: is a file; {where} must be a folder in the hub layout")
    if _HUB_ID.match(str(given)) and not str(given).startswith((".", "~")):
        return str(given), False
    raise ModelNotFoundError(f"{path}: model folder not found (from {where}) for backbone '{spec.name}'")


def _hub_cached(hub_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(hub_id, filename)
    except Exception:  # an unusual hub id or cache layout: treat as not cached
        return None
    return Path(p) if isinstance(p, str) else None


def model_identity(name: str, model_path: str | os.PathLike | None = None, check: bool = True) -> dict:
    """``{"backbone", "source", "fingerprint", "architecture"}`` of backbone ``name`` with weights
    ``model_path`` (else ``$FIT3D_MODEL_PATH``, else the hub id). ``check``: :func:`check_architecture`."""
    if name not in BACKBONES:  # a backbone object given under a name of its own (tests, custom code): no weights to read
        return {"backbone": name, "source": None if model_path is None else str(model_path), "fingerprint": None,
                "architecture": None}
    spec = get_spec(name)
    source, is_local = resolve_source(spec, model_path)
    if is_local:
        config, fp = Path(source) / "config.json", folder_fingerprint(source)
    else:
        config = _hub_cached(source, "config.json")
        weights = next((w for w in (_hub_cached(source, f) for f in WEIGHT_FILES) if w is not None), None)
        fp = file_fingerprint(weights) if weights is not None else None
    arch = read_architecture(config) if config is not None and config.is_file() else None
    if check and arch is not None:
        check_architecture(spec, arch, source)
    return {"backbone": name, "source": source, "fingerprint": fp, "architecture": arch}


def _registered_size(family: str, width, depth) -> BackboneSpec | None:
    return next((s for s in BACKBONES.values() if s.family == family and s.embed_dim == width
                 and s.num_layers in (0, depth)), None)


def check_architecture(spec: BackboneSpec, arch: dict, source: str, what: str = "--backbone") -> None:
    """``ModelNotFoundError`` when weights of a registered size (``arch`` of :func:`read_architecture`) are given
    under a backbone name of another width or depth."""
    width, depth = arch.get("width"), arch.get("depth")
    if width is None or depth is None:
        return
    if width == spec.embed_dim and spec.num_layers in (0, depth):
        return
    match = _registered_size(spec.family, width, depth)
    if match is None:
        return  # a size no registered backbone has: a custom model, loaded under the name given
    raise ModelNotFoundError(
        f"{what} {spec.name} expects a {spec.embed_dim}-wide model with {spec.num_layers or '?'} blocks, but the "
        f"weights at {source} are {width} wide with {depth} blocks ({match.name}); pass {what} {match.name} or "
        f"the weights of {spec.name}")
