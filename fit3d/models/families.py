"""How each backbone family is loaded and run (checked against transformers 5.24's modelling code).

| family | class | final norm | ``last_hidden_state`` | prefix tokens | position embeddings |
|---|---|---|---|---|---|
| dinov2 | ``Dinov2Model`` | ``layernorm`` | normed | CLS | interpolated always |
| dinov2_reg | ``Dinov2WithRegistersModel`` | ``layernorm`` | normed | CLS + registers | interpolated always |
| dinov3 | ``DINOv3ViTModel`` | ``norm`` | normed | CLS + registers | RoPE (any grid) |
| clip | ``CLIPVisionModel`` | ``post_layernorm`` | NOT normed (only the pooled CLS is) | CLS | ``interpolate_pos_encoding=True`` |
| mae | ``ViTMAEModel`` | ``layernorm`` | normed | CLS | ``interpolate_pos_encoding=True``; masking off |
| timm | ``timm.create_model`` (DeiT-III) | ``norm`` | via ``forward_intermediates(norm=True)`` | CLS | ``dynamic_img_size`` |

``output_hidden_states`` gives (embeddings, block 1, ..., block L) before the final norm in every
transformers family, so block ``i`` is ``hidden_states[i + 1]``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fit3d.errors import ModelNotFoundError
from fit3d.models.backbone import Backbone
from fit3d.models.hub import hub_reachable, hub_unreachable_error
from fit3d.models.registry import BackboneSpec


@dataclass(frozen=True)
class Family:
    """How to load and run one kind of model.

    ``load(spec, source, is_local) -> Backbone`` builds the backbone (default: transformers);
    ``encode(backbone, pixels, layers) -> list[[B, N, D]]`` runs normalised pixels and returns the full token
    sequences of the requested blocks (indices in [0, L)), each after the final norm.
    """

    name: str
    model_class: str = field(metadata={"help": "transformers class name (or 'timm')"})
    model_types: tuple[str, ...] = field(metadata={"help": "config.model_type values this family accepts"})
    norm_attr: str = "layernorm"
    last_is_normed: bool = True
    forward_kwargs: tuple[tuple[str, object], ...] = ()
    config_overrides: tuple[tuple[str, object], ...] = ()
    fixed_noise: bool = False  # ViT-MAE: pass monotone noise so random_masking keeps the patch order
    eval_rope: bool = False  # DINOv3: keep RoPE coordinates un-augmented even in train mode
    load: Callable | None = None
    encode_fn: Callable | None = None

    def available(self) -> tuple[bool, str]:
        """(is the model class importable here, why not)."""
        if self.model_class == "timm":
            return _timm_status()
        import transformers

        try:
            getattr(transformers, self.model_class)
        except (AttributeError, ImportError) as e:
            return False, f"transformers {transformers.__version__} has no {self.model_class} ({e})"
        return True, f"transformers.{self.model_class}"

    def encode(self, backbone: Backbone, pixels: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        if self.encode_fn is not None:
            return self.encode_fn(backbone, pixels, layers)
        return _encode_transformers(self, backbone, pixels, layers)

    def after_train(self, backbone: Backbone, mode: bool) -> None:
        if self.eval_rope and mode:
            # DINOv3 jitters/rescales RoPE patch coordinates in train mode (a pre-training augmentation). FiT3D
            # regresses pixel-aligned targets, so fine-tuning keeps the inference-time coordinates.
            backbone.model.rope_embeddings.eval()


FAMILIES: dict[str, Family] = {}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add a family to :data:`FAMILIES` (``ValueError`` if the name exists and ``replace`` is False)."""
    if family.name in FAMILIES and not replace:
        raise ValueError(f"backbone family '{family.name}' is already registered")
    FAMILIES[family.name] = family
    return family


# ---- transformers families -------------------------------------------------------------------------

