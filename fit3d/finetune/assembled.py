"""Load a fine-tuned folder: the original and fine-tuned backbones, or FiT3D's assembled features.

FiT3D evaluates concat(original, fine-tuned) last-layer patch tokens, both frozen, with the [CLS]
token of the original (fine-tuned features alone were reported worse than the original).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fit3d.errors import ModelNotFoundError
from fit3d.finetune.trainer import MANIFEST_FILE, MODEL_DIR
from fit3d.io import read_json_dict
from fit3d.models import ConcatFeatures, load_backbone

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


def load_finetuned(path, device: str = "cpu"):
    """(original Backbone, fine-tuned Backbone), both frozen in eval mode, from a fine-tuned folder."""
    p = Path(path)
    m = read_manifest(p)
    orig_path = m.get("original_model_path")
    if orig_path and (orig_path.startswith(("/", ".", "~")) and not Path(orig_path).expanduser().exists()):
        log.warning("%s: original model %s no longer exists; using the registry's %r", p, orig_path, m["backbone"])
        orig_path = None
    original = load_backbone(m["backbone"], model_path=orig_path, device=device)
    finetuned = load_backbone(m["backbone"], model_path=str(p / m.get("model_dir", MODEL_DIR)), device=device)
    for b in (original, finetuned):
        b.eval()
        b.requires_grad_(False)
    return original, finetuned


def load_assembled(path, device: str = "cpu"):
    """``ConcatFeatures(original, fine-tuned)``: features() gives [B, 2D, h, w] patch tokens, CLS of the original."""
    return ConcatFeatures(*load_finetuned(path, device=device))
