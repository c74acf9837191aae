"""``Backbone``: one interface over the registered 2D ViTs (patch tokens + [CLS], any multiple of the patch).

Return type of :meth:`Backbone.tokens` / :meth:`Backbone.features`:

- ``layers=None`` -> one :class:`Tokens` ``(patch [B, D, h, w], cls [B, D])`` of the last layer, after the
  final LayerNorm. ``Tokens`` is a NamedTuple, so ``patch, cls = backbone.features(x)`` works.
- ``layers=[i, ...]`` -> ``list[Tokens]``, one per requested block in the given order. ``i`` indexes the
  transformer blocks (0 = output of the first block; negative counts from the end, -1 = last). Every entry
  goes through the model's final LayerNorm (DINOv2 "linear4" style), so ``layers=[-1]`` gives
  ``[backbone.features(x)]``. ``concat_layers(list)`` joins them along D into one ``Tokens`` (linear4 input).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, NamedTuple, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fit3d.device import resolve_precision

if TYPE_CHECKING:
    from fit3d.models.registry import BackboneSpec


class Tokens(NamedTuple):
    """Tokens of one layer: ``patch`` [B, D, h, w] (registers dropped), ``cls`` [B, D]."""

    patch: torch.Tensor
    cls: torch.Tensor


def concat_layers(layers: Sequence[Tokens]) -> Tokens:
    """Join per-layer ``Tokens`` along the channels (DINOv2 linear4 style): patch [B, sum D, h, w], cls [B, sum D]."""
    return Tokens(torch.cat([t.patch for t in layers], dim=1), torch.cat([t.cls for t in layers], dim=1))


def round_to_multiple(n: float, multiple: int) -> int:
    """Nearest positive multiple of ``multiple`` to ``n``."""
    return max(multiple, int(round(n / multiple)) * multiple)


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] or [3, H, W], uint8 (0-255) or float (0-1) -> float [B, 3, H, W] in [0, 1]."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1] or uint8, got dtype {images.dtype}")
    return images


class FamilyOps(Protocol):
    """What a backbone asks of its family (``fit3d.models.families.Family`` implements it; named here so this
    module needs nothing from that one, which builds backbones)."""

    def encode(self, backbone: "Backbone", pixels: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """Normalised pixels [B, 3, H, W] -> the requested blocks' full token sequences, each [B, N, D], normed."""

    def after_train(self, backbone: "Backbone", mode: bool) -> None:
        """Restore the parts that must stay in eval mode after ``backbone.train(mode)``."""


