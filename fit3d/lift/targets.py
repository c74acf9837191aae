"""Stage 1 targets: the frozen backbone's patch tokens for every view, computed once and cached.

On disk: ``<cache>/<backbone>-<W>x<H>.npy`` (float16 [V, D, h, w], memory-mapped when read) and a
``.json`` beside it with the view names, backbone and input size (a mismatch recomputes). At use a
view's grid is bilinearly upsampled to the render resolution (FiT3D: "bilinearly upsampled to full
render resolution").
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fit3d.errors import Fit3DError
from fit3d.io import atomic_path, read_json, read_json_dict, write_json


def backbone_input_size(width: int, height: int, long_side: int, patch: int) -> tuple[int, int]:
    """(W', H'): the image scaled so its long side is ~``long_side``, both sides multiples of ``patch``."""
    s = long_side / max(width, height)
    return max(patch, round(width * s / patch) * patch), max(patch, round(height * s / patch) * patch)


class TargetCache:
    """Per-view target grids. ``grids`` [V, D, h, w] float16 (numpy memmap)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = read_json_dict(self.path.with_suffix(".json"), "target cache record", keys=("names",))
        try:
            self.grids = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:  # numpy: missing / truncated / not an .npy
            raise Fit3DError(f"{self.path}: target cache is unreadable or corrupt ({e}); delete it to "
                             f"recompute") from None
        self.names: list[str] = list(self.meta["names"])
        if self.grids.ndim != 4 or len(self.grids) != len(self.names):
            raise Fit3DError(f"{self.path}: target cache holds shape {self.grids.shape}, expected "
                             f"[{len(self.names)}, D, h, w] for the views its record lists; delete it to recompute")
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
    def build(cls, path: str | Path, views, backbone, *, long_side: int = 448, backbone_name: str = "",
              batch_size: int = 4, progress: bool = True, model: dict | None = None) -> "TargetCache":
        """Compute (or reuse, when names / backbone / size / ``model`` identity match) the cache for ``views``
        (list of ``View``). ``model``: ``fit3d.models.identity.model_identity`` of the weights."""
        path = Path(path)
        names = [v.name for v in views]
        W, H = backbone_input_size(views[0].width, views[0].height, long_side, backbone.patch_size)
        want = {"names": names, "backbone": backbone_name, "input_size": [W, H], **({"model": model} if model else {})}
        if path.exists() and path.with_suffix(".json").exists():
            try:
                meta = read_json(path.with_suffix(".json"))
                if all(meta.get(k) == v for k, v in want.items()):
                    return cls(path)
            except Fit3DError:  # unreadable or corrupt cache: recompute
                pass
        h, w = H // backbone.patch_size, W // backbone.patch_size
        from tqdm import tqdm

        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                            shape=(len(views), backbone.embed_dim, h, w))
            bar = tqdm(range(0, len(views), batch_size), desc="backbone features", disable=not progress,
                       unit="batch", leave=False)
            for s in bar:
                batch = [cv2.resize(v.image, (W, H), interpolation=cv2.INTER_AREA if W < v.width else cv2.INTER_LINEAR)
                         for v in views[s:s + batch_size]]
                x = torch.from_numpy(np.clip(np.stack(batch), 0, 1)).permute(0, 3, 1, 2).contiguous()
                patch, _ = backbone.features(x)  # [B, D, h, w]
                if tuple(patch.shape[-2:]) != (h, w):
                    raise RuntimeError(f"backbone returned a {tuple(patch.shape[-2:])} grid, expected {(h, w)}")
                out[s:s + len(batch)] = patch.float().cpu().numpy().astype(np.float16)
            out.flush()
            del out
        write_json(path.with_suffix(".json"), {**want, "grid": [h, w], "dim": backbone.embed_dim})
        return cls(path)
