"""nerfstudio transforms.json reader: OpenGL -> OpenCV, intrinsics, undistortion, depth, masks, points."""

import json
import warnings

import numpy as np
import pycolmap
import pytest
import torch
from plyfile import PlyData, PlyElement
from scene_testkit import K, H, W, blob_centroid, blob_image, frames, project, write_gray, write_rgb

from fit3d.data import read_scene
from fit3d.data.readers.nerfstudio import OPENGL_TO_OPENCV
from fit3d.errors import SceneError

CAM = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": W, "h": H}


def write_ply(path, xyz, rgb):
    v = np.array([tuple(p) + tuple(c) for p, c in zip(xyz, rgb)],
                 dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))


def write_nerfstudio(root, n=3, **top):
    fr = frames(n)
    out = []
    for i, f in enumerate(fr):
        write_rgb(root / "images" / f"frame_{i + 1:05d}.png", f["image"])
        write_gray(root / "depth" / f"frame_{i + 1:05d}.png", f["depth_mm"])
        out.append({"file_path": f"images/frame_{i + 1:05d}.png",
                    "transform_matrix": (f["c2w"] @ OPENGL_TO_OPENCV).tolist(),  # OpenCV -> OpenGL axes
                    "depth_file_path": f"depth/frame_{i + 1:05d}.png"})
    meta = {"camera_model": "OPENCV", **CAM, "k1": 0, "k2": 0, "p1": 0, "p2": 0, "frames": out, **top}
    (root / "transforms.json").write_text(json.dumps(meta))
    return fr, meta


def test_reads_fixture(tmp_path):
    fr, meta = write_nerfstudio(tmp_path, ply_file_path="points.ply")
    mask = np.full((H, W), 255, np.uint8)
    mask[:, :7] = 0
    write_gray(tmp_path / "masks" / "m.png", mask)
    meta["frames"][1]["mask_path"] = "masks/m.png"
    meta["frames"][2].update(fl_x=50.0, fl_y=51.0, cx=21.0, cy=14.0)  # per-frame intrinsics
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    xyz = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    rgb = np.random.default_rng(1).integers(0, 256, size=(20, 3)).astype(np.uint8)
    write_ply(tmp_path / "points.ply", xyz, rgb)

    s = read_scene(tmp_path)
    assert s.meta["layout"] == "nerfstudio" and s.meta["test_names"] == []
    assert [v.name for v in s.views] == ["frame_00001", "frame_00002", "frame_00003"]
    for v, f in zip(s.views, fr):
        torch.testing.assert_close(v.image, f["image"].astype(np.float32) / 255)
        torch.testing.assert_close(v.c2w, f["c2w"])
        torch.testing.assert_close(v.depth, f["depth_mm"].astype(np.float32) / 1000)
    torch.testing.assert_close(s.views[0].K, K)
    torch.testing.assert_close(s.views[2].K, np.array([[50.0, 0, 21], [0, 51, 14], [0, 0, 1]]))
    assert s.views[0].mask is None and (s.views[1].mask == (mask > 0)).all()
    torch.testing.assert_close(s.points, xyz)
    torch.testing.assert_close(s.points_rgb, rgb.astype(np.float32) / 255)

    s = read_scene(tmp_path / "transforms.json", resolution=(20, 15), load_depth=False, names=["frame_00003"])
    assert len(s) == 1 and s.views[0].image.shape == (15, 20, 3) and s.views[0].depth is None
    torch.testing.assert_close(s.views[0].K, np.array([[25.0, 0, 10.5], [0, 25.5, 7], [0, 0, 1]]))


def test_opengl_camera_becomes_opencv(tmp_path):
    """A camera built the OpenGL way (looking down -z, y up) sees its target at the image centre, world
    'up' above the centre and its 'right' to the right once read (independent of OPENGL_TO_OPENCV)."""
    eye, target, up = np.array([1.0, 2.0, 3.0]), np.zeros(3), np.array([0.0, 0.0, 1.0])
    back = (eye - target) / np.linalg.norm(eye - target)
    right = np.cross(up, back) / np.linalg.norm(np.cross(up, back))
    c2w_gl = np.eye(4)
    c2w_gl[:3, :3] = np.stack([right, np.cross(back, right), back], axis=1)
    c2w_gl[:3, 3] = eye
    write_rgb(tmp_path / "a.png", np.zeros((H, W, 3), np.uint8))
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"camera_model": "PINHOLE", **CAM, "frames": [{"file_path": "a.png", "transform_matrix": c2w_gl.tolist()}]}))
    v = read_scene(tmp_path).views[0]

    def pix(X):
        Xc = (v.w2c @ np.append(X, 1))[:3]
        assert Xc[2] > 0  # in front of the camera
        return (v.K @ Xc)[:2] / Xc[2]

    torch.testing.assert_close(pix(target), K[:2, 2])
    assert pix(target + 0.1 * up)[1] < K[1, 2] - 0.5  # image y points down
    assert pix(target + 0.1 * right)[0] > K[0, 2] + 0.5


