"""Registry of named 2D backbones: one :class:`BackboneSpec` per name, grouped into families.

A *family* (``dinov2``, ``dinov2_reg``, ``dinov3``, ``clip``, ``mae``, ``timm``) says how to load and run a
model class; a *spec* names one checkpoint of a family (hub id, patch size, width, normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fit3d.errors import ModelNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone. ``patch_size``/``embed_dim``/``num_registers`` are the nominal values of
    the hub checkpoint (for listings); a loaded model reports the values of its own config."""

    name: str = field(metadata={"help": "registry name, e.g. dinov2_small"})
    family: str = field(metadata={"help": "family key in fit3d.models.families.FAMILIES"})
    hub_id: str = field(metadata={"help": "model hub id loaded when no local folder is given"})
    patch_size: int = field(metadata={"help": "ViT patch size in pixels"})
    embed_dim: int = field(metadata={"help": "token width D"})
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN, metadata={"help": "RGB normalisation mean"})
    std: tuple[float, float, float] = field(default=IMAGENET_STD, metadata={"help": "RGB normalisation std"})
    num_registers: int = field(default=0, metadata={"help": "register tokens (dropped from the patch grid)"})
    num_layers: int = field(default=0, metadata={"help": "transformer blocks of the hub checkpoint (0: not stated)"})
    description: str = field(default="", metadata={"help": "one line for `fit3d backbones`"})


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec | Callable[[], BackboneSpec] | None = None, /, *,
                      replace: bool = False, **fields) -> BackboneSpec:
    """Add a backbone to :data:`BACKBONES` and return its spec. Three forms::

        register_backbone(BackboneSpec(name="my_vit", family="dinov2", hub_id="me/my-vit", ...))
        register_backbone(name="my_vit", family="dinov2", hub_id="me/my-vit", patch_size=14, embed_dim=384)

        @register_backbone          # decorates a function returning a spec; the name is bound to the spec
        def my_vit():
            return BackboneSpec(name="my_vit", ...)

    A name already registered raises ``ValueError`` unless ``replace=True``.
    """
    if spec is None:
        spec = BackboneSpec(**fields)
    elif fields:
        raise TypeError("register_backbone: give either a BackboneSpec or keyword fields, not both")
    elif not isinstance(spec, BackboneSpec):
        if not callable(spec):
            raise TypeError(f"register_backbone: expected a BackboneSpec or a function, got {type(spec).__name__}")
        spec = spec()
        if not isinstance(spec, BackboneSpec):
            raise TypeError("register_backbone: the decorated function must return a BackboneSpec")
    if spec.name in BACKBONES and not replace:
        raise ValueError(f"backbone '{spec.name}' is already registered (pass replace=True to override)")
    BACKBONES[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Registered backbone names, in registration order."""
    return list(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    """The spec of ``name``; an unknown name raises ModelNotFoundError listing the registered names."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown backbone '{name}'; registered backbones: {', '.join(list_backbones())}") from None


# ---- built-in entries ------------------------------------------------------------------------------

_DINOV2 = (("small", 384, 12), ("base", 768, 12), ("large", 1024, 24), ("giant", 1536, 40))
for _size, _dim, _depth in _DINOV2:
    register_backbone(name=f"dinov2_{_size}", family="dinov2", hub_id=f"facebook/dinov2-{_size}",
                      patch_size=14, embed_dim=_dim, num_layers=_depth, description=f"DINOv2 ViT-{_size[0].upper()}/14")
for _size, _dim, _depth in _DINOV2:
    register_backbone(name=f"dinov2_{_size}_reg", family="dinov2_reg",
                      hub_id=f"facebook/dinov2-with-registers-{_size}", patch_size=14, embed_dim=_dim,
                      num_layers=_depth, num_registers=4,
                      description=f"DINOv2 ViT-{_size[0].upper()}/14 with 4 registers")
# DINOv3 ViTs (LVD-1689M web-image checkpoints; all patch 16 with 4 registers). The hub repos are gated:
# accept the licence on the hub and log in, or download once and pass the local folder.
for _name, _tag, _dim, _depth, _desc in (("dinov3_small", "vits16", 384, 12, "ViT-S/16"),
                                         ("dinov3_small_plus", "vits16plus", 384, 12, "ViT-S+/16"),
                                         ("dinov3_base", "vitb16", 768, 12, "ViT-B/16"),
                                         ("dinov3_large", "vitl16", 1024, 24, "ViT-L/16"),
                                         ("dinov3_huge_plus", "vith16plus", 1280, 32, "ViT-H+/16"),
                                         ("dinov3_7b", "vit7b16", 4096, 40, "ViT-7B/16")):
    register_backbone(name=_name, family="dinov3", hub_id=f"facebook/dinov3-{_tag}-pretrain-lvd1689m",
                      patch_size=16, embed_dim=_dim, num_layers=_depth, num_registers=4,
                      description=f"DINOv3 {_desc} (LVD-1689M)")
register_backbone(name="clip_b16", family="clip", hub_id="openai/clip-vit-base-patch16", patch_size=16,
                  embed_dim=768, num_layers=12, mean=CLIP_MEAN, std=CLIP_STD, description="CLIP ViT-B/16 vision tower")
register_backbone(name="mae_b16", family="mae", hub_id="facebook/vit-mae-base", patch_size=16, embed_dim=768,
                  num_layers=12, description="MAE ViT-B/16 encoder, unmasked")
register_backbone(name="deit3_b16", family="timm", hub_id="timm/deit3_base_patch16_224.fb_in1k", patch_size=16,
                  embed_dim=768, num_layers=12, description="DeiT-III ViT-B/16 (ImageNet-1k), needs timm")
del _size, _dim, _depth, _name, _tag, _desc
