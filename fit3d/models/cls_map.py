"""An affine map on a backbone's output [CLS] token, stored beside its weights (``cls_map.safetensors``).

Stage 2 trains the blocks that make [CLS] but gives [CLS] no target, so the fine-tuned model's [CLS] drifts
and the probes that read it (the depth head's metric scale) pay for it (issue 21). ``fit3d.finetune.cls_align``
fits this map after Stage 2 (the fine-tuned [CLS] -> the original's, on the Stage 2 views); the patch tokens
are untouched, and so is every token another token attends to (the map acts after the last block).

    cls' = cls @ weight + bias        weight [D, D], bias [D]

A model folder with the file is loaded with the map applied (``fit3d.models.load_backbone``); its fingerprint
covers the file (``fit3d.models.identity.weights_files``). Plain transformers loading ignores it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fit3d.errors import ModelNotFoundError

CLS_MAP_FILE = "cls_map.safetensors"


class ClsMap(nn.Module):
    """cls [..., D] -> cls @ weight + bias (float32 parameters, applied in the input's dtype)."""

    def __init__(self, weight: Tensor, bias: Tensor, meta: dict | None = None):
        super().__init__()
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1] or bias.shape != weight.shape[:1]:
            raise ValueError(f"ClsMap: weight must be [D, D] and bias [D], got {tuple(weight.shape)} / "
                             f"{tuple(bias.shape)}")
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.meta = {str(k): str(v) for k, v in (meta or {}).items()}

    @property
    def dim(self) -> int:
        return self.weight.shape[0]

    def forward(self, cls: Tensor) -> Tensor:
        return (cls @ self.weight.to(cls.dtype) + self.bias.to(cls.dtype)).to(cls.dtype)

    def save(self, folder) -> Path:
        """Write ``folder/cls_map.safetensors`` (the folder must exist; callers write into a temporary folder)."""
        from safetensors.torch import save_file

        path = Path(folder) / CLS_MAP_FILE
        save_file({"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()},
                  str(path), metadata=self.meta)
        return path


def load_cls_map(folder) -> ClsMap | None:
    """The map stored in a model folder, None when it has none; ``ModelNotFoundError`` for a damaged file."""
    path = Path(folder) / CLS_MAP_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return ClsMap(f.get_tensor("weight"), f.get_tensor("bias"), meta)
    except Exception as e:  # safetensors raises its own types for a truncated or foreign file
        raise ModelNotFoundError(f"{path}: unreadable [CLS] map ({type(e).__name__}: {e})") from None
