"""``ConcatFeatures``: FiT3D's assembled extractor, concat(original, fine-tuned) patch tokens."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fit3d.models.backbone import Backbone, Tokens


class ConcatFeatures(nn.Module):
    """Two backbones of the same patch size behind the ``Backbone`` feature API.

    patch tokens: ``cat([original, finetuned], dim=1)`` -> [B, D_o + D_f, h, w] (original first);
    [CLS]: the original's [B, D_o] (as FiT3D assembles them). Hence ``embed_dim`` = D_o + D_f (patch width)
    and ``cls_dim`` = D_o. Images are normalised by each backbone with its own mean/std.
    """

    def __init__(self, original: Backbone, finetuned: Backbone):
        super().__init__()
        if original.patch_size != finetuned.patch_size:
            raise ValueError(f"ConcatFeatures: patch sizes differ ({original.name}: {original.patch_size}, "
                             f"{finetuned.name}: {finetuned.patch_size})")
        self.original = original
        self.finetuned = finetuned
        self.name = f"{original.name}+{finetuned.name}" if original.name != finetuned.name else f"{original.name}+fit3d"
        self.family = original.family
        self.patch_size = original.patch_size
        self.embed_dim = original.embed_dim + finetuned.embed_dim
        self.cls_dim = original.cls_dim

    @property
    def device(self) -> torch.device:
        return self.original.device

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return self.original.grid_size(height, width)

    def prepare(self, images: torch.Tensor, size=None) -> torch.Tensor:
        return self.original.prepare(images, size)

    @staticmethod
    def _join(o: Tokens, f: Tokens) -> Tokens:
        return Tokens(torch.cat([o.patch, f.patch.to(o.patch.device)], dim=1), o.cls)

    def _combine(self, o, f, single: bool):
        return self._join(o, f) if single else [self._join(a, b) for a, b in zip(o, f)]

    def tokens(self, images: torch.Tensor, layers: Sequence[int] | None = None) -> Tokens | list[Tokens]:
        """As ``Backbone.tokens`` (with autograd through the fine-tuned model)."""
        return self._combine(self.original.tokens(images, layers), self.finetuned.tokens(images, layers),
                             layers is None)

    def features(self, images: torch.Tensor, layers: Sequence[int] | None = None,
                 batch_size: int = 16) -> Tokens | list[Tokens]:
        """As ``Backbone.features``: patch [B, D_o + D_f, h, w], cls [B, D_o] (or a list per layer)."""
        return self._combine(self.original.features(images, layers, batch_size),
                             self.finetuned.features(images, layers, batch_size), layers is None)
