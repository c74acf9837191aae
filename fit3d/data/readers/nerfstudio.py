"""nerfstudio ``transforms.json`` (the form FiT3D reads ScanNet++ DSLR in).

On-disk layout: a folder holding ``transforms.json`` (or the path of any ``*.json`` in that form)::

    {
      "camera_model": "OPENCV" | "OPENCV_FISHEYE" | "PINHOLE" | "SIMPLE_PINHOLE",  (default OPENCV)
      "fl_x": 500.0, "fl_y": 500.0, "cx": 320.0, "cy": 240.0, "w": 640, "h": 480,
      "k1": 0, "k2": 0, "p1": 0, "p2": 0,        OPENCV (k3 also read if present)
      "k1": 0, "k2": 0, "k3": 0, "k4": 0,        OPENCV_FISHEYE
      "depth_unit_scale_factor": 0.001,          (optional; metres per unit of integer depth PNGs)
      "ply_file_path": "sparse_pc.ply",          (optional; vertices x, y, z [, red, green, blue])
      "frames": [
        {"file_path": "images/frame_00001.jpg",
         "transform_matrix": [[...4x4 camera-to-world, OpenGL camera axes...]],
         "depth_file_path": "depth/frame_00001.png",   (optional; uint16 PNG or float .npy metres)
         "mask_path": "masks/frame_00001.png",         (optional; 0 = ignore pixel)
         "fl_x": ..., "w": ..., "k1": ...,             (optional per-frame camera, overrides global)
         "is_bad": false},                             (optional; true frames are skipped, warned)
        ...],
      "test_frames": [...]                              (optional, ScanNet++; read like frames)
    }

Paths are relative to the JSON's folder; a bare file name that is not found there is also looked up
in ``images/`` and, for ScanNet++ DSLR (``dslr/nerfstudio/transforms.json``), in ``../resized_images/``
(images) and ``../resized_anon_masks/`` (masks).

Conversion: ``transform_matrix`` is camera-to-world in OpenGL axes (x right, y up, z back); the view's
``c2w`` flips its camera y and z axes to OpenCV (x right, y down, z forward). ``w``/``h`` default to the
image size; an image of a different size with the same aspect ratio rescales K. Distorted cameras are
undistorted with OpenCV at load (see ``fit3d.data.readers.distortion``: fisheye with balance 0 and
principal point at the centre, as FiT3D does for ScanNet++ DSLR); depth and masks are resampled with
nearest neighbour through the same maps, and pixels with no source become invalid in ``View.mask``.
View names are the image file stems (relative paths without suffix if stems collide).
``meta["test_names"]`` lists the names of views from ``test_frames``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from fit3d.data.readers.common import (NameFilter, Names, check_resolution, fit_to, make_view, read_depth,
                                       read_mask, read_rgb, warn_outside)
from fit3d.data.readers.distortion import Undistorter
from fit3d.data.scene import Scene, check_intrinsics, check_pose
from fit3d.errors import SceneError

NAME = "nerfstudio"
HINT = "nerfstudio (transforms.json)"
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # right-multiply a c2w: flips camera y and z
_MODELS = ("OPENCV", "OPENCV_FISHEYE", "PINHOLE", "SIMPLE_PINHOLE")
_CAMERA_KEYS = ("camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2")


def detect(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".json") or (path / "transforms.json").is_file()


def _resolve(root: Path, rel: str, fallbacks: tuple[str, ...]) -> Path:
    p = root / rel
    if p.exists() or Path(rel).parent != Path("."):
        return p
    for d in fallbacks:
        q = root / d / rel
        if q.exists():
            return q
    return p  # missing: the caller's error names the primary location


def _camera(meta: dict, frame: dict, source: str):
    """(model, K [3, 3], dist [n], w | None, h | None) of one frame, per-frame keys overriding global."""
    cam = {k: frame.get(k, meta.get(k)) for k in _CAMERA_KEYS}
    model = str(cam["camera_model"] or "OPENCV").upper()
    if model not in _MODELS:
        raise SceneError(f"{source}: camera_model {model!r} is not supported (supported: {', '.join(_MODELS)})")
    missing = [k for k in ("fl_x", "cx", "cy") if cam[k] is None]
    if missing:
        raise SceneError(f"{source}: camera intrinsics missing {', '.join(missing)}")
    fy = cam["fl_y"] if cam["fl_y"] is not None else cam["fl_x"]
    try:
        K = np.array([[cam["fl_x"], 0, cam["cx"]], [0, fy, cam["cy"]], [0, 0, 1]], dtype=np.float64)
        g = {k: float(cam[k] or 0.0) for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    except (TypeError, ValueError) as e:
        raise SceneError(f"{source}: camera intrinsics are not numbers ({e})") from None
    K = check_intrinsics(K, source)
    if model == "OPENCV_FISHEYE":
        dist = np.array([g["k1"], g["k2"], g["k3"], g["k4"]])
    elif model == "OPENCV":
        dist = np.array([g["k1"], g["k2"], g["p1"], g["p2"], g["k3"]])
    else:
        dist = np.zeros(0)
    try:
        w = None if cam["w"] is None else int(cam["w"])
        h = None if cam["h"] is None else int(cam["h"])
    except (TypeError, ValueError):
        raise SceneError(f"{source}: camera size w / h must be integers, got {cam['w']!r} x {cam['h']!r}") from None
    if (w is not None and w <= 0) or (h is not None and h <= 0) or not np.isfinite(list(g.values())).all():
        raise SceneError(f"{source}: camera size must be positive and distortion finite (w={w}, h={h}, {g})")
    return model, K, dist, w, h


def _read_ply_points(path: Path):
    """([P, 3] float32 xyz, [P, 3] float32 rgb in [0, 1] or None) of a PLY's vertices."""
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"]
        xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    except FileNotFoundError:
        raise SceneError(f"{path}: point cloud (ply_file_path) is missing") from None
    except Exception as e:  # plyfile raises several types for corrupt files
        raise SceneError(f"{path}: point cloud is unreadable ({e})") from None
    names = v.data.dtype.names
    rgb = None
    if all(c in names for c in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.float32)
        rgb = rgb / 255.0 if rgb.max(initial=0) > 1 else rgb
    if not np.isfinite(xyz).all():
        raise SceneError(f"{path}: point cloud contains NaN or inf")
    return xyz, rgb