def _encode_transformers(family: Family, backbone: Backbone, pixels: torch.Tensor,
                         layers: list[int]) -> list[torch.Tensor]:
    model = backbone.model
    kwargs = dict(family.forward_kwargs)
    if family.fixed_noise:
        # ViT-MAE shuffles patches by argsort(noise) and keeps the first (1 - mask_ratio); with mask_ratio 0
        # and increasing noise every patch is kept, in raster order.
        n = (pixels.shape[-2] // backbone.patch_size) * (pixels.shape[-1] // backbone.patch_size)
        kwargs["noise"] = torch.arange(n, device=pixels.device, dtype=torch.float32).expand(pixels.shape[0], n)
    last = backbone.num_layers - 1
    need_hidden = any(i != last for i in layers)
    out = model(pixel_values=pixels, output_hidden_states=need_hidden, **kwargs)
    norm: nn.Module = getattr(model, family.norm_attr)
    seqs = []
    for i in layers:
        if i == last:
            seqs.append(out.last_hidden_state if family.last_is_normed else norm(out.last_hidden_state))
        else:
            seqs.append(norm(out.hidden_states[i + 1]))
    return seqs


def _read_model_type(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{folder / 'config.json'}: unreadable model config ({e})") from e


def _load_transformers(family: Family, spec: BackboneSpec, source: str, is_local: bool) -> Backbone:
    ok, why = family.available()
    if not ok:
        raise ModelNotFoundError(f"backbone '{spec.name}': {why}; install a transformers version that has it")
    import transformers

    cls = getattr(transformers, family.model_class)
    overrides = dict(family.config_overrides)
    if is_local:
        folder = Path(source)
        mtype = _read_model_type(folder)
        if mtype not in family.model_types:
            raise ModelNotFoundError(
                f"{folder}: holds a '{mtype}' model, but backbone '{spec.name}' (family {family.name}) needs "
                f"one of {', '.join(family.model_types)}")
        try:
            model = cls.from_pretrained(str(folder), dtype=torch.float32, **overrides)
        except OSError as e:
            raise ModelNotFoundError(f"{folder}: could not load a {family.model_class} ({e})") from e
    else:
        try:  # the local hub cache first: no network, no retries
            model = cls.from_pretrained(source, dtype=torch.float32, local_files_only=True, **overrides)
        except OSError:
            if not hub_reachable():
                raise hub_unreachable_error(spec, source) from None
            try:
                model = cls.from_pretrained(source, dtype=torch.float32, **overrides)
            except OSError as e:
                raise hub_unreachable_error(spec, source, detail=str(e).splitlines()[0]) from e
        if model.config.model_type not in family.model_types:
            raise ModelNotFoundError(f"hub id '{source}' holds a '{model.config.model_type}' model, but backbone "
                                     f"'{spec.name}' needs one of {', '.join(family.model_types)}")
    for key, value in overrides.items():  # e.g. MAE's mask_ratio, whatever the folder's config said
        setattr(model.config, key, value)
    cfg = model.config
    patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
    backbone = Backbone(spec, family, model, patch_size=patch, embed_dim=cfg.hidden_size,
                        num_layers=cfg.num_hidden_layers, num_registers=getattr(cfg, "num_register_tokens", 0) or 0)
    return backbone


for _fam in (
    Family("dinov2", "Dinov2Model", ("dinov2",)),
    Family("dinov2_reg", "Dinov2WithRegistersModel", ("dinov2_with_registers",)),
    Family("dinov3", "DINOv3ViTModel", ("dinov3_vit",), norm_attr="norm", eval_rope=True),
    Family("clip", "CLIPVisionModel", ("clip", "clip_vision_model"), norm_attr="post_layernorm",
           last_is_normed=False, forward_kwargs=(("interpolate_pos_encoding", True),)),
    Family("mae", "ViTMAEModel", ("vit_mae",), forward_kwargs=(("interpolate_pos_encoding", True),),
           config_overrides=(("mask_ratio", 0.0),), fixed_noise=True),
):
    register_family(_fam)


# ---- timm (DeiT-III) -------------------------------------------------------------------------------

def _timm_status() -> tuple[bool, str]:
    try:
        timm = importlib.import_module("timm")
    except Exception as e:  # timm imports torchvision, which can fail with errors other than ImportError
        first = str(e).splitlines()[0] if str(e) else ""
        return False, (f"timm does not import here ({type(e).__name__}: {first}); timm needs torchvision, and "
                       f"torchvision does not work against this torch build ({torch.__version__}), so timm models "
                       "cannot be loaded on this machine")
    return True, f"timm {timm.__version__}"


def _load_timm(family: Family, spec: BackboneSpec, source: str, is_local: bool) -> Backbone:
    ok, why = _timm_status()
    if not ok:
        raise ModelNotFoundError(f"backbone '{spec.name}' is only available through timm, and {why}. "
                                 "Use a transformers backbone (see `fit3d backbones`) or install timm with a "
                                 "torchvision that matches torch.")
    import timm

    arch = spec.hub_id.split("/", 1)[-1]
    kwargs: dict = dict(pretrained=True, dynamic_img_size=True, num_classes=0)
    if is_local:
        weights = next((Path(source) / f for f in ("model.safetensors", "pytorch_model.bin")
                        if (Path(source) / f).exists()), None)
        if weights is None:
            raise ModelNotFoundError(f"{source}: no model.safetensors or pytorch_model.bin for timm model {arch}")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    try:
        model = timm.create_model(arch, **kwargs)
    except (OSError, RuntimeError) as e:
        raise hub_unreachable_error(spec, spec.hub_id, detail=str(e).splitlines()[0]) from e
    return Backbone(spec, family, model, patch_size=model.patch_embed.patch_size[0], embed_dim=model.embed_dim,
                    num_layers=len(model.blocks), num_registers=model.num_prefix_tokens - 1)


def _encode_timm(backbone: Backbone, pixels: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
    # Not exercised here (timm does not import on this machine); written against timm>=1.0's
    # forward_intermediates, which returns the normed patch tokens and the prefix tokens per block.
    outs = backbone.model.forward_intermediates(pixels, indices=layers, norm=True, output_fmt="NLC",
                                                intermediates_only=True, return_prefix_tokens=True)
    return [torch.cat([prefix, patch], dim=1) for patch, prefix in outs]


register_family(Family("timm", "timm", ("timm",), norm_attr="norm", load=_load_timm, encode_fn=_encode_timm))


def load_with_family(spec: BackboneSpec, source: str, is_local: bool) -> Backbone:
    """Build the backbone of ``spec`` from a local folder or hub id through its family's loader."""
    try:
        family = FAMILIES[spec.family]
    except KeyError:
        raise ModelNotFoundError(f"backbone '{spec.name}' has unknown family '{spec.family}'; "
                                 f"families: {', '.join(FAMILIES)}") from None
    loader = family.load or _load_transformers
    return loader(family, spec, source, is_local)
