"""Helpers for the data tests: small posed frames, blob images for undistortion checks, file writers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

W, H = 40, 30
K = np.array([[36.0, 0, 20.0], [0, 34.0, 15.0], [0, 0, 1]])


def random_c2w(rng: np.random.Generator, scale: float = 0.3) -> np.ndarray:
    """[4, 4] a rigid camera-to-world near the identity."""
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * scale).as_matrix()
    c2w[:3, 3] = rng.normal(size=3) * scale
    return c2w


def frames(n: int = 3, seed: int = 0, w: int = W, h: int = H):
    """n dicts: image uint8 [h, w, 3], depth_mm uint16 [h, w] (some 0), c2w [4, 4], labels uint16 [h, w]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        depth = rng.integers(500, 4000, size=(h, w)).astype(np.uint16)
        depth[0, :5] = 0
        out.append(dict(image=rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), depth_mm=depth,
                        c2w=random_c2w(rng), labels=rng.integers(0, 300, size=(h, w)).astype(np.uint16)))
    return out


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_gray(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), a)


def write_matrix(path: Path, m: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, m)


def blob_image(cam_from_img, w: int, h: int, center_xy, sigma: float) -> np.ndarray:
    """[h, w, 3] uint8 picture of a Gaussian blob that is round in *normalised* (undistorted) camera
    coordinates, centred at ``center_xy``, as seen through a possibly distorted camera.

    cam_from_img: maps [N, 2] pixel coordinates (centres at +0.5) to [N, 2] normalised coordinates
    (pycolmap's ``Camera.cam_from_img``, independent of the code under test).
    """
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xy = np.asarray(cam_from_img(np.stack([u.ravel(), v.ravel()], 1)), dtype=np.float64)
    assert np.isfinite(xy).all(), "distortion too strong to invert over the whole image"
    d2 = ((xy - np.asarray(center_xy)) ** 2).sum(1).reshape(h, w)
    g = np.exp(-d2 / (2 * sigma ** 2))
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def blob_centroid(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[2] intensity-weighted centroid (u, v) of a [H, W, 3] image, pixel centres at +0.5."""
    g = image.mean(axis=2).astype(np.float64)
    g = np.where(g > 0.1 * g.max(), g, 0)
    if mask is not None:
        g = g * mask
    v, u = np.mgrid[: g.shape[0], : g.shape[1]] + 0.5
    return np.array([(g * u).sum() / g.sum(), (g * v).sum() / g.sum()])


def project(K: np.ndarray, xy) -> np.ndarray:
    """[2] pixel of normalised coordinates ``xy`` through a pinhole K."""
    return (K @ np.array([xy[0], xy[1], 1.0]))[:2]
