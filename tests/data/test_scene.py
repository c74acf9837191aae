"""The data model: View / Scene validation, check_pose / check_intrinsics, View.resized / cropped / fitted."""

import numpy as np
import pytest
import torch
from scene_testkit import K, H, W, blob_centroid, random_c2w

from fit3d.data import Scene, View, check_intrinsics, check_pose
from fit3d.data.readers import frame_number
from fit3d.data.scene import aspect_window, resize_nearest
from fit3d.errors import SceneError


def _view(**kw):
    rng = np.random.default_rng(0)
    args = dict(image=rng.random((H, W, 3), dtype=np.float32), K=K, c2w=random_c2w(rng), name="v")
    args.update(kw)
    return View(**args)


def _project(view: View, X: np.ndarray) -> np.ndarray:
    """[N, 2] pixels of world points X [N, 3]."""
    Xc = (view.w2c @ np.c_[X, np.ones(len(X))].T)[:3]
    uv = view.K @ Xc
    return (uv[:2] / uv[2]).T


def test_view_converts_uint8_and_keeps_shapes():
    img = np.full((H, W, 3), 255, np.uint8)
    v = _view(image=img, depth=np.ones((H, W)), labels=np.zeros((H, W), np.uint8), mask=np.ones((H, W), np.uint8))
    assert v.image.dtype == np.float32 and v.image.max() == 1.0
    assert (v.width, v.height) == (W, H)
    assert v.depth.dtype == np.float32 and v.labels.dtype == np.int64 and v.mask.dtype == bool
    torch.testing.assert_close(v.w2c @ v.c2w, np.eye(4))


@pytest.mark.parametrize("kw, msg", [
    (dict(image=np.zeros((H, W))), "image must be"),
    (dict(image=np.full((H, W, 3), np.nan, np.float32)), "NaN"),
    (dict(depth=np.ones((H + 1, W))), "depth size"),
    (dict(depth=np.full((H, W), np.inf)), "depth contains NaN"),
    (dict(depth=-np.ones((H, W))), "negative"),
    (dict(labels=np.zeros((H, W), np.float32)), "integer"),
    (dict(mask=np.ones((H, W - 1), bool)), "mask size"),
    (dict(mask=np.ones((H, W, 2), bool)), "must be \\[H, W\\]"),
    (dict(K=np.eye(4)), "3x3"),
    (dict(K=np.diag([-1.0, 1, 1])), "positive focal"),
    (dict(c2w=np.diag([2.0, 2, 2, 1])), "not a rigid"),
])
def test_view_rejects_bad_input(kw, msg):
    with pytest.raises(SceneError, match=msg):
        _view(**kw)


def test_check_pose():
    c2w = random_c2w(np.random.default_rng(1))
    torch.testing.assert_close(check_pose(c2w, "p"), c2w)
    bad = c2w.copy()
    bad[1, 2] = np.nan
    with pytest.raises(SceneError, match="p.txt: pose contains NaN"):
        check_pose(bad, "p.txt")
    bad = c2w.copy()
    bad[:3, :3] *= -1  # reflection: orthonormal, det -1
    with pytest.raises(SceneError, match="rigid"):
        check_pose(bad, "p.txt")
    bad = c2w.copy()
    bad[3, 0] = 0.5
    with pytest.raises(SceneError, match="last row"):
        check_pose(bad, "p.txt")
    with pytest.raises(SceneError, match="4x4"):
        check_pose(c2w[:3], "p.txt")


def test_check_intrinsics():
    torch.testing.assert_close(check_intrinsics(K), K)
    with pytest.raises(SceneError, match="k.txt"):
        check_intrinsics(np.full((3, 3), np.inf), "k.txt")


@pytest.mark.parametrize("size", [(20, 15), (80, 60), (32, 40), (41, 29)])
def test_resized_keeps_projection(size):
    """A 3D point lands at the same relative image location before and after resizing."""
    v = _view()
    rng = np.random.default_rng(2)
    X = (v.c2w @ np.c_[rng.uniform(-1, 1, (50, 2)), rng.uniform(1, 3, 50), np.ones(50)].T)[:3].T
    r = v.resized(*size)
    assert (r.width, r.height) == size
    rel_before = _project(v, X) / [v.width, v.height]
    rel_after = _project(r, X) / [r.width, r.height]
    torch.testing.assert_close(rel_after, rel_before)
    torch.testing.assert_close(r.c2w, v.c2w)


@pytest.mark.parametrize("size, aspect, window", [
    ((640, 480), 4 / 3, (0, 0, 640, 480)),        # at the aspect: whole
    ((641, 480), 4 / 3, (0, 0, 641, 480)),        # within a pixel: whole (never cut by rounding)
    ((640, 480), 1.0, (80, 0, 480, 480)),         # too wide: the height kept, centred
    ((540, 960), 4 / 3, (0, 277, 540, 405)),      # a portrait photo to landscape: the width kept
    ((1920, 1080), 4 / 3, (240, 0, 1440, 1080)),
])
def test_aspect_window(size, aspect, window):
    assert aspect_window(*size, aspect) == window
    with pytest.raises(SceneError, match="aspect"):
        aspect_window(*size, 0.0)