class Backbone(nn.Module):
    """A registered 2D ViT behind one interface.

    Attributes: ``name``, ``family``, ``spec``, ``patch_size``, ``embed_dim`` (= ``cls_dim``), ``num_layers``,
    ``num_registers``, ``model`` (the library model: trainable; for transformers families
    ``save_pretrained``-able and reloadable with ``load_backbone(name, model_path=folder)``), buffers
    ``mean``/``std`` [1, 3, 1, 1].
    """

    def __init__(self, spec: "BackboneSpec", family: FamilyOps, model: nn.Module, *, patch_size: int,
                 embed_dim: int, num_layers: int, num_registers: int):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.family = spec.family
        self._family = family
        self.model = model
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.num_layers = int(num_layers)
        self.num_registers = int(num_registers)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.cls_map: nn.Module | None = None  # fit3d.models.cls_map.ClsMap on the last layer's [CLS], if the weights carry one
        self.cls_branch: nn.Module | None = None  # fit3d.models.cls_branch.ClsBranch: the last layer's [CLS] is the original's
        # of ``features``: None (bf16 autocast on CUDA only) / auto / fp32 / bf16 (fit3d.device.resolve_precision);
        # the stages that extract frozen features set their config's ``precision`` here
        self.precision: str | None = None
        self.eval()

    # ---- geometry ----------------------------------------------------------------------------------

    @property
    def cls_dim(self) -> int:
        """Width of the [CLS] output (= ``embed_dim`` for a plain backbone)."""
        return self.embed_dim

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def num_prefix_tokens(self) -> int:
        """[CLS] + registers, in front of the patch tokens."""
        return 1 + self.num_registers

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) of an image of ``height`` x ``width`` (both multiples of the patch size)."""
        p = self.patch_size
        if height % p or width % p or height <= 0 or width <= 0:
            raise ValueError(f"{self.name}: image size {height}x{width} is not a positive multiple of the patch "
                             f"size {p}; resize with backbone.prepare(images)")
        return height // p, width // p

    def prepare(self, images: torch.Tensor, size: int | Sequence[int] | None = None) -> torch.Tensor:
        """Resize images (bilinear, antialiased when shrinking) so both sides are multiples of the patch.

        images: [B, 3, H, W] or [3, H, W], float in [0, 1] or uint8 -> float [B, 3, H', W'].
        size: None keeps about (H, W); an int sets the shorter side to about ``size`` keeping the aspect;
        (H', W') asks for that size. Each side is rounded to the nearest multiple of the patch size.
        """
        images = to_float_images(images)
        H, W = images.shape[-2:]
        if size is None:
            target = (H, W)
        elif isinstance(size, int):
            scale = size / min(H, W)
            target = (H * scale, W * scale)
        else:
            target = tuple(size)
            if len(target) != 2:
                raise ValueError(f"size must be an int or (height, width), got {size}")
        th, tw = (round_to_multiple(t, self.patch_size) for t in target)
        if (th, tw) == (H, W):
            return images
        return F.interpolate(images, size=(th, tw), mode="bilinear", align_corners=False,
                             antialias=th < H or tw < W)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalised with the family's mean/std."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    # ---- tokens ------------------------------------------------------------------------------------

    def resolve_layers(self, layers: Sequence[int]) -> list[int]:
        """Block indices (negative from the end) -> indices in [0, num_layers)."""
        out = []
        for i in layers:
            j = int(i) + self.num_layers if int(i) < 0 else int(i)
            if not 0 <= j < self.num_layers:
                raise ValueError(f"{self.name}: layer {i} out of range for {self.num_layers} blocks")
            out.append(j)
        return out

    def tokens(self, images: torch.Tensor, layers: Sequence[int] | None = None) -> Tokens | list[Tokens]:
        """Patch and [CLS] tokens, with autograd (for fine-tuning). See the module docstring for the return.

        images: [B, 3, H, W] float in [0, 1], H and W multiples of ``patch_size`` (position embeddings are
        interpolated to the grid). Moved to the backbone's device.
        """
        images = to_float_images(images).to(self.device)
        B, _, H, W = images.shape
        h, w = self.grid_size(H, W)
        idx = self.resolve_layers([-1] if layers is None else layers)
        branch = self.cls_branch if self.cls_branch is not None and self.num_layers - 1 in idx else None
        hook = branch.capture(self.model) if branch is not None else None
        try:
            seqs = self._family.encode(self, self.normalize(images), idx)  # each [B, P + h*w, D], normed
        finally:
            if hook is not None:
                hook.remove()
        out = []
        for i, s in zip(idx, seqs):
            patch = s[:, self.num_prefix_tokens:]
            if patch.shape[1] != h * w:
                raise RuntimeError(f"{self.name}: got {patch.shape[1]} patch tokens for a {h}x{w} grid")
            cls = s[:, 0]
            if branch is not None and i == self.num_layers - 1:  # the original's [CLS] from the shared prefix
                cls = branch.cls().to(cls.dtype)
            if self.cls_map is not None and i == self.num_layers - 1:  # fitted on the last layer's [CLS] only
                cls = self.cls_map(cls)
            out.append(Tokens(patch.transpose(1, 2).reshape(B, s.shape[-1], h, w), cls))
        return out[0] if layers is None else out

    def _autocast(self):
        """bf16 autocast where ``precision`` resolves to bf16 on this device (``fit3d.device.resolve_precision``)."""
        if resolve_precision(self.precision, self.device) == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def features(self, images: torch.Tensor, layers: Sequence[int] | None = None,
                 batch_size: int = 16) -> Tokens | list[Tokens]:
        """:meth:`tokens` without autograd: ``torch.inference_mode``, eval mode, ``batch_size`` images at a time,
        bf16 autocast as ``precision`` says (on CUDA by default). Outputs are ordinary (non-inference) float32 tensors on the backbone's device;
        images may live elsewhere (e.g. a large batch on the CPU)."""
        images = to_float_images(images)
        was_training = self.training
        self.eval()
        try:
            chunks = []
            with torch.inference_mode(), self._autocast():
                for start in range(0, images.shape[0], max(1, int(batch_size))):
                    chunks.append(self.tokens(images[start:start + batch_size], layers))
        finally:
            self.train(was_training)
        # concatenated outside inference_mode: the results are ordinary tensors, usable as targets in a loss
        # that autograd records (inference tensors cannot be saved for backward)
        return _cat_chunks(chunks, layers is None)

    def train(self, mode: bool = True):
        super().train(mode)
        self._family.after_train(self, mode)
        return self

    def extra_repr(self) -> str:
        return (f"name={self.name}, family={self.family}, patch_size={self.patch_size}, "
                f"embed_dim={self.embed_dim}, layers={self.num_layers}, registers={self.num_registers}")


@contextlib.contextmanager
def using_precision(model, precision: str | None):
    """Set ``precision`` (``fit3d.device.resolve_precision``'s values) on ``model`` and on the backbones it wraps
    (``ConcatFeatures``' two) for the block; restored after. Models without the attribute are left alone."""
    parts = [m for m in (model, getattr(model, "original", None), getattr(model, "finetuned", None))
             if isinstance(m, Backbone)]
    before = [m.precision for m in parts]
    for m in parts:
        m.precision = precision
    try:
        yield model
    finally:
        for m, p in zip(parts, before):
            m.precision = p


def _cat_chunks(chunks: list, single: bool) -> Tokens | list[Tokens]:
    """Concatenate per-batch results (``Tokens`` or ``list[Tokens]``) along the batch as float32."""
    def cat(parts: list[Tokens]) -> Tokens:
        return Tokens(torch.cat([p.patch for p in parts]).float(), torch.cat([p.cls for p in parts]).float())

    if single:
        return cat(chunks)
    return [cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]

