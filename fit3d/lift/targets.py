"""Stage 1 targets: the frozen backbone's patch tokens for every view, through the one token cache.

The tokens of a view are computed once and kept in ``fit3d.models.tokens.TokenCache`` (one safetensors entry
per image, keyed by the model's identity, the layers and the exact backbone input), the cache the probes read
too: a probe of the same image at the same input size (``fit3d pipeline``: lift and probes at 448 px) finds
them there. In memory a lift holds them as float16 [V, D, h, w] (the precision its targets always had). At use
a view's grid is bilinearly upsampled to the render resolution (FiT3D: "bilinearly upsampled to full render
resolution").
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fit3d.models.tokens import TokenCache, extract_features, image_id, token_key


def backbone_input_size(width: int, height: int, long_side: int, patch: int) -> tuple[int, int]:
    """(W', H'): the image scaled so its long side is ~``long_side``, both sides multiples of ``patch``."""
    s = long_side / max(width, height)
    return max(patch, round(width * s / patch) * patch), max(patch, round(height * s / patch) * patch)


def backbone_images(views, long_side: int, patch: int, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Each view's image at the backbone's input ``size`` (W, H; default :func:`backbone_input_size` of the
    first view), float32 in [0, 1]."""
    W, H = size or backbone_input_size(views[0].width, views[0].height, long_side, patch)
    return [np.clip(cv2.resize(v.image, (W, H), interpolation=cv2.INTER_AREA if W < v.width else cv2.INTER_LINEAR),
                    0, 1).astype(np.float32, copy=False) for v in views]


class TargetCache:
    """Per-view target grids: ``grids`` [V, D, h, w] float16 (numpy), ``names`` the views in that order."""

    def __init__(self, names: list[str], grids: np.ndarray, computed: int = 0):
        self.names = list(names)
        self.grids = grids
        self.computed = computed  # views whose tokens the backbone computed in this build (0: all from the cache)
        if grids.ndim != 4 or len(grids) != len(self.names):
            raise ValueError(f"target grids of shape {grids.shape} for {len(self.names)} views")
        self._index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.grids.shape[1])

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the token grid."""
        return int(self.grids.shape[2]), int(self.grids.shape[3])

    def index(self, name: str) -> int:
        return self._index[name]

    def grid(self, i: int, device=None) -> Tensor:
        """[D, h, w] float32 tokens of view ``i``."""
        return torch.from_numpy(np.asarray(self.grids[i], dtype=np.float32)).to(device)

    def target(self, i: int, width: int, height: int, device=None) -> Tensor:
        """[1, D, H, W] tokens of view ``i`` bilinearly upsampled to the render resolution."""
        g = self.grid(i, device)[None]
        return F.interpolate(g, size=(height, width), mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, root: str | Path | None, views, backbone, *, long_side: int = 448, backbone_name: str = "",
              batch_size: int = 4, progress: bool = True, model: dict | None = None, chunk: int = 32,
              precision: str | None = None) -> "TargetCache":
        """The targets of ``views`` (list of ``View``): each view's tokens read from the token cache at ``root``
        (``fit3d.models.tokens``; None: no cache) or computed there. ``model``:
        ``fit3d.models.identity.model_identity`` of the weights (the cache key; else ``backbone_name``). ``chunk``
        views are resized and run at a time (memory bounded whatever the number of views). ``precision``: the
        features' dtype (``fit3d.device.resolve_precision``; None: the backbone's default), part of the cache key."""
        p = backbone.patch_size
        W, H = backbone_input_size(views[0].width, views[0].height, long_side, p)
        device = getattr(backbone, "device", "cpu")
        what = token_key(model if model else {"backbone": backbone_name}, None, device, precision=precision)
        cache = TokenCache(root)
        grids, computed = None, 0
        from tqdm import tqdm

        for s in tqdm(range(0, len(views), chunk), desc="backbone features", disable=not progress, leave=False,
                      unit=f"{chunk} views"):  # a chunk of images in memory at a time
            images = backbone_images(views[s:s + chunk], long_side, p, (W, H))
            got = cache.get(what, [image_id(im) for im in images], lambda idx: extract_features(
                backbone, [images[i] for i in idx], batch_size, device=device, progress=False, precision=precision))
            if tuple(got.patch.shape[-2:]) != (H // p, W // p):
                raise RuntimeError(f"backbone returned a {tuple(got.patch.shape[-2:])} grid, expected "
                                   f"{(H // p, W // p)}")
            if grids is None:
                grids = np.empty((len(views), *got.patch.shape[1:]), np.float16)
            grids[s:s + len(images)] = got.patch.numpy()  # float16, as the targets always were
            computed += got.computed
        return cls([v.name for v in views], grids, computed)


def token_root(cache_dir: str | None, out: Path) -> Path | None:
    """The token cache folder of a lift into ``out``: ``cache_dir`` ('none': no cache), else ``out/cache``."""
    if cache_dir and cache_dir.lower() == "none":
        return None
    return Path(cache_dir) if cache_dir else out / "cache"


def lifted_targets(lift_dir: str | Path) -> TargetCache:
    """The targets of a finished lift folder (its ``lift.json``: scene, views, backbone, ``feature_size`` and
    token cache), read back from the token cache; views missing there are computed again (the backbone loads)."""
    from fit3d.data import read_scene
    from fit3d.io import read_json_dict
    from fit3d.lift.config import LiftConfig
    from fit3d.models import load_backbone

    meta = read_json_dict(Path(lift_dir) / "lift.json", "lifted scene record", keys=("scene", "config"))
    cfg, sc = meta["config"], meta["scene"]
    names = set(sc["train_views"]) | set(sc["heldout_views"])
    scene = read_scene(sc["path"], layout=sc.get("layout") or "auto", names=lambda n: n in names)
    root = token_root(cfg.get("cache_dir"), Path(lift_dir))
    backbone = load_backbone(cfg.get("backbone", LiftConfig.backbone), model_path=cfg.get("model_path"), device="cpu")
    return TargetCache.build(root, scene.views, backbone,
                             long_side=int(cfg.get("feature_size", LiftConfig.feature_size)), backbone_name=backbone.name,
                             progress=False, model=(meta.get("settings") or {}).get("model"),
                             precision=(meta.get("settings") or {}).get("precision"))
