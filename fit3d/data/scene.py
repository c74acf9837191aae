"""The data model: a ``View`` is one posed image, a ``Scene`` a named set of views.

Conventions: images are float32 RGB in [0, 1], shape [H, W, 3] (numpy); ``K`` is 3x3 pixel
intrinsics with pixel centres at +0.5 (OpenCV); ``c2w`` is a 4x4 camera-to-world rigid transform in
OpenCV camera axes (x right, y down, z forward); depth is metric (metres), 0 where invalid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from fit3d.errors import SceneError


def check_pose(c2w: np.ndarray, source: str = "pose", atol: float = 1e-3) -> np.ndarray:
    """Return ``c2w`` as float64 [4, 4]; raise ``SceneError`` naming ``source`` if not a rigid transform."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (4, 4):
        raise SceneError(f"{source}: pose must be 4x4, got shape {c2w.shape}")
    if not np.isfinite(c2w).all():
        raise SceneError(f"{source}: pose contains NaN or inf")
    R = c2w[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=atol) or abs(np.linalg.det(R) - 1.0) > atol:
        raise SceneError(f"{source}: pose rotation is not orthonormal with det +1 (not a rigid transform)")
    if not np.allclose(c2w[3], [0, 0, 0, 1], atol=1e-6):
        raise SceneError(f"{source}: pose last row must be [0, 0, 0, 1], got {c2w[3].tolist()}")
    return c2w


