"""ScanNet exported-frames reader (also the synthetic generator's layout)."""

import json
import warnings

import numpy as np
import pytest
import torch
from scene_testkit import K, H, W, blob_centroid, frames, project, write_gray, write_matrix, write_rgb

from fit3d.data import read_scene
from fit3d.errors import SceneError


def K4(K3):
    m = np.eye(4)
    m[:3, :3] = K3
    return m


def write_scannet(root, n=3, ext=".png", depth_size=(W, H), labels=True):
    """Frames 0, 10, 20, ... with colour at W x H, depth at ``depth_size``."""
    fr = frames(n)
    write_matrix(root / "intrinsic" / "intrinsic_color.txt", K4(K))
    write_matrix(root / "intrinsic" / "intrinsic_depth.txt", K4(K))
    for i, f in enumerate(fr):
        write_rgb(root / "color" / f"{10 * i}{ext}", f["image"])
        write_matrix(root / "pose" / f"{10 * i}.txt", f["c2w"])
        d = f["depth_mm"] if depth_size == (W, H) else np.full(depth_size[::-1], 1500, np.uint16)
        write_gray(root / "depth" / f"{10 * i}.png", d)
        if labels:
            write_gray(root / "label-filt" / f"{10 * i}.png", f["labels"])
    return fr


def test_reads_fixture_png(tmp_path):
    fr = write_scannet(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"0": "floor", "1": "wall", "255": "ignore"}))
    s = read_scene(tmp_path)
    assert s.meta["layout"] == "scannet"
    assert s.meta["classes"] == {0: "floor", 1: "wall", 255: "ignore"}
    assert [v.name for v in s.views] == ["0", "10", "20"]
    for v, f in zip(s.views, fr):
        torch.testing.assert_close(v.image, f["image"].astype(np.float32) / 255)
        torch.testing.assert_close(v.K, K)
        torch.testing.assert_close(v.c2w, f["c2w"])
        torch.testing.assert_close(v.depth, f["depth_mm"].astype(np.float32) / 1000)
        assert v.labels.dtype == np.int64 and (v.labels == f["labels"]).all()


def test_numeric_frame_order_and_jpg(tmp_path):
    write_scannet(tmp_path, n=12, ext=".jpg", labels=False)
    s = read_scene(tmp_path, names=lambda n: int(n) in (20, 100, 110), load_depth=False)
    assert [v.name for v in s.views] == ["20", "100", "110"]
    assert s.views[0].depth is None and s.views[0].labels is None and "classes" not in s.meta
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["floor", "wall"]}))  # as fit3d generate writes
    assert read_scene(tmp_path, names=["0"]).meta["classes"] == ["floor", "wall"]


def test_colour_resized_to_depth_grid(tmp_path):
    """Colour 2x the depth size (as ScanNet's 1296x968 vs 640x480): views are on the depth grid with the
    colour K rescaled, and image content stays where K projects it."""
    Kc = np.array([[80.0, 0, 40], [0, 80, 30], [0, 0, 1]])
    write_matrix(tmp_path / "intrinsic" / "intrinsic_color.txt", K4(Kc))
    img = np.zeros((60, 80, 3), np.uint8)
    img[20:24, 50:54] = 255  # centre (52, 22)
    write_rgb(tmp_path / "color" / "0.png", img)
    write_matrix(tmp_path / "pose" / "0.txt", np.eye(4))
    write_gray(tmp_path / "depth" / "0.png", np.full((30, 40), 2000, np.uint16))
    labels = np.zeros((60, 80), np.uint8)
    labels[:, 40:] = 7
    write_gray(tmp_path / "label-filt" / "0.png", labels)
    for load_depth in (True, False):
        v = read_scene(tmp_path, load_depth=load_depth).views[0]
        assert v.image.shape == (30, 40, 3)
        torch.testing.assert_close(v.K, np.array([[40.0, 0, 20], [0, 40, 15], [0, 0, 1]]))
    xy = ((52 - 40) / 80, (22 - 30) / 80)
    torch.testing.assert_close(blob_centroid(v.image), project(v.K, xy), atol=0.05, rtol=0)
    assert (v.labels[:, :20] == 0).all() and (v.labels[:, 20:] == 7).all()
    v = read_scene(tmp_path, resolution=(20, 15)).views[0]
    assert v.depth.shape == (15, 20) and np.allclose(v.depth, 2.0)


def test_invalid_pose_skipped_with_warning(tmp_path):
    write_scannet(tmp_path)
    write_matrix(tmp_path / "pose" / "10.txt", np.full((4, 4), -np.inf))
    with pytest.warns(UserWarning, match="skipping 1 frame.*invalid \\(-inf\\) pose: 10"):
        s = read_scene(tmp_path)
    assert [v.name for v in s.views] == ["0", "20"]
    write_matrix(tmp_path / "pose" / "0.txt", np.full((4, 4), -np.inf))
    write_matrix(tmp_path / "pose" / "20.txt", np.full((4, 4), -np.inf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SceneError, match="no views"):
            read_scene(tmp_path)


def _corrupt(root, what):
    if what == "nan pose":
        m = np.loadtxt(root / "pose" / "10.txt")
        m[2, 2] = np.nan
        write_matrix(root / "pose" / "10.txt", m)
    elif what == "+inf pose":
        m = np.loadtxt(root / "pose" / "10.txt")
        m[0, 3] = np.inf
        write_matrix(root / "pose" / "10.txt", m)
    elif what == "shear pose":
        m = np.loadtxt(root / "pose" / "10.txt")
        m[0, 1] += 0.3
        write_matrix(root / "pose" / "10.txt", m)
    elif what == "missing pose":
        (root / "pose" / "10.txt").unlink()
    elif what == "unreadable image":
        (root / "color" / "10.png").write_bytes(b"")
    elif what == "depth aspect":
        write_gray(root / "depth" / "10.png", np.ones((H, H), np.uint16))
    elif what == "missing intrinsics":
        (root / "intrinsic" / "intrinsic_color.txt").unlink()
    elif what == "bad classes":
        (root / "classes.json").write_text("{")


@pytest.mark.parametrize("what, file, msg", [
    ("nan pose", "pose/10.txt", "NaN"),
    ("+inf pose", "pose/10.txt", "inf"),
    ("shear pose", "pose/10.txt", "not a rigid transform"),
    ("missing pose", "pose/10.txt", "pose is missing"),
    ("unreadable image", "color/10.png", "unreadable"),
    ("depth aspect", "depth/10.png", "does not match image size"),
    ("missing intrinsics", "intrinsic/intrinsic_color.txt", "missing"),
    ("bad classes", "classes.json", "not valid JSON"),
])
def test_bad_input_names_the_file(tmp_path, what, file, msg):
    write_scannet(tmp_path)
    _corrupt(tmp_path, what)
    with pytest.raises(SceneError, match=msg) as e:
        read_scene(tmp_path)
    assert file in str(e.value)
