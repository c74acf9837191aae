"""Shared test helpers: a tiny deterministic backbone and on-disk fixtures in the probe layouts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class PoolBackbone:
    """Stand-in for a ViT: 4x4 average-pooled colour plus fixed random non-linear features.

    features(images [B, 3, H, W]) -> (patch [B, 16, H/4, W/4], cls [B, 16]).
    """

    patch_size = 4
    embed_dim = cls_dim = 16

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(10, 3, generator=g)

    def features(self, images, layers=None):
        p = F.avg_pool2d(images.float(), self.patch_size)  # [B, 3, h, w]
        extra = torch.sin(3 * torch.einsum("kc,bchw->bkhw", self.proj, p))
        feat = torch.cat([p, p ** 2, extra], 1)
        return feat, feat.mean((2, 3))


def write_7scenes(root: Path, frames, size=(64, 48), seed=0, labels=False) -> Path:
    """A 7-Scenes-layout folder: a camera translating sideways in front of a wall with boxes; colour
    encodes depth (so a probe can learn depth from colour)."""
    root.mkdir(parents=True, exist_ok=True)
    W, H = size
    f = 0.9 * W
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    np.savetxt(root / "camera-intrinsics.txt", K)
    rng = np.random.default_rng(seed)
    for n in frames:
        depth = np.full((H, W), 3.0, np.float32)
        for _ in range(3):
            x0, y0 = rng.integers(0, W - 12), rng.integers(0, H - 12)
            depth[y0:y0 + rng.integers(8, 20), x0:x0 + rng.integers(8, 24)] = rng.uniform(1.0, 2.5)
        rgb = np.stack([depth / 3.0, 1 - depth / 3.0, 0.5 * np.ones_like(depth)], -1)
        rgb = np.clip(rgb + rng.normal(0, 0.02, rgb.shape), 0, 1)
        name = f"frame-{n:06d}"
        cv2.imwrite(str(root / f"{name}.color.png"), (rgb[..., ::-1] * 255).astype(np.uint8))
        cv2.imwrite(str(root / f"{name}.depth.png"), (depth * 1000).astype(np.uint16))
        c2w = np.eye(4)
        c2w[0, 3] = 0.01 * n
        np.savetxt(root / f"{name}.pose.txt", c2w)
        if labels:
            lab = (depth < 2.99).astype(np.uint8) + (depth < 1.75).astype(np.uint8)  # 3 classes
            cv2.imwrite(str(root / f"{name}.label.png"), lab)
    return root


def write_png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3:
        Image.fromarray(arr.astype(np.uint8)).save(path)
    elif palette:
        im = Image.fromarray(arr.astype(np.uint8), mode="P")
        im.putpalette([c for i in range(256) for c in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
        im.save(path)
    else:
        Image.fromarray(arr).save(path)


def rgb(h=24, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
