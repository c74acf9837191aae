"""Helpers shared by the scene readers: file loading with errors that name the file, view selection,
resizing on load."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from fit3d.data.scene import View, resize_nearest
from fit3d.errors import SceneError

Names = Iterable[str] | Callable[[str], bool] | None


def frame_number(name: str) -> int:
    """The frame index in a view name: the last run of digits ("frame-000123" -> 123, "123" -> 123,
    "DSC01752" -> 1752, "seq-01/frame-000010" -> 10)."""
    digits = re.findall(r"\d+", Path(str(name)).name)
    if not digits:
        raise SceneError(f"view name {name!r} holds no frame number")
    return int(digits[-1])


class NameFilter:
    """Selects view names before their files are read: ``names`` is None (all), a predicate, or an
    iterable of names (each must exist, checked by ``check_found``)."""

    def __init__(self, names: Names):
        self.predicate = names if callable(names) else None
        self.wanted = None if names is None or callable(names) else {str(n) for n in names}

    def __call__(self, name: str) -> bool:
        if self.predicate is not None:
            return bool(self.predicate(name))
        return self.wanted is None or name in self.wanted

    def check_found(self, found: Iterable[str], source: Path) -> None:
        if self.wanted is None:
            return
        missing = sorted(self.wanted - set(found))
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise SceneError(f"{source}: requested views not found: {', '.join(missing[:5])}{more}")


def check_resolution(resolution) -> tuple[int, int] | None:
    """``None`` or a validated ``(W, H)`` of positive ints."""
    if resolution is None:
        return None
    try:
        w, h = (int(x) for x in resolution)
    except (TypeError, ValueError):
        raise SceneError(f"resolution must be (W, H), got {resolution!r}") from None
    if w <= 0 or h <= 0:
        raise SceneError(f"resolution must be positive, got {resolution!r}")
    return w, h


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SceneError(f"{path}: {what} is missing")
    return path


def _read_bytes(path: Path, what: str) -> bytes:
    require_file(path, what)
    try:
        return path.read_bytes()
    except OSError as e:
        raise SceneError(f"{path}: {what} is unreadable ({e.strerror or e})") from None


def _check_complete(data: bytes, path: Path, what: str) -> None:
    """``SceneError`` if a JPEG / PNG is truncated. OpenCV decodes a truncated JPEG partially (grey
    below the cut) with only a libjpeg warning on stderr, so the end markers are checked here."""
    if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-4096:]:
        raise SceneError(f"{path}: {what} is truncated or corrupt (JPEG without its end marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise SceneError(f"{path}: {what} is truncated or corrupt (PNG without its IEND chunk)")


def decode_image(path: Path, what: str, flags: int) -> np.ndarray:
    """``cv2.imdecode`` of the file at ``path``, strictly: a missing, truncated or undecodable file is a
    ``SceneError`` naming it."""
    data = _read_bytes(path, what)
    _check_complete(data, path, what)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if img is None:
        raise SceneError(f"{path}: {what} is unreadable (not a valid image file)")
    return img


def read_rgb(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an image file; ``SceneError`` naming the file if missing, truncated or
    unreadable."""
    img = decode_image(path, "image", cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_single_channel(path: Path, what: str) -> np.ndarray:
    """[H, W] array of a single-channel image (PNG uint8 / uint16) or a ``.npy`` file, dtype kept."""
    require_file(path, what)
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path)
        except Exception as e:  # numpy raises several types for a corrupt file
            raise SceneError(f"{path}: {what} is unreadable ({e})") from None
    else:
        a = decode_image(path, what, cv2.IMREAD_UNCHANGED)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise SceneError(f"{path}: {what} must be single-channel, got shape {a.shape}")
    return a


def read_depth(path: Path, scale: float = 1e-3) -> np.ndarray:
    """[H, W] float32 metres. Integer images (uint16 PNG) are multiplied by ``scale`` (mm -> m by
    default); float ``.npy`` files are taken as metres. Non-finite, negative and 65535 (Kinect
    "no reading") values become 0 = invalid."""
    a = read_single_channel(path, "depth")
    check_depth_dtype(a, path)
    if np.issubdtype(a.dtype, np.integer):
        invalid = a == np.iinfo(a.dtype).max if a.dtype == np.uint16 else np.zeros(a.shape, bool)
        d = a.astype(np.float32) * np.float32(scale)
        d[invalid] = 0
    else:
        d = a.astype(np.float32)
        d[~np.isfinite(d) | (d < 0)] = 0
    return d


def check_depth_dtype(a: np.ndarray, path: Path) -> None:
    """``SceneError`` for depth that cannot be metric: an 8-bit (or boolean) image holds at most 255 units
    (25 cm in millimetres): a visualisation or a mask saved as depth, never a depth map."""
    if a.dtype in (np.uint8, np.int8, np.bool_):
        raise SceneError(f"{path}: depth image is 8-bit ({a.dtype}); depth must be a 16-bit PNG (integer units, "
                         f"millimetres by default) or a float .npy in metres. An 8-bit image is a visualisation or "
                         f"a mask, not depth")


