import cv2
import numpy as np

from fit3d.viz.images import (LABEL_PALETTE, colorbar, colorize_depth, colorize_labels, depth_range, hstack,
                              read_image, save_png, titled, to_uint8, upsample, vstack)


def test_upsample_nearest_keeps_patches_crisp():
    tok = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, 2)
    big = upsample(tok, 28, 42)
    assert big.shape == (28, 42, 3)
    assert (big[:14, :14] == tok[0, 0]).all() and (big[14:, 28:] == tok[1, 2]).all()
    assert set(np.unique(big)) == set(range(6))


def test_depth_colours_share_a_range_and_mark_invalid_black():
    near = np.linspace(1.0, 2.0, 16).reshape(4, 4)
    far = np.full((4, 4), 5.0)
    far[0, 0] = 0.0  # invalid
    lo, hi = depth_range([near, far], (0, 100))
    assert (lo, hi) == (1.0, 5.0)
    a, b = colorize_depth(near, lo, hi), colorize_depth(far, lo, hi)
    assert a.dtype == np.uint8 and a.shape == (4, 4, 3)
    assert (b[0, 0] == 0).all()
    assert a[1, 1, 0] > a[1, 1, 2] and b[1, 1, 2] > b[1, 1, 0]  # near is warm (red), far is cold (blue)
    # a colour depends on the shared range, not on the map alone
    assert not np.array_equal(colorize_depth(near, lo, hi), colorize_depth(near))


def test_labels_use_a_fixed_palette():
    lab = np.array([[0, 1], [2, 255]])
    rgb = colorize_labels(lab)
    np.testing.assert_array_equal(rgb[0, 0], LABEL_PALETTE[0])
    assert (rgb[1, 1] == 0).all()
    assert len({tuple(c) for c in LABEL_PALETTE[:40]}) == 40


def test_panels_titles_and_sizes():
    a = np.zeros((40, 60, 3), np.uint8)
    b = np.ones((20, 20, 3), np.float32)  # float, other size: resized to the first height
    t = titled(a, "a long title that does not fit in sixty pixels")
    assert t.shape[1] == 60 and t.shape[0] > 40
    row = hstack([a, b], ["a", "b"], pad=5)
    bar = t.shape[0] - 40
    assert row.shape == (40 + bar + 10, 60 + 40 + 15, 3)
    assert (row[5 + bar:, 5 + 60 + 5:5 + 60 + 5 + 40] == 255).all()  # the float panel, white
    grid = vstack([row, hstack([a])], pad=3)
    assert grid.shape[0] == row.shape[0] + 3 + 40 + 2 * 6 and grid.shape[1] == row.shape[1]
    cb = colorbar(0.5, 4.0, 100)
    assert cb.shape[0] == 100 and cb.dtype == np.uint8


def test_save_png_roundtrip_atomic(tmp_path):
    img = (np.random.default_rng(0).uniform(size=(7, 9, 3)) * 255).astype(np.uint8)
    save_png(tmp_path / "sub" / "x.png", img)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "x.png"), img)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "sub" / "x.png"))[..., ::-1], img)
    np.testing.assert_array_equal(to_uint8(img.astype(np.float32) / 255), img)


def test_titled_wraps_long_titles_instead_of_cutting_them():
    a = np.zeros((40, 120, 3), np.uint8)
    one = titled(a, "a long figure title that needs more than one line here", max_lines=1)
    three = titled(a, "a long figure title that needs more than one line here", max_lines=3)
    assert three.shape[1] == 120 and three.shape[0] > one.shape[0]  # extra lines, same width
    assert (three[-40:] == 0).all()  # the image itself below the bar
    # a title that fits takes one line either way
    assert titled(a, "short", max_lines=3).shape == titled(a, "short").shape
