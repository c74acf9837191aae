"""Inputs for the ``fit3d prepare`` tests: photos and videos written with OpenCV / Pillow at small sizes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SIZE = (320, 240)  # W, H of the test frames: SIFT at this size keeps a structure-from-motion run to seconds


def scene_frames(folder: Path, indices, size=SIZE) -> list[np.ndarray]:
    """The colour frames ``frame-NNNNNN.color.jpg`` of a 7-Scenes-style folder, resized to ``size``."""
    out = []
    for i in indices:
        im = cv2.imread(str(folder / f"frame-{i:06d}.color.jpg"))
        out.append(cv2.resize(im, size, interpolation=cv2.INTER_AREA))
    return out


def noise_image(seed: int, size=SIZE) -> np.ndarray:
    """A textured image no other image shares: smoothed random noise, BGR uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 256, (size[1] // 4, size[0] // 4, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(im, size, interpolation=cv2.INTER_CUBIC), (3, 3), 0)


def scene_poses(folder: Path, names, index) -> dict[str, np.ndarray]:
    """``{name: c2w}`` of the 7-Scenes-style folder's frame ``index(name)`` for each name."""
    return {n: np.loadtxt(folder / f"frame-{index(n):06d}.pose.txt") for n in names}
