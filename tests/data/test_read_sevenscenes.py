"""7-Scenes / TUM-style reader: a fixture written in the layout, and the real shared RedKitchen frames."""

import numpy as np
import pytest
import torch
from scene_testkit import K, H, W, frames, write_gray, write_matrix, write_rgb

from fit3d.data import read_scene
from fit3d.errors import SceneError


def write_7scenes(root, n=3, labels_for=(1,)):
    fr = frames(n)
    write_matrix(root / "camera-intrinsics.txt", K)
    for i, f in enumerate(fr):
        stem = root / f"frame-{2 * i:06d}"
        write_rgb(stem.with_name(stem.name + ".color.png"), f["image"])
        write_gray(stem.with_name(stem.name + ".depth.png"), f["depth_mm"])
        write_matrix(stem.with_name(stem.name + ".pose.txt"), f["c2w"])
        if i in labels_for:
            write_gray(stem.with_name(stem.name + ".label.png"), f["labels"])
    return fr


def test_reads_fixture(tmp_path):
    fr = write_7scenes(tmp_path)
    fr[0]["depth_mm"][5, 5] = 65535  # Kinect "no reading"
    write_gray(tmp_path / "frame-000000.depth.png", fr[0]["depth_mm"])
    s = read_scene(tmp_path)
    assert s.meta["layout"] == "7scenes" and s.name == tmp_path.name
    assert [v.name for v in s.views] == ["frame-000000", "frame-000002", "frame-000004"]
    for v, f in zip(s.views, fr):
        torch.testing.assert_close(v.image, f["image"].astype(np.float32) / 255)
        torch.testing.assert_close(v.K, K)
        torch.testing.assert_close(v.c2w, f["c2w"])
        expected = f["depth_mm"].astype(np.float32) / 1000
        expected[f["depth_mm"] == 65535] = 0
        torch.testing.assert_close(v.depth, expected)
    assert s.views[0].depth[0, 0] == 0 and s.views[0].depth[5, 5] == 0
    assert s.views[0].labels is None
    assert s.views[1].labels.dtype == np.int64 and (s.views[1].labels == fr[1]["labels"]).all()
    assert s.points is None


def test_resolution_names_and_no_depth(tmp_path):
    write_7scenes(tmp_path)
    s = read_scene(tmp_path, layout="7scenes", resolution=(20, 15), names=["frame-000004", "frame-000000"],
                   load_depth=False)
    assert [v.name for v in s.views] == ["frame-000000", "frame-000004"]
    v = s.views[0]
    assert v.image.shape == (15, 20, 3) and v.depth is None
    torch.testing.assert_close(v.K, np.array([[18.0, 0, 10], [0, 17, 7.5], [0, 0, 1]]))
    s = read_scene(tmp_path, names=lambda n: n.endswith("2"))
    assert [v.name for v in s.views] == ["frame-000002"] and s.views[0].labels.shape == (H, W)
    with pytest.raises(SceneError, match="requested views not found: frame-000001"):
        read_scene(tmp_path, names=["frame-000001"])
    with pytest.raises(SceneError, match="no views \\(none selected\\)"):
        read_scene(tmp_path, names=lambda n: False)


def _corrupt(root, what):
    if what == "missing pose":
        (root / "frame-000002.pose.txt").unlink()
    elif what == "nan pose":
        m = np.loadtxt(root / "frame-000002.pose.txt")
        m[0, 3] = np.nan
        write_matrix(root / "frame-000002.pose.txt", m)
    elif what == "scaled pose":
        m = np.loadtxt(root / "frame-000002.pose.txt")
        m[:3, :3] *= 1.5
        write_matrix(root / "frame-000002.pose.txt", m)
    elif what == "unreadable image":
        (root / "frame-000002.color.png").write_bytes(b"not a png")
    elif what == "missing depth":
        (root / "frame-000002.depth.png").unlink()
    elif what == "depth size":
        write_gray(root / "frame-000002.depth.png", np.ones((H, W // 2), np.uint16))
    elif what == "intrinsics":
        (root / "camera-intrinsics.txt").write_text("1 2 3\n")


@pytest.mark.parametrize("what, file, msg", [
    ("missing pose", "frame-000002.pose.txt", "pose is missing"),
    ("nan pose", "frame-000002.pose.txt", "NaN"),
    ("scaled pose", "frame-000002.pose.txt", "not a rigid transform"),
    ("unreadable image", "frame-000002.color.png", "unreadable"),
    ("missing depth", "frame-000002.depth.png", "depth is missing"),
    ("depth size", "frame-000002.depth.png", "depth size 20x30 does not match image size 40x30"),
    ("intrinsics", "camera-intrinsics.txt", "3x3"),
])
def test_bad_input_names_the_file(tmp_path, what, file, msg):
    write_7scenes(tmp_path)
    _corrupt(tmp_path, what)
    with pytest.raises(SceneError, match=msg) as e:
        read_scene(tmp_path)
    assert file in str(e.value)


def test_depth_of_same_aspect_is_resized(tmp_path):
    fr = write_7scenes(tmp_path, n=1)
    half = fr[0]["depth_mm"][::2, ::2]
    write_gray(tmp_path / "frame-000000.depth.png", half)
    d = read_scene(tmp_path).views[0].depth
    assert d.shape == (H, W)
    torch.testing.assert_close(d[::2, ::2], half.astype(np.float32) / 1000)


def test_real_redkitchen_frames_warp(sevenscenes_path):
    """The README's check: frame 0's depth back-projected and warped into frame 30 lands mostly in the
    image with a small colour error; with the pose read the wrong way round (as world-to-camera) it does
    not, so the check sees the pose convention."""
    s = read_scene(sevenscenes_path, names=["frame-000000", "frame-000030"])
    assert s.meta["layout"] == "7scenes"
    a, b = s.views
    assert a.image.shape == (480, 640, 3) and a.depth.shape == (480, 640)
    torch.testing.assert_close(a.K, np.array([[585.0, 0, 320], [0, 585, 240], [0, 0, 1]]))
    assert 1.0 < np.median(a.depth[a.depth > 0]) < 3.0  # README: median about 1.9 m (depth in metres)

    v, u = np.nonzero(a.depth > 0)
    d = a.depth[v, u]
    Xa = np.linalg.inv(a.K) @ np.stack([u + 0.5, v + 0.5, np.ones_like(d)]) * d  # [3, N] in camera a

    def warp(a_c2w, b_w2c):
        Xb = (b_w2c @ a_c2w @ np.vstack([Xa, np.ones_like(d)]))[:3]
        uv = (b.K @ Xb)[:2] / Xb[2]
        inside = (Xb[2] > 0) & (uv[0] >= 0) & (uv[0] < b.width) & (uv[1] >= 0) & (uv[1] < b.height)
        ub, vb = uv[0, inside].astype(int), uv[1, inside].astype(int)
        err = np.abs(a.image[v[inside], u[inside]] - b.image[vb, ub]).mean()
        return inside.mean(), err

    frac, err = warp(a.c2w, b.w2c)
    assert frac > 0.8 and err < 0.08, (frac, err)  # README: 90 %, 0.05
    frac_wrong, err_wrong = warp(np.linalg.inv(a.c2w), b.c2w)
    assert frac_wrong < frac - 0.1 or err_wrong > err + 0.03, (frac_wrong, err_wrong)
