"""COLMAP reader: a tiny model built with pycolmap, written as text and as binary, with its images."""

import numpy as np
import pycolmap
import pytest
import torch
from scene_testkit import K, H, W, blob_centroid, blob_image, frames, project, write_rgb

from fit3d.data import read_scene
from fit3d.errors import SceneError

NAMES = ["cam/img_000.png", "img_001.png", "img_002.png"]


def build_model(root, fmt="text", model_dir="sparse/0", camera=("PINHOLE", W, H, [*np.diag(K)[:2], *K[:2, 2]]),
                images=None, n_points=12):
    """Write a model with one camera, posed images (written to root/images) and coloured points.
    Returns ({name: w2c [4, 4]}, points [P, 3], colours [P, 3] uint8, the pycolmap Reconstruction)."""
    model, w, h, params = camera
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, model, 1.0, w, h)
    cam.params = params
    rec.add_camera_with_trivial_rig(cam)
    fr = frames(len(NAMES), w=w, h=h)
    w2cs = {}
    for i, (name, f) in enumerate(zip(NAMES, fr), start=1):
        w2c = np.linalg.inv(f["c2w"])
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=i),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3]))
        write_rgb(root / "images" / name, (images or {}).get(name, f["image"]))
        w2cs[name] = w2c
    rng = np.random.default_rng(3)
    xyz = rng.normal(size=(n_points, 3)) + [0, 0, 2]
    rgb = rng.integers(0, 256, size=(n_points, 3)).astype(np.uint8)
    for p, c in zip(xyz, rgb):
        rec.add_point3D(p, pycolmap.Track(), c)
    (root / model_dir).mkdir(parents=True, exist_ok=True)
    (rec.write_text if fmt == "text" else rec.write_binary)(str(root / model_dir))
    return w2cs, xyz, rgb, rec


@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_reads_model(tmp_path, fmt):
    w2cs, xyz, rgb, rec = build_model(tmp_path, fmt)
    assert any((tmp_path / "sparse/0").glob("*.bin" if fmt == "binary" else "*.txt"))
    s = read_scene(tmp_path)
    assert s.meta["layout"] == "colmap"
    assert [v.name for v in s.views] == ["cam/img_000", "img_001", "img_002"]
    torch.testing.assert_close(s.points, xyz.astype(np.float32))
    torch.testing.assert_close(s.points_rgb, rgb.astype(np.float32) / 255)
    for v in s.views:
        name = next(n for n in NAMES if n.startswith(v.name))
        torch.testing.assert_close(v.K, K)
        torch.testing.assert_close(v.w2c, w2cs[name])
        assert v.depth is None and v.mask is None
        # pose convention checked against pycolmap's own projection
        im = rec.find_image_with_name(name)
        Xc = (v.w2c @ np.c_[xyz, np.ones(len(xyz))].T)[:3]
        ours = ((v.K @ Xc)[:2] / Xc[2]).T
        front = Xc[2] > 0
        theirs = np.array([im.project_point(p) for p in xyz[front]])
        torch.testing.assert_close(ours[front], theirs)


def test_text_and_binary_agree_and_folder_variants(tmp_path):
    build_model(tmp_path / "t", "text", model_dir="sparse")  # sparse/ without 0/
    build_model(tmp_path / "b", "binary", model_dir=".")  # model files at the scene root
    a, b = read_scene(tmp_path / "t"), read_scene(tmp_path / "b", layout="colmap")
    for va, vb in zip(a.views, b.views):
        torch.testing.assert_close(va.c2w, vb.c2w)
        torch.testing.assert_close(va.image, vb.image)
    s = read_scene(tmp_path / "b", resolution=(20, 15), names=lambda n: n != "img_001")
    assert [v.name for v in s.views] == ["cam/img_000", "img_002"] and s.views[0].image.shape == (15, 20, 3)


@pytest.mark.parametrize("model, params", [
    ("SIMPLE_RADIAL", [60.0, 47.0, 37.0, -0.08]),
    ("RADIAL", [60.0, 47.0, 37.0, -0.08, 0.02]),
    ("OPENCV", [60.0, 62.0, 47.0, 37.0, -0.2, 0.05, 0.003, -0.002]),
    ("FULL_OPENCV", [60.0, 62.0, 47.0, 37.0, -0.2, 0.05, 0.003, -0.002, 0.01, 0.02, 0.0, 0.01]),
    ("OPENCV_FISHEYE", [60.0, 62.0, 47.0, 37.0, 0.05, -0.02, 0.01, 0.0]),
])
def test_undistortion(tmp_path, model, params):
    """A blob round in normalised camera coordinates, drawn through COLMAP's camera model, lands where
    the undistorted K projects it."""
    w, h = 96, 72
    cam = pycolmap.Camera.create_from_model_name(1, model, 1.0, w, h)
    cam.params = params
    center = (0.55, -0.35)
    blob = blob_image(cam.cam_from_img, w, h, center, sigma=0.04)
    build_model(tmp_path, "binary", camera=(model, w, h, params), images={n: blob for n in NAMES})
    v = read_scene(tmp_path, names=["img_001"]).views[0]
    torch.testing.assert_close(v.K[:2, 2], np.array([w / 2, h / 2]))
    torch.testing.assert_close(blob_centroid(v.image, v.mask), project(v.K, center), atol=0.15, rtol=0)


def test_bad_input(tmp_path):
    build_model(tmp_path)
    (tmp_path / "images" / "img_001.png").unlink()
    with pytest.raises(SceneError, match="img_001.png: image is missing"):
        read_scene(tmp_path)
    write_rgb(tmp_path / "images" / "img_001.png", np.zeros((H, W + 2, 3), np.uint8))
    with pytest.raises(SceneError, match="img_001.png: image size 42x30 does not match COLMAP camera 1"):
        read_scene(tmp_path)
    (tmp_path / "sparse/0/cameras.txt").write_text("1 PINHOLE forty\n")
    with pytest.raises(SceneError, match="sparse/0: COLMAP model is unreadable"):
        read_scene(tmp_path)


def test_unsupported_model_and_missing_images_folder(tmp_path):
    build_model(tmp_path, camera=("FOV", W, H, [36.0, 34.0, 20.0, 15.0, 0.1]))
    with pytest.raises(SceneError, match="camera 1: COLMAP camera model FOV is not supported"):
        read_scene(tmp_path)
    for f in (tmp_path / "images").rglob("*.png"):
        f.unlink()
    (tmp_path / "images" / "cam").rmdir()
    (tmp_path / "images").rmdir()
    with pytest.raises(SceneError, match="no images folder found"):
        read_scene(tmp_path)