def read(path, resolution=None, names: Names = None, load_depth: bool = True) -> Scene:
    path, resolution = Path(path), check_resolution(resolution)
    json_file = path if path.is_file() else path / "transforms.json"
    root = json_file.parent
    if not json_file.is_file():
        raise SceneError(f"{json_file}: transforms file is missing")
    try:
        meta = json.loads(json_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SceneError(f"{json_file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise SceneError(f"{json_file}: has no 'frames' list")

    entries = []  # (frame dict, is_test, index in its list)
    for key, is_test in (("frames", False), ("test_frames", True)):
        for i, fr in enumerate(meta.get(key) or []):
            if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
                raise SceneError(f"{json_file}: {key}[{i}] needs 'file_path' and 'transform_matrix'")
            if not isinstance(fr["file_path"], str) or not isinstance(fr.get("depth_file_path") or "", str) \
                    or not isinstance(fr.get("mask_path") or "", str):
                raise SceneError(f"{json_file}: {key}[{i}]: file paths must be strings")
            if fr.get("is_bad", False):
                warnings.warn(f"{json_file}: skipping {fr['file_path']} (is_bad)", stacklevel=2)
                continue
            entries.append((fr, is_test, f"{key}[{i}]"))
    stems = [Path(fr["file_path"]).stem for fr, _, _ in entries]
    if len(set(stems)) != len(stems):
        stems = [str(Path(fr["file_path"]).with_suffix("")) for fr, _, _ in entries]

    select = NameFilter(names)
    select.check_found(stems, json_file)
    try:
        depth_scale = float(meta.get("depth_unit_scale_factor", 1e-3))
    except (TypeError, ValueError):
        raise SceneError(f"{json_file}: depth_unit_scale_factor must be a number") from None
    if not np.isfinite(depth_scale) or depth_scale <= 0:
        raise SceneError(f"{json_file}: depth_unit_scale_factor must be positive, got {depth_scale}")
    undistorters: dict[tuple, Undistorter] = {}
    views, test_names = [], []
    used: list[tuple[str, Path]] = []  # (where, file) of every file path read, checked for leaving the scene
    for (fr, is_test, where), name in zip(entries, stems):
        if not select(name):
            continue
        src = f"{json_file} {where}"
        model, K, dist, w, h = _camera(meta, fr, src)
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise SceneError(f"{src}: transform_matrix is not a numeric matrix") from None
        if m.shape == (3, 4):
            m = np.vstack([m, [0, 0, 0, 1]])
        c2w = check_pose(m, f"{src} transform_matrix") @ OPENGL_TO_OPENCV

        img_file = _resolve(root, fr["file_path"], ("images", "../resized_images"))
        used.append((f"{where}.file_path", img_file))
        image = read_rgb(img_file)
        ih, iw = image.shape[:2]
        w, h = w or iw, h or ih
        if (iw, ih) != (w, h):
            if abs((iw / ih) / (w / h) - 1) > 0.01:
                raise SceneError(f"{img_file}: image size {iw}x{ih} does not match the camera's {w}x{h} "
                                 f"in {json_file}")
            K = K.copy()
            K[0] *= iw / w
            K[1] *= ih / h
        extra = {}
        if load_depth and fr.get("depth_file_path"):
            depth_file = _resolve(root, fr["depth_file_path"], ())
            used.append((f"{where}.depth_file_path", depth_file))
            extra["depth"] = fit_to(read_depth(depth_file, depth_scale), iw, ih, "depth", depth_file)
        if fr.get("mask_path"):
            mask_file = _resolve(root, fr["mask_path"], ("masks", "../resized_anon_masks"))
            used.append((f"{where}.mask_path", mask_file))
            extra["mask"] = fit_to(read_mask(mask_file), iw, ih, "mask", mask_file)

        if model in ("OPENCV", "OPENCV_FISHEYE") and np.any(dist != 0):
            key = (model, K.tobytes(), dist.tobytes(), iw, ih)
            if key not in undistorters:
                undistorters[key] = Undistorter(K, dist, iw, ih, fisheye=model == "OPENCV_FISHEYE")
            und = undistorters[key]
            image, K = und.image(image), und.K_new
            extra = {k: und.nearest(a) for k, a in extra.items()}
            if not und.valid.all():
                extra["mask"] = und.valid if "mask" not in extra else extra["mask"] & und.valid
        views.append(make_view(image, K, c2w, name, resolution, img_file, **extra))
        if is_test:
            test_names.append(name)
    if not views:
        raise SceneError(f"{json_file}: scene has no views" + (" (none selected)" if entries else ""))

    points = rgb = None
    if meta.get("ply_file_path"):
        used.append(("ply_file_path", root / meta["ply_file_path"]))
        points, rgb = _read_ply_points(root / meta["ply_file_path"])
    # ScanNet++ DSLR keeps images beside the nerfstudio/ folder (../resized_images): its parent is the scene
    warn_outside(root.parent if root.name == "nerfstudio" else root, used, json_file)
    return Scene(name=root.resolve().name, views=views, points=points, points_rgb=rgb, source=str(json_file),
                 meta={"layout": NAME, "test_names": test_names})