def header_size(path: Path) -> tuple[int, int] | None:
    """(W, H) of an image file from its header (Pillow reads no pixels); None when it cannot tell (the full
    read then names the problem)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # Pillow raises several types for a damaged or foreign file
        return None


def reference_size(files: Iterable[Path]) -> tuple[int, int] | None:
    """The image size most of ``files`` have (ties: the first such file's): the size a layout's one K is for."""
    from collections import Counter

    sizes = [s for s in (header_size(f) for f in files) if s is not None]
    return Counter(sizes).most_common(1)[0][0] if sizes else None


def intrinsics_for(K: np.ndarray, ref: tuple[int, int] | None, size: tuple[int, int], source: Path,
                   tol: float = 0.01) -> np.ndarray:
    """``K`` (for images of ``ref`` (W, H)) for an image of ``size``: rescaled when the aspect ratios agree
    within ``tol`` (the same field of view at another resolution), a ``SceneError`` naming ``source`` when not."""
    if ref is None or tuple(size) == tuple(ref):
        return K
    (w, h), (rw, rh) = size, ref
    if abs((w / h) / (rw / rh) - 1) > tol:
        raise SceneError(f"{source}: image size {w}x{h} has another aspect ratio than the scene's other frames "
                         f"({rw}x{rh}), which the intrinsics describe; crop or resize it to {rw}x{rh}")
    K = K.copy()
    K[0] *= w / rw
    K[1] *= h / rh
    return K


def read_labels(path: Path) -> np.ndarray:
    """[H, W] int64 semantic class ids from a single-channel uint8 / uint16 PNG."""
    a = read_single_channel(path, "labels")
    if not np.issubdtype(a.dtype, np.integer):
        raise SceneError(f"{path}: labels must be integer class ids, got dtype {a.dtype}")
    return a.astype(np.int64)


def read_mask(path: Path) -> np.ndarray:
    """[H, W] bool, True = valid, from an image where 0 marks pixels to ignore."""
    a = decode_image(path, "mask", cv2.IMREAD_UNCHANGED)
    if a.ndim == 3:
        a = a[..., 0]
    return a > 0


def read_matrix(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    """A whitespace-separated text matrix of ``shape`` as float64 (``inf`` / ``nan`` parse)."""
    m = load_text_matrix(path, what)
    if m.shape != shape:
        raise SceneError(f"{path}: {what} must be {shape[0]}x{shape[1]}, got shape {m.shape}")
    return m


def load_text_matrix(path: Path, what: str) -> np.ndarray:
    """[r, c] float64 of a whitespace-separated text matrix; ``SceneError`` naming the file when it is
    missing, empty, ragged or not text."""
    require_file(path, what)
    if not path.read_bytes().strip():
        raise SceneError(f"{path}: {what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # numpy only warns for an empty file
            m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError, UserWarning) as e:
        raise SceneError(f"{path}: {what} is unreadable ({str(e).splitlines()[0] if str(e) else 'empty file'})") \
            from None
    if m.size == 0:
        raise SceneError(f"{path}: {what} is empty")
    return m


def inside(root: Path, target: Path) -> bool:
    """Does ``target`` resolve to a path inside folder ``root`` (symlinks followed)?"""
    try:
        Path(os.path.realpath(target)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False


def warn_outside(root: Path, paths: list[tuple[str, Path]], source: Path) -> None:
    """One warning naming ``source`` for the ``(where, path)`` entries that leave folder ``root``."""
    out = [f"{where} -> {p}" for where, p in paths if not inside(root, p)]
    if out:
        warnings.warn(f"{source}: {len(out)} path(s) point outside {root}: {'; '.join(out[:3])}"
                      f"{' ...' if len(out) > 3 else ''}", stacklevel=3)


def fit_to(a: np.ndarray, width: int, height: int, what: str, source: Path, tol: float = 0.01) -> np.ndarray:
    """``a`` [h, w] resized (nearest) to [height, width] when both cover the same field of view (aspect
    ratios within ``tol``); a ``SceneError`` naming ``source`` otherwise."""
    h, w = a.shape[:2]
    if (w, h) == (width, height):
        return a
    if abs((w / h) / (width / height) - 1) > tol:
        raise SceneError(f"{source}: {what} size {w}x{h} does not match image size {width}x{height}")
    return resize_nearest(a, width, height)


def make_view(image, K, c2w, name: str, resolution: tuple[int, int] | None, source: Path, **extra) -> View:
    """A validated ``View`` (``source`` named in errors), resized to ``resolution`` if given."""
    try:
        view = View(image=image, K=K, c2w=c2w, name=name, **extra)
    except SceneError as e:
        raise SceneError(f"{source}: {e}") from None
    return view.resized(*resolution) if resolution is not None else view