def check_intrinsics(K: np.ndarray, source: str = "intrinsics", size: tuple[int, int] | None = None) -> np.ndarray:
    """Return ``K`` as float64 [3, 3]; raise ``SceneError`` if malformed: not finite, focal lengths not
    positive, last row not [0, 0, 1], or (given the image ``size`` (W, H)) the principal point outside
    the image."""
    try:
        K = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneError(f"{source}: intrinsics are not numbers") from None
    if K.shape != (3, 3):
        raise SceneError(f"{source}: intrinsics must be 3x3, got shape {K.shape}")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise SceneError(f"{source}: intrinsics must be finite with positive focal lengths, got {K.tolist()}")
    if not np.allclose(K[2], [0, 0, 1], atol=1e-6) or abs(K[1, 0]) > 1e-6:
        raise SceneError(f"{source}: intrinsics must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
    if size is not None:
        w, h = size
        if not (0 <= K[0, 2] <= w and 0 <= K[1, 2] <= h):
            raise SceneError(f"{source}: principal point ({K[0, 2]:g}, {K[1, 2]:g}) lies outside the {w}x{h} "
                             f"image (intrinsics for another image size?)")
        fov = np.degrees(2 * np.arctan2([w / 2, h / 2], [K[0, 0], K[1, 1]]))
        if fov.max() > MAX_FOV_DEG:
            raise SceneError(f"{source}: focal lengths fx {K[0, 0]:g}, fy {K[1, 1]:g} give a {fov[0]:.1f} x "
                             f"{fov[1]:.1f} degree field of view on the {w}x{h} image; a pinhole camera sees less "
                             f"than {MAX_FOV_DEG:g} degrees (intrinsics for another image size, or a broken export?)")
    return K


MAX_FOV_DEG = 179.0  # beyond this a pinhole K is degenerate (fx -> 0): no real camera, rays nearly in the image plane


@dataclass
class View:
    """One posed image.

    image  [H, W, 3] float32 in [0, 1]
    K      [3, 3] float64 pixel intrinsics
    c2w    [4, 4] float64 camera-to-world (OpenCV axes)
    depth  [H, W] float32 metres, 0 = invalid (optional)
    labels [H, W] int64 semantic class ids, -1 / ignore = 255 by dataset convention (optional)
    mask   [H, W] bool, True = valid pixel (optional)
    """

    image: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    name: str = ""
    depth: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        src = self.name or "view"
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise SceneError(f"{src}: image must be [H, W, 3], got shape {img.shape}")
        if img.dtype == np.uint8:
            img = img.astype(np.float32) / 255.0
        self.image = img.astype(np.float32, copy=False)
        if not np.isfinite(self.image).all():
            raise SceneError(f"{src}: image contains NaN or inf")
        self.K = check_intrinsics(self.K, src, size=(self.image.shape[1], self.image.shape[0]))
        self.c2w = check_pose(self.c2w, src)
        for attr in ("depth", "labels", "mask"):
            a = getattr(self, attr)
            if a is None:
                continue
            a = np.asarray(a)
            if a.ndim != 2:
                raise SceneError(f"{src}: {attr} must be [H, W], got shape {a.shape}")
            if a.shape != self.image.shape[:2]:
                raise SceneError(f"{src}: {attr} size {tuple(a.shape)} does not match image size "
                                 f"{self.image.shape[:2]}")
            setattr(self, attr, a)
        if self.depth is not None:
            d = np.asarray(self.depth, dtype=np.float32)
            if not np.isfinite(d).all():
                raise SceneError(f"{src}: depth contains NaN or inf")
            if (d < 0).any():
                raise SceneError(f"{src}: depth contains negative values (0 marks invalid pixels)")
            self.depth = d
        if self.labels is not None:
            if not np.issubdtype(self.labels.dtype, np.integer):
                raise SceneError(f"{src}: labels must be integer class ids, got dtype {self.labels.dtype}")
            self.labels = self.labels.astype(np.int64, copy=False)
        if self.mask is not None:
            self.mask = self.mask.astype(bool, copy=False)

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def w2c(self) -> np.ndarray:
        """[4, 4] world-to-camera (the rasterizer's ``viewmat``)."""
        return np.linalg.inv(self.c2w)

    def unproject(self, pixels: np.ndarray, z: np.ndarray) -> np.ndarray:
        """World points [M, 3] float64 of pixel coordinates ``pixels`` [M, 2] (x, y; pixel centres at +0.5)
        at camera depths ``z`` [M] (metres)."""
        pixels, z = np.asarray(pixels, np.float64), np.asarray(z, np.float64)
        rays = np.concatenate([pixels, np.ones((len(pixels), 1))], 1) @ np.linalg.inv(self.K).T  # [M, 3]
        return (rays * z[:, None]) @ self.c2w[:3, :3].T + self.c2w[:3, 3]

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "View":
        """The window [x0, x0 + width) x [y0, y0 + height) of this view: image, depth, labels and mask cut,
        the principal point moved by (x0, y0) (the same camera, a smaller sensor)."""
        x0, y0, width, height = int(x0), int(y0), int(width), int(height)
        if x0 < 0 or y0 < 0 or width <= 0 or height <= 0 or x0 + width > self.width or y0 + height > self.height:
            raise SceneError(f"{self.name or 'view'}: window {width}x{height} at ({x0}, {y0}) is not inside its "
                             f"{self.width}x{self.height} image")
        if (x0, y0, width, height) == (0, 0, self.width, self.height):
            return self
        K = self.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        cut = lambda a: None if a is None else a[y0:y0 + height, x0:x0 + width]  # noqa: E731
        return replace(self, image=np.ascontiguousarray(cut(self.image)), K=K, depth=cut(self.depth),
                       labels=cut(self.labels), mask=cut(self.mask))

    def fitted(self, width: int, height: int) -> "View":
        """This view at ``width`` x ``height`` without distortion: the largest centred window of that aspect
        (:func:`aspect_window`), resized. A view already at the aspect (within a pixel) is only resized."""
        return self.cropped(*aspect_window(self.width, self.height, width / height)).resized(width, height)

    def resized(self, width: int, height: int) -> "View":
        """This view at ``width`` x ``height``: image area-/bilinear-resampled, K rescaled consistently
        (pixel centres at +0.5), depth / labels / mask resampled with nearest neighbour."""
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise SceneError(f"{self.name or 'view'}: cannot resize to {width}x{height}")
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx  # fx, skew, cx: with centres at +0.5, u' = sx * u maps the image edges exactly
        K[1, :] *= sy
        interp = cv2.INTER_AREA if sx < 1 and sy < 1 else cv2.INTER_LINEAR
        image = np.clip(cv2.resize(self.image, (width, height), interpolation=interp), 0, 1)
        return replace(self, image=image, K=K, depth=resize_nearest(self.depth, width, height),
                       labels=resize_nearest(self.labels, width, height),
                       mask=resize_nearest(self.mask, width, height))


def aspect_window(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """(x0, y0, w, h): the largest centred window of a ``width`` x ``height`` image whose aspect w / h is
    ``aspect``, in whole pixels; the whole image when its own aspect is that within one pixel (so an image
    already at the aspect is never cropped by rounding)."""
    if aspect <= 0:
        raise SceneError(f"aspect must be positive, got {aspect!r}")
    w, h = width, height
    if width > height * aspect + 1:  # too wide: keep the height
        w = max(1, int(round(height * aspect)))
    elif height > width / aspect + 1:  # too tall: keep the width
        h = max(1, int(round(width / aspect)))
    return (width - w) // 2, (height - h) // 2, w, h


def resize_nearest(a: np.ndarray | None, width: int, height: int) -> np.ndarray | None:
    """Nearest-neighbour resize of [H, W] ``a`` (any dtype) to [height, width], pixel centre to pixel centre.

    Hand-written with numpy indexing: cv2.INTER_NEAREST samples at ``floor(i * scale)`` (a half-pixel
    shift) and cv2.resize does not take int64 / bool arrays.
    """
    if a is None:
        return None
    h, w = a.shape[:2]
    if (w, h) == (width, height):
        return a
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)  # [height]
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)  # [width]
    return a[rows[:, None], cols[None, :]]


@dataclass
class Scene:
    """A named set of views, with optional initial 3D points.

    points        [P, 3] float32 world coordinates (e.g. COLMAP points3D) or None
    points_rgb    [P, 3] float32 in [0, 1] or None
    """

    name: str
    views: list[View]
    points: np.ndarray | None = None
    points_rgb: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.views) == 0:
            raise SceneError(f"{self.source or self.name}: scene has no views")

    def __len__(self) -> int:
        return len(self.views)

    def resized(self, width: int, height: int) -> "Scene":
        return replace(self, views=[v.resized(width, height) for v in self.views])

    def subset(self, indices) -> "Scene":
        return replace(self, views=[self.views[i] for i in indices])

    def select(self, predicate) -> "Scene":
        """Views whose name satisfies ``predicate(name)``."""
        return replace(self, views=[v for v in self.views if predicate(v.name)])
