"""COLMAP sparse reconstruction with its images, read with ``pycolmap``.

On-disk layout (the model folder is the first of ``sparse/0/``, ``sparse/``, ``colmap/sparse/0/``,
``colmap/``, the scene folder itself, that holds ``cameras`` and ``images`` files)::

    scene/
      images/                       the images, named as in the model (subfolders allowed)
      sparse/0/                     the model, text or binary (both read by pycolmap):
        cameras.txt | cameras.bin     camera models and parameters
        images.txt  | images.bin      per image: world-to-camera quaternion + translation, camera id, name
        points3D.txt | points3D.bin   3D points with RGB colour (the scene's initial points)
        rigs.*, frames.*              (COLMAP >= 3.12, optional)

The images folder is the first of ``images/`` in the scene folder, next to the model folder, or
``resized_images/`` (ScanNet++ DSLR) that exists.

Conversion: COLMAP stores world-to-camera in OpenCV camera axes; ``c2w`` is its inverse. COLMAP's
pixel convention (centres at +0.5) is fit3d's, so K is taken as is. Camera models SIMPLE_PINHOLE and
PINHOLE are used directly; SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV and OPENCV_FISHEYE are
undistorted with OpenCV at load (see ``fit3d.data.readers.distortion``), pixels with no source marked
invalid in ``View.mask``; other models raise ``SceneError``. Only registered images (with a pose) are
read. View names are image names without the file suffix, ordered by name. No depth is read
(``load_depth`` is ignored). ``Scene.points`` / ``points_rgb`` are the points3D (None if there are none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fit3d.data.readers.common import NameFilter, Names, check_resolution, make_view, read_rgb, warn_outside
from fit3d.data.readers.distortion import Undistorter
from fit3d.data.scene import Scene, check_intrinsics, check_pose
from fit3d.errors import SceneError

NAME = "colmap"
HINT = "colmap (sparse/0/cameras.bin|txt and images.bin|txt, with images/)"
_MODEL_DIRS = ("sparse/0", "sparse", "colmap/sparse/0", "colmap", ".")
_IMAGE_DIRS = ("images", "resized_images")


def _is_model(d: Path) -> bool:
    return any((d / f"cameras.{e}").is_file() for e in ("bin", "txt")) and \
        any((d / f"images.{e}").is_file() for e in ("bin", "txt"))


def find_model_dir(path: Path) -> Path | None:
    for sub in _MODEL_DIRS:
        if _is_model(path / sub):
            return path / sub
    return None


def detect(path: Path) -> bool:
    return path.is_dir() and find_model_dir(path) is not None


def _find_image_dir(path: Path, model_dir: Path) -> Path:
    bases = [path, model_dir, model_dir.parent, model_dir.parent.parent]
    for base in bases:
        for sub in _IMAGE_DIRS:
            if (base / sub).is_dir():
                return base / sub
    raise SceneError(f"{path}: no images folder found (looked for {' or '.join(_IMAGE_DIRS)} in the scene "
                     f"folder and next to the model {model_dir})")


def camera_to_opencv(camera, source: str):
    """(K [3, 3], dist [n], fisheye) of a pycolmap ``Camera``; OpenCV distortion coefficients."""
    model, p = camera.model.name, np.asarray(camera.params, dtype=np.float64)
    if model == "SIMPLE_PINHOLE":
        f, cx, cy = p
        fx = fy = f
        dist = np.zeros(0)
    elif model == "PINHOLE":
        fx, fy, cx, cy = p
        dist = np.zeros(0)
    elif model == "SIMPLE_RADIAL":
        f, cx, cy, k = p
        fx = fy = f
        dist = np.array([k, 0, 0, 0])
    elif model == "RADIAL":
        f, cx, cy, k1, k2 = p
        fx = fy = f
        dist = np.array([k1, k2, 0, 0])
    elif model == "OPENCV":
        fx, fy, cx, cy = p[:4]
        dist = p[4:8]  # k1, k2, p1, p2
    elif model == "FULL_OPENCV":
        fx, fy, cx, cy = p[:4]
        dist = p[4:12]  # k1, k2, p1, p2, k3, k4, k5, k6 (OpenCV's rational model order)
    elif model == "OPENCV_FISHEYE":
        fx, fy, cx, cy = p[:4]
        dist = p[4:8]  # k1..k4
    else:
        raise SceneError(f"{source}: COLMAP camera model {model} is not supported (supported: SIMPLE_PINHOLE, "
                         f"PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV, OPENCV_FISHEYE)")
    K = check_intrinsics(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), source)
    return K, np.asarray(dist, dtype=np.float64), model == "OPENCV_FISHEYE"


def read(path, resolution=None, names: Names = None, load_depth: bool = True) -> Scene:
    import pycolmap

    path, resolution = Path(path), check_resolution(resolution)
    model_dir = find_model_dir(path)
    if model_dir is None:
        raise SceneError(f"{path}: no COLMAP model (cameras + images .bin/.txt) in {', '.join(_MODEL_DIRS)}")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # pycolmap raises ValueError / RuntimeError with its C++ check message
        raise SceneError(f"{model_dir}: COLMAP model is unreadable ({e})") from None
    image_dir = _find_image_dir(path, model_dir)

    images = {str(Path(im.name).with_suffix("")): im for im in rec.images.values() if im.has_pose}
    select = NameFilter(names)
    select.check_found(images, model_dir)
    chosen = sorted(n for n in images if select(n))
    if not chosen:
        raise SceneError(f"{model_dir}: scene has no views" + (" (none selected)" if images else ""))

    warn_outside(image_dir, [(f"image {images[n].name}", image_dir / images[n].name) for n in chosen], model_dir)
    undistorters: dict[int, Undistorter] = {}
    views = []
    for name in chosen:
        im = images[name]
        cam = rec.cameras[im.camera_id]
        src = f"{model_dir} image {im.name}"
        K, dist, fisheye = camera_to_opencv(cam, f"{model_dir} camera {im.camera_id}")
        w2c = np.eye(4)
        w2c[:3] = im.cam_from_world().matrix()
        c2w = check_pose(np.linalg.inv(check_pose(w2c, src)), src)
        img_file = image_dir / im.name
        image = read_rgb(img_file)
        if image.shape[:2] != (cam.height, cam.width):
            raise SceneError(f"{img_file}: image size {image.shape[1]}x{image.shape[0]} does not match COLMAP "
                             f"camera {im.camera_id} ({cam.width}x{cam.height})")
        extra = {}
        if dist.size and np.any(dist != 0):
            if im.camera_id not in undistorters:
                undistorters[im.camera_id] = Undistorter(K, dist, cam.width, cam.height, fisheye=fisheye)
            und = undistorters[im.camera_id]
            image, K = und.image(image), und.K_new
            if not und.valid.all():
                extra["mask"] = und.valid
        views.append(make_view(image, K, c2w, name, resolution, img_file, **extra))

    points = rgb = None
    if rec.num_points3D() > 0:
        pts = [rec.points3D[i] for i in sorted(rec.point3D_ids())]  # by id: deterministic order
        points = np.array([p.xyz for p in pts], dtype=np.float32)  # [P, 3]
        rgb = np.array([p.color for p in pts], dtype=np.float32) / 255.0  # [P, 3]
    return Scene(name=path.resolve().name, views=views, points=points, points_rgb=rgb, source=str(model_dir),
                 meta={"layout": NAME, "model_dir": str(model_dir), "image_dir": str(image_dir)})