def test_cropped_keeps_the_camera_and_cuts_every_map():
    """A point projects to the same pixel minus the window's corner; depth / labels / mask are cut alike."""
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.5, 3, (H, W)).astype(np.float32)
    labels = rng.integers(0, 5, (H, W))
    v = _view(depth=depth, labels=labels, mask=depth > 1)
    X = (v.c2w @ np.c_[rng.uniform(-1, 1, (50, 2)), rng.uniform(1, 3, 50), np.ones(50)].T)[:3].T
    c = v.cropped(5, 3, W - 9, H - 7)
    assert (c.width, c.height) == (W - 9, H - 7)
    torch.testing.assert_close(_project(c, X), _project(v, X) - [5, 3])
    np.testing.assert_array_equal(c.image, v.image[3:H - 4, 5:W - 4])
    np.testing.assert_array_equal(c.depth, depth[3:H - 4, 5:W - 4])
    np.testing.assert_array_equal(c.labels, labels[3:H - 4, 5:W - 4])
    np.testing.assert_array_equal(c.mask, (depth > 1)[3:H - 4, 5:W - 4])
    assert v.cropped(0, 0, W, H) is v
    with pytest.raises(SceneError, match="not inside"):
        v.cropped(1, 0, W, H)


def test_fitted_crops_to_the_aspect_instead_of_squashing():
    """``fitted`` keeps the pixel aspect (fx / fy unchanged), ``resized`` to another aspect does not; at the
    view's own aspect both are the same view."""
    v = _view()
    fx_over_fy = v.K[0, 0] / v.K[1, 1]
    square = v.fitted(24, 24)
    assert (square.width, square.height) == (24, 24)
    assert square.K[0, 0] / square.K[1, 1] == pytest.approx(fx_over_fy, rel=2 / min(W, H))
    assert v.resized(24, 24).K[0, 0] / v.resized(24, 24).K[1, 1] != pytest.approx(fx_over_fy, rel=0.05)
    same = v.fitted(W // 2, H // 2)
    np.testing.assert_array_equal(same.image, v.resized(W // 2, H // 2).image)
    np.testing.assert_array_equal(same.K, v.resized(W // 2, H // 2).K)


def test_resized_image_content_follows_K():
    """A bright square centred on a projected point stays centred on its projection after resizing."""
    img = np.zeros((96, 128, 3), np.float32)
    img[40:48, 80:88] = 1.0  # centre (84, 44) with pixel centres at +0.5
    Kb = np.array([[100.0, 0, 64], [0, 100, 48], [0, 0, 1]])
    v = View(image=img, K=Kb, c2w=np.eye(4), name="sq")
    X = np.array([[(84 - 64) / 100, (44 - 48) / 100, 1.0]])
    torch.testing.assert_close(_project(v, X)[0], blob_centroid(v.image))
    for size in [(32, 24), (64, 48), (200, 150)]:
        r = v.resized(*size)
        torch.testing.assert_close(_project(r, X)[0], blob_centroid(r.image), atol=0.05, rtol=0)


def test_resized_nearest_for_depth_labels_mask():
    depth = np.kron(np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((10, 10), np.float32))  # [30, 40]
    labels = depth.astype(np.int64) + 1000
    mask = depth > 5
    v = _view(depth=depth, labels=labels, mask=mask)
    r = v.resized(4, 3)  # one sample per 10x10 block, at its centre
    torch.testing.assert_close(r.depth, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert r.labels.dtype == np.int64 and (r.labels == np.arange(12).reshape(3, 4) + 1000).all()
    assert r.mask.dtype == bool and (r.mask == (np.arange(12).reshape(3, 4) > 5)).all()
    up = v.resized(80, 60)
    assert set(np.unique(up.depth)) <= set(np.unique(depth))  # nearest: no blended values
    assert 0 <= r.image.min() and r.image.max() <= 1
    assert v.resized(W, H) is v
    with pytest.raises(SceneError, match="cannot resize"):
        v.resized(0, 10)


def test_resize_nearest_is_centre_aligned():
    a = np.arange(8).reshape(1, 8)
    assert resize_nearest(a, 4, 1).tolist() == [[1, 3, 5, 7]]  # centres 0.5+2k -> source 2k+1
    assert resize_nearest(np.array([[True, False]]), 4, 1).tolist() == [[True, True, False, False]]


def test_scene_validation_and_selection():
    with pytest.raises(SceneError, match="somewhere: scene has no views"):
        Scene(name="s", views=[], source="somewhere")
    views = [_view(name=f"frame-{i:06d}") for i in range(4)]
    s = Scene(name="s", views=views)
    assert len(s) == 4
    assert [v.name for v in s.select(lambda n: frame_number(n) % 2 == 0).views] == ["frame-000000", "frame-000002"]
    assert [v.name for v in s.subset([3, 1]).views] == ["frame-000003", "frame-000001"]
    assert {v.width for v in s.resized(20, 15).views} == {20}


@pytest.mark.parametrize("name, n", [("frame-000123", 123), ("123", 123), ("DSC01752", 1752),
                                     ("seq-01/frame-000010", 10), ("frame_00002", 2)])
def test_frame_number(name, n):
    assert frame_number(name) == n


def test_frame_number_without_digits():
    with pytest.raises(SceneError, match="no frame number"):
        frame_number("kitchen")


def test_unproject_inverts_projection():
    import numpy as np

    from fit3d.data import View

    c2w = np.eye(4)
    c2w[:3, 3] = [0.5, -0.2, 1.0]
    K = np.array([[100.0, 0, 32], [0, 90.0, 24], [0, 0, 1]])
    v = View(image=np.zeros((48, 64, 3), np.float32), K=K, c2w=c2w)
    world = np.array([[0.6, 0.1, 3.0], [0.2, -0.4, 2.0]])
    cam = world - c2w[:3, 3]
    pix = (cam @ K.T)[:, :2] / cam[:, 2:]
    np.testing.assert_allclose(v.unproject(pix, cam[:, 2]), world, atol=1e-12)
