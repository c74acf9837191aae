"""Weight-space ensembles of the original and the fine-tuned backbone (WiSE-FT, Wortsman et al., CVPR 2022).

    theta(a) = theta_original + a * (theta_finetuned - theta_original)      (a = 1: the fine-tuned model)

One model, the cost of one forward, no retraining: moving the trained weights part of the way back keeps
more of what the original knew (the features Stage 2 has no target for, such as [CLS]) while keeping part
of what Stage 2 taught. Every floating-point parameter and buffer is interpolated (tensors Stage 2 froze
are equal in both, so they stay as they are); integer buffers are taken from the fine-tuned model.

    interpolate_weights(original_module, finetuned_module, a)   # in place on the fine-tuned module
    interpolate_folder(src, dest, a)    # a fine-tuned output folder -> a new one (model/ + fit3d.json)

Written here rather than taken from a package: it is one ``torch.lerp`` per tensor (the WiSE-FT
repository's own ``wise_ft`` is a script, not an installable library).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from torch import nn

from fit3d.errors import Fit3DError


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in (0, 1]; ``Fit3DError`` otherwise (0 would be the original itself)."""
    a = float(alpha)
    if not 0.0 < a <= 1.0:
        raise Fit3DError(f"weight interpolation alpha must be in (0, 1] (1 = the fine-tuned model), got {alpha}")
    return a


@torch.no_grad()
def interpolate_weights(original: nn.Module, finetuned: nn.Module, alpha: float) -> int:
    """Set every floating-point tensor of ``finetuned``'s state to original + alpha (finetuned - original),
    in place; returns how many tensors changed. The two modules must have the same state keys and shapes."""
    a = check_alpha(alpha)
    src, dst = original.state_dict(), finetuned.state_dict()
    if src.keys() != dst.keys():
        diff = sorted(set(src) ^ set(dst))
        raise Fit3DError(f"weight interpolation: the models' tensors differ ({', '.join(diff[:4])}...)")
    changed = 0
    for k, t in dst.items():
        o = src[k]
        if o.shape != t.shape:
            raise Fit3DError(f"weight interpolation: {k} is {tuple(o.shape)} in the original, {tuple(t.shape)} "
                             f"fine-tuned")
        if not t.is_floating_point() or a == 1.0 or torch.equal(o, t):
            continue
        t.copy_(torch.lerp(o.to(t.device, t.dtype), t, a))
        changed += 1
    return changed


def interpolate_folder(src, dest, alpha: float, device: str = "cpu") -> dict:
    """A fine-tuned output folder ``src`` (``fit3d finetune``'s model/ + fit3d.json) -> ``dest`` with the weights
    at ``alpha`` between the original (its manifest's ``original_model_path`` / backbone) and ``src``'s. The new
    manifest records ``config.interpolate`` and ``settings.interpolate`` = alpha (times ``src``'s own alpha when it
    was interpolated already) and the new weights' fingerprint; ``src`` is never changed. Returns the manifest."""
    from fit3d.finetune.assembled import check_manifest, load_finetuned, read_manifest
    from fit3d.finetune.trainer import LOSSES_FILE, MANIFEST_FILE, MODEL_DIR, _save_pretrained_atomic
    from fit3d.guard import check_not_input
    from fit3d.io import write_json
    from fit3d.models.identity import folder_fingerprint

    a = check_alpha(alpha)
    src, dest = Path(src), Path(dest)
    m = read_manifest(src)
    check_manifest(src, m)
    check_not_input(dest, [src])
    original, finetuned = load_finetuned(src, device=device)
    interpolate_weights(original.model, finetuned.model, a)
    dest.mkdir(parents=True, exist_ok=True)
    _save_pretrained_atomic(finetuned.model, dest / MODEL_DIR)
    if (src / LOSSES_FILE).exists():
        shutil.copyfile(src / LOSSES_FILE, dest / LOSSES_FILE)
    total = a * float((m.get("config") or {}).get("interpolate", 1.0))
    manifest = {**m, "model_dir": MODEL_DIR, "finetuned_fingerprint": folder_fingerprint(dest / MODEL_DIR),
                "config": {**(m.get("config") or {}), "interpolate": total},
                "settings": {**(m.get("settings") or {}), "interpolate": total},
                "interpolated_from": str(src.resolve())}
    manifest.get("metrics", {}).pop("heldout", None)  # measured on src's weights, not these
    write_json(dest / MANIFEST_FILE, manifest)
    return manifest


def interpolated_config(cfg, alpha: float):
    """``cfg`` (a ``FinetuneConfig``) with ``interpolate`` = alpha: what :func:`interpolate_folder` records."""
    return dataclasses.replace(cfg, interpolate=check_alpha(alpha))
