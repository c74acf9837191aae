"""ScanNet exported frames (the SensReader export), also what ``fit3d generate`` writes.

On-disk layout::

    scene/
      color/N.jpg | N.png            RGB; N is the frame number (names need not be zero-padded)
      depth/N.png                    uint16 depth in millimetres, 0 = invalid               [optional]
      pose/N.txt                     4x4 camera-to-world, metres, OpenCV axes; all -inf = invalid pose
      intrinsic/intrinsic_color.txt  4x4 (or 3x3) K of the colour images
      intrinsic/intrinsic_depth.txt  4x4 K of the depth images           [optional, kept in meta only]
      label-filt/N.png               uint8 / uint16 semantic class ids                      [optional]
      classes.json                   names of the label ids              [optional, -> meta["classes"]]

View names are ``N`` (the colour file stem), ordered by frame number.

Colour and depth sizes (ScanNet: 1296x968 colour, 640x480 depth): when ``depth/`` has files, every view
is on the *depth* grid: colour is area-resampled down to the depth size and ``intrinsic_color`` is
rescaled to it (x and y separately). This keeps depth exact (no upsampled nearest-neighbour depth),
keeps memory at the depth size, and is the usual ScanNet practice; the grid is the same whether or not
``load_depth`` is set. The sizes must have the same aspect ratio within 1% (ScanNet's differ by 0.4%).
``intrinsic_color`` is for the colour size most frames have: a frame of another size with the same aspect
ratio gets it rescaled, one of another aspect ratio is an error naming it.
Labels are resampled (nearest) to the grid. Without ``depth/`` the grid is the colour size.

A pose file holding -inf (ScanNet's "tracking lost") skips its frame with one warning for all such
frames; any other non-finite or non-rigid pose is a ``SceneError`` naming the file.
``classes.json`` (a list of names indexed by label id, ``{id: name}``, or either wrapped as
``{"classes": ...}`` as ``fit3d generate`` writes it) goes to ``meta["classes"]`` unwrapped, a dict with
integer-like keys getting int keys.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np

from fit3d.data.readers.common import (NameFilter, Names, check_resolution, fit_to, frame_number, intrinsics_for,
                                       load_text_matrix, make_view, read_depth, read_labels, read_rgb, reference_size)
from fit3d.data.scene import Scene, check_intrinsics, check_pose
from fit3d.errors import SceneError

NAME = "scannet"
HINT = "scannet (color/, pose/, intrinsic/intrinsic_color.txt)"
_COLOR_SUFFIXES = (".jpg", ".png", ".jpeg")


def detect(path: Path) -> bool:
    return (path / "color").is_dir() and (path / "pose").is_dir()


def _read_K(path: Path) -> np.ndarray:
    """[3, 3] from a 4x4 or 3x3 text matrix."""
    m = load_text_matrix(path, "intrinsics file")
    if m.shape not in ((3, 3), (4, 4)):
        raise SceneError(f"{path}: intrinsics must be 4x4 or 3x3, got shape {m.shape}")
    return check_intrinsics(m[:3, :3], str(path))


def _read_pose(path: Path) -> np.ndarray | None:
    """[4, 4] c2w, or None if ScanNet marked it invalid (-inf and no NaN)."""
    m = load_text_matrix(path, "pose")
    if np.isneginf(m).any() and not np.isnan(m).any():
        return None
    if m.shape != (4, 4):
        raise SceneError(f"{path}: pose must be 4x4, got shape {m.shape}")
    return check_pose(m, str(path))


def _read_classes(path: Path):
    try:
        classes = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: not valid JSON ({e})") from None
    if isinstance(classes, dict) and set(classes) == {"classes"}:  # {"classes": [...]} (fit3d generate)
        classes = classes["classes"]
    if isinstance(classes, dict) and all(str(k).lstrip("-").isdigit() for k in classes):
        classes = {int(k): v for k, v in classes.items()}
    return classes


def read(path, resolution=None, names: Names = None, load_depth: bool = True) -> Scene:
    path, resolution = Path(path), check_resolution(resolution)
    colors = {}
    for f in (path / "color").iterdir() if (path / "color").is_dir() else ():
        if f.suffix.lower() in _COLOR_SUFFIXES:
            colors.setdefault(f.stem, f)
    select = NameFilter(names)
    select.check_found(colors, path)
    chosen = sorted((n for n in colors if select(n)), key=lambda n: (frame_number(n), n))
    if not chosen:
        raise SceneError(f"{path}: scene has no views" + (" (none selected)" if colors else ""))
    K_color = _read_K(path / "intrinsic" / "intrinsic_color.txt")
    meta = {"layout": NAME}
    if (path / "intrinsic" / "intrinsic_depth.txt").is_file():
        meta["intrinsic_depth"] = _read_K(path / "intrinsic" / "intrinsic_depth.txt")
    if (path / "classes.json").is_file():
        meta["classes"] = _read_classes(path / "classes.json")

    poses, invalid = {}, []
    for name in chosen:
        pose = _read_pose(path / "pose" / f"{name}.txt")
        if pose is None:
            invalid.append(name)
        else:
            poses[name] = pose
    if invalid:
        warnings.warn(f"{path}: skipping {len(invalid)} frame(s) with an invalid (-inf) pose: "
                      f"{', '.join(invalid[:10])}{' ...' if len(invalid) > 10 else ''}", stacklevel=2)
    if not poses:
        raise SceneError(f"{path}: scene has no views (every selected frame has an invalid pose)")

    has_depth = (path / "depth").is_dir() and any((path / "depth").glob("*.png"))
    grid = None  # (W, H) of every view: the depth size if there is depth
    if has_depth:
        first = path / "depth" / f"{next(iter(poses))}.png"
        d = read_depth(first)
        grid = (d.shape[1], d.shape[0])
    ref = reference_size(colors[n] for n in poses)  # the colour size intrinsic_color describes
    views = []
    for name, c2w in poses.items():
        image = read_rgb(colors[name])
        h, w = image.shape[:2]
        K = intrinsics_for(K_color, ref, (w, h), colors[name])
        if grid is not None and grid != (w, h):
            gw, gh = grid
            if abs((w / h) / (gw / gh) - 1) > 0.01:
                raise SceneError(f"{colors[name]}: colour size {w}x{h} and depth size {gw}x{gh} have "
                                 f"different aspect ratios")
            image = cv2.resize(image, grid, interpolation=cv2.INTER_AREA if gw < w else cv2.INTER_LINEAR)
            K = K.copy()
            K[0] *= gw / w
            K[1] *= gh / h
            w, h = grid
        extra = {}
        if has_depth and load_depth:
            depth_file = path / "depth" / f"{name}.png"
            extra["depth"] = fit_to(read_depth(depth_file), w, h, "depth", depth_file)
        label_file = path / "label-filt" / f"{name}.png"
        if label_file.is_file():
            extra["labels"] = fit_to(read_labels(label_file), w, h, "labels", label_file)
        views.append(make_view(image, K, c2w, name, resolution, colors[name], **extra))
    return Scene(name=path.resolve().name, views=views, source=str(path), meta=meta)