@pytest.mark.parametrize("model, params", [
    ("OPENCV_FISHEYE", {"k1": 0.05, "k2": -0.02, "k3": 0.01, "k4": 0.0}),
    ("OPENCV", {"k1": -0.2, "k2": 0.05, "p1": 0.003, "p2": -0.002}),
])
def test_undistortion(tmp_path, model, params):
    """A blob round in undistorted camera coordinates, drawn through the distorted camera (pycolmap's
    model), is back where the new pinhole K projects it after the reader undistorts."""
    w, h = 96, 72
    cam = pycolmap.Camera.create_from_model_name(1, model, 60.0, w, h)
    if model == "OPENCV_FISHEYE":
        cam.params = [60, 62, 47.0, 37.0, *params.values()]
    else:
        cam.params = [60, 62, 47.0, 37.0, params["k1"], params["k2"], params["p1"], params["p2"]]
    center = (0.55, -0.35)  # normalised, towards a corner where distortion is strong
    write_rgb(tmp_path / "a.png", blob_image(cam.cam_from_img, w, h, center, sigma=0.04))
    write_gray(tmp_path / "d.png", np.full((h, w), 2500, np.uint16))
    (tmp_path / "transforms.json").write_text(json.dumps({
        "camera_model": model, "fl_x": 60, "fl_y": 62, "cx": 47.0, "cy": 37.0, "w": w, "h": h, **params,
        "frames": [{"file_path": "a.png", "depth_file_path": "d.png", "transform_matrix": np.eye(4).tolist()}]}))
    v = read_scene(tmp_path).views[0]
    torch.testing.assert_close(v.K[:2, 2], np.array([w / 2, h / 2]))  # principal point at the centre
    expected = project(v.K, center)
    torch.testing.assert_close(blob_centroid(v.image, v.mask), expected, atol=0.15, rtol=0)
    # the check has teeth: read without undistortion, the blob would sit > 2 px off its projection
    distorted = cam.img_from_cam(np.array([[*center, 1.0]]))[0]
    assert np.abs(distorted - project(np.array([[60, 0, 47], [0, 62, 37], [0, 0, 1]]), center)).max() > 2
    valid = v.mask if v.mask is not None else np.ones((h, w), bool)
    assert valid.mean() > 0.95 and np.allclose(v.depth[valid], 2.5) and (v.depth[~valid] == 0).all()


def test_test_frames_bad_frames_and_scannetpp_folders(tmp_path):
    """ScanNet++ DSLR: dslr/nerfstudio/transforms.json naming bare files in dslr/resized_images."""
    root = tmp_path / "dslr" / "nerfstudio"
    root.mkdir(parents=True)
    fr = frames(3)
    for i, f in enumerate(fr):
        write_rgb(tmp_path / "dslr" / "resized_images" / f"DSC{i:05d}.JPG", f["image"])
    entry = lambda i: {"file_path": f"DSC{i:05d}.JPG", "transform_matrix": np.eye(4).tolist()}
    (root / "transforms.json").write_text(json.dumps({
        "camera_model": "PINHOLE", **CAM, "frames": [entry(0), dict(entry(1), is_bad=True)],
        "test_frames": [entry(2)]}))
    with pytest.warns(UserWarning, match="DSC00001.JPG \\(is_bad\\)"):
        s = read_scene(tmp_path / "dslr" / "nerfstudio")
    assert [v.name for v in s.views] == ["DSC00000", "DSC00002"] and s.meta["test_names"] == ["DSC00002"]


def _corrupt(root, meta, what):
    f = meta["frames"][1]
    if what == "json":
        (root / "transforms.json").write_text("{\"frames\": [")
        return
    if what == "nan pose":
        f["transform_matrix"][0][3] = float("nan")
    elif what == "scaled pose":
        f["transform_matrix"] = (np.diag([2.0, 2, 2, 1]) @ np.array(f["transform_matrix"])).tolist()
    elif what == "missing image":
        (root / "images" / "frame_00002.png").unlink()
    elif what == "model":
        meta["camera_model"] = "EQUIRECTANGULAR"
    elif what == "no focal":
        del meta["fl_x"]
    elif what == "image size":
        meta["w"] = 2 * W  # image is W x H: a different aspect ratio
    elif what == "depth size":
        write_gray(root / "depth" / "frame_00002.png", np.ones((H, H), np.uint16))
    (root / "transforms.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("what, file, msg", [
    ("json", "transforms.json", "not valid JSON"),
    ("nan pose", "transforms.json frames[1]", "NaN"),
    ("scaled pose", "transforms.json frames[1]", "not a rigid transform"),
    ("missing image", "frame_00002.png", "image is missing"),
    ("model", "transforms.json", "EQUIRECTANGULAR"),
    ("no focal", "transforms.json", "missing fl_x"),
    ("image size", "frame_00001.png", "does not match the camera's 80x30"),
    ("depth size", "depth/frame_00002.png", "does not match image size"),
])
def test_bad_input_names_the_file(tmp_path, what, file, msg):
    _, meta = write_nerfstudio(tmp_path)
    _corrupt(tmp_path, meta, what)
    with pytest.raises(SceneError, match=msg) as e, warnings.catch_warnings():
        read_scene(tmp_path)
    assert file in str(e.value)
