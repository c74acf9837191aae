"""fit3d.models: registry of named 2D backbones behind one interface.

    from fit3d.models import load_backbone
    bb = load_backbone("dinov2_small", model_path=None, device="cpu")  # or FIT3D_MODEL_PATH / hub id
    x = bb.prepare(images)                 # [B, 3, H, W] in [0, 1] -> sides multiples of bb.patch_size
    patch, cls = bb.features(x)            # [B, D, h, w], [B, D]; no grad, batched, bf16 on CUDA
    patch, cls = bb.tokens(x)              # same with autograd (fine-tuning)
    per_layer = bb.features(x, layers=[8, 9, 10, 11])   # list[Tokens], each after the final norm
    patch4, cls4 = concat_layers(per_layer)             # [B, 4D, h, w], [B, 4D]

Families and what each does differently: ``fit3d.models.families``.
"""

from fit3d.models.backbone import Backbone, Tokens, concat_layers
from fit3d.models.concat import ConcatFeatures
from fit3d.models.families import FAMILIES, Family, register_family
from fit3d.models.hub import MODEL_PATH_ENV
from fit3d.models.loading import load_backbone
from fit3d.models.registry import BACKBONES, BackboneSpec, get_spec, list_backbones, register_backbone

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "ConcatFeatures", "FAMILIES", "Family", "MODEL_PATH_ENV",
           "Tokens", "concat_layers", "get_spec", "list_backbones", "load_backbone", "register_backbone", "register_family"]
