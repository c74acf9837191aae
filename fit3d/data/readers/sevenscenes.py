"""7-Scenes / TUM-style RGB-D folder (e.g. ``shared/data/7scenes-redkitchen``).

On-disk layout, one folder, all files side by side::

    camera-intrinsics.txt        3x3 K as text (fx 0 cx / 0 fy cy / 0 0 1), shared by colour and depth
    frame-XXXXXX.color.jpg       RGB (.png also accepted); XXXXXX is the zero-padded frame number
    frame-XXXXXX.depth.png       uint16 depth in millimetres, 0 (and 65535) = invalid   [optional]
    frame-XXXXXX.pose.txt        4x4 camera-to-world, metres, OpenCV axes (x right, y down, z forward)
    frame-XXXXXX.label.png       uint8 / uint16 semantic class ids                       [optional]

View names are ``frame-XXXXXX``, ordered by frame number. Depth is optional as a whole (no
``.depth.png`` anywhere: views without depth); once any frame has one, every frame must. Depth must
have the colour image's size (a different size with the same aspect ratio is resized, nearest). The one
K is for the size most colour frames have; a frame of another size with the same aspect ratio gets K
rescaled, one of another aspect ratio is an error naming it. 8-bit depth PNGs are refused.
The scene has no 3D points: lifting back-projects depth itself.
"""

from __future__ import annotations

from pathlib import Path

from fit3d.data.readers.common import (NameFilter, Names, check_resolution, fit_to, frame_number, intrinsics_for,
                                       make_view, read_depth, read_labels, read_matrix, read_rgb, reference_size,
                                       require_file)
from fit3d.data.scene import Scene, check_intrinsics, check_pose
from fit3d.errors import SceneError

NAME = "7scenes"
HINT = "7scenes (frame-XXXXXX.color.jpg, frame-XXXXXX.pose.txt, camera-intrinsics.txt)"
_COLOR_SUFFIXES = (".color.jpg", ".color.png")


def detect(path: Path) -> bool:
    return any(path.glob("frame-*.color.jpg")) or any(path.glob("frame-*.color.png"))


def _color_files(path: Path) -> dict[str, Path]:
    """``{"frame-XXXXXX": colour file}``."""
    out = {}
    for suffix in _COLOR_SUFFIXES:
        for f in path.glob(f"frame-*{suffix}"):
            out.setdefault(f.name[: -len(suffix)], f)
    return out


def read(path, resolution=None, names: Names = None, load_depth: bool = True) -> Scene:
    path, resolution = Path(path), check_resolution(resolution)
    colors = _color_files(path)
    select = NameFilter(names)
    select.check_found(colors, path)
    chosen = sorted((n for n in colors if select(n)), key=lambda n: (frame_number(n), n))
    if not chosen:
        raise SceneError(f"{path}: scene has no views" + (" (none selected)" if colors else ""))
    K = check_intrinsics(read_matrix(require_file(path / "camera-intrinsics.txt", "intrinsics file"),
                                     (3, 3), "intrinsics"), str(path / "camera-intrinsics.txt"))
    has_depth = load_depth and any(path.glob("frame-*.depth.png"))
    ref = reference_size(colors[n] for n in chosen)
    views = []
    for name in chosen:
        pose_file = path / f"{name}.pose.txt"
        c2w = check_pose(read_matrix(pose_file, (4, 4), "pose"), str(pose_file))
        image = read_rgb(colors[name])
        h, w = image.shape[:2]
        extra = {}
        if has_depth:
            depth_file = path / f"{name}.depth.png"
            extra["depth"] = fit_to(read_depth(depth_file), w, h, "depth", depth_file)
        label_file = path / f"{name}.label.png"
        if label_file.exists():
            extra["labels"] = fit_to(read_labels(label_file), w, h, "labels", label_file)
        K_view = intrinsics_for(K, ref, (w, h), colors[name])
        views.append(make_view(image, K_view, c2w, name, resolution, colors[name], **extra))
    return Scene(name=path.resolve().name, views=views, source=str(path), meta={"layout": NAME})
