import json

import cv2
import numpy as np
import pytest

from fit3d.cli import main
from fit3d.data import read_scene
from fit3d.data.synthetic import (CLASS_NAMES, FLOOR, WALL, SyntheticSceneConfig, all_generated, generate_scene,
                                  generate_scenes, make_layout, write_scene)


def small(seed=0, **kw):
    kw = {"num_views": 6, "width": 80, "height": 60, **kw}
    return SyntheticSceneConfig(seed=seed, **kw)


@pytest.fixture(scope="module")
def scene():
    return generate_scene(SyntheticSceneConfig(seed=1, num_views=16, width=128, height=96))


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = generate_scene(small(7)), generate_scene(small(7)), generate_scene(small(8))
    for va, vb in zip(a.views, b.views):
        np.testing.assert_array_equal(va.image, vb.image)
        np.testing.assert_array_equal(va.depth, vb.depth)
        np.testing.assert_array_equal(va.labels, vb.labels)
        np.testing.assert_array_equal(va.c2w, vb.c2w)
    assert a.meta["room_size"] != c.meta["room_size"]
    diff = np.mean([np.abs(va.image - vc.image).mean() for va, vc in zip(a.views, c.views)])
    assert diff > 0.05
    la, lc = make_layout(small(7)), make_layout(small(8))
    assert [p.kind for p in la.primitives] != [p.kind for p in lc.primitives] or \
        not np.allclose(la.primitives[0].center, lc.primitives[0].center)


def test_views_have_valid_shapes_ranges_and_cameras_inside_the_room(scene):
    W, D, H = scene.meta["room_size"]
    diag = np.sqrt(W * W + D * D + H * H)
    assert len(scene.views) == 16
    for v in scene.views:
        assert v.image.shape == (96, 128, 3) and v.image.dtype == np.float32
        assert 0 <= v.image.min() and v.image.max() <= 1
        assert v.depth.shape == (96, 128) and (v.depth > 0.05).all() and (v.depth < diag).all()
        assert v.labels.shape == (96, 128) and v.labels.min() >= 0 and v.labels.max() < len(CLASS_NAMES)
        x, y, z = v.c2w[:3, 3]
        assert 0.3 < x < W - 0.3 and 0.3 < y < D - 0.3 and 1.0 < z < H - 0.3
        assert v.K[0, 2] == 64 and v.K[1, 2] == 48
        assert v.image.std() > 0.05  # textured, not flat
    # consecutive cameras are close (a smooth path)
    steps = [np.linalg.norm(a.c2w[:3, 3] - b.c2w[:3, 3]) for a, b in zip(scene.views, scene.views[1:])]
    assert max(steps) < 1.5


def test_labels_cover_several_classes():
    for seed in (0, 1, 2):
        s = generate_scene(small(seed, num_views=8))
        counts = np.bincount(np.concatenate([v.labels.ravel() for v in s.views]), minlength=len(CLASS_NAMES))
        present = np.flatnonzero(counts > 20)
        assert FLOOR in present and WALL in present
        assert len(present) >= 6, f"seed {seed}: classes {present}"


def _reproject(vi, vj):
    """Pixels of view i seen in view j: (source flat indices, target flat indices) of mutually visible ones."""
    h, w = vi.depth.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    z = vi.depth.ravel()
    cam = np.stack([(u.ravel() - vi.K[0, 2]) / vi.K[0, 0] * z, (v.ravel() - vi.K[1, 2]) / vi.K[1, 1] * z, z], 1)
    world = cam @ vi.c2w[:3, :3].T + vi.c2w[:3, 3]
    w2c = np.linalg.inv(vj.c2w)
    cj = world @ w2c[:3, :3].T + w2c[:3, 3]
    front = cj[:, 2] > 0.05
    uj = cj[:, 0] / np.maximum(cj[:, 2], 1e-6) * vj.K[0, 0] + vj.K[0, 2]
    vj_ = cj[:, 1] / np.maximum(cj[:, 2], 1e-6) * vj.K[1, 1] + vj.K[1, 2]
    xi, yi = np.floor(uj).astype(int), np.floor(vj_).astype(int)
    inside = front & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    src = np.flatnonzero(inside)
    tgt = yi[src] * w + xi[src]
    visible = np.abs(vj.depth.ravel()[tgt] - cj[src, 2]) < 0.02 * cj[src, 2]  # not occluded in j
    return src[visible], tgt[visible], inside.sum()


def test_views_are_geometrically_consistent(scene):
    for i, j in ((0, 1), (4, 5), (10, 11), (13, 15)):
        vi, vj = scene.views[i], scene.views[j]
        src, tgt, n_inside = _reproject(vi, vj)
        assert len(src) > 0.3 * vi.depth.size  # nearby views (22.5 degrees of orbit apart) overlap
        assert len(src) > 0.7 * n_inside       # most points that land in view j are visible there
        labels_agree = (vi.labels.ravel()[src] == vj.labels.ravel()[tgt]).mean()
        assert labels_agree > 0.97, (i, j, labels_agree)
        col_err = np.abs(vi.image.reshape(-1, 3)[src] - vj.image.reshape(-1, 3)[tgt]).mean(1)
        assert np.median(col_err) < 0.03 and (col_err < 0.1).mean() > 0.9, (i, j, np.median(col_err))


def test_write_scene_scannet_layout_reads_back(tmp_path):
    s = generate_scene(small(4, num_views=3))
    out = write_scene(s, tmp_path / "scene")
    for sub in ("color/0.png", "depth/2.png", "pose/1.txt", "label-filt/0.png", "intrinsic/intrinsic_color.txt",
                "intrinsic/intrinsic_depth.txt"):
        assert (out / sub).is_file(), sub
    assert json.loads((out / "classes.json").read_text()) == {"classes": list(CLASS_NAMES)}
    depth = cv2.imread(str(out / "depth/0.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (60, 80)
    np.testing.assert_allclose(depth / 1000.0, s.views[0].depth, atol=6e-4)
    lab = cv2.imread(str(out / "label-filt/0.png"), cv2.IMREAD_UNCHANGED)
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, s.views[0].labels)
    bgr = cv2.imread(str(out / "color/0.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(bgr[..., ::-1] / 255.0, s.views[0].image, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(np.loadtxt(out / "pose/1.txt"), s.views[1].c2w, atol=1e-7)
    np.testing.assert_array_equal(np.loadtxt(out / "intrinsic/intrinsic_color.txt"),
                                  np.loadtxt(out / "intrinsic/intrinsic_depth.txt"))

    r = read_scene(out, layout="scannet")
    assert [v.name for v in r.views] == ["0", "1", "2"]
    assert list(r.meta["classes"]) == list(CLASS_NAMES)
    for a, b in zip(s.views, r.views):
        np.testing.assert_allclose(b.image, a.image, atol=0.5 / 255 + 1e-6)
        np.testing.assert_allclose(b.depth, a.depth, atol=6e-4)
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_allclose(b.c2w, a.c2w, atol=1e-7)
        np.testing.assert_allclose(b.K, a.K, atol=1e-6)
    assert read_scene(out).meta["layout"] == "scannet"  # detected without being told

    # rewriting replaces the folder and leaves no temporary folders behind
    write_scene(generate_scene(small(5, num_views=2)), out)
    assert sorted(p.name for p in (out / "color").iterdir()) == ["0.png", "1.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]


def test_generate_cli_writes_readable_scenes_and_resumes(tmp_path, capsys):
    args = ["generate", str(tmp_path), "--num-scenes", "2", "--seed", "3", "--num-views", "2",
            "--width", "48", "--height", "36", "--no-shadows"]
    assert main(args) == 0
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == [".fit3d-output.json", "synthetic_0003", "synthetic_0004"]  # + the output guard's marker
    s = read_scene(tmp_path / "synthetic_0004")
    assert len(s.views) == 2 and s.views[0].image.shape == (36, 48, 3)
    cfg = json.loads((tmp_path / "synthetic_0004" / "synthetic.json").read_text())["config"]
    assert cfg["seed"] == 4 and cfg["shadows"] is False
    mtime = (tmp_path / "synthetic_0003" / "color" / "0.png").stat().st_mtime_ns
    assert main(args) == 0  # second run: scenes are complete, nothing rewritten
    assert (tmp_path / "synthetic_0003" / "color" / "0.png").stat().st_mtime_ns == mtime


def test_all_generated_says_whether_generate_scenes_has_anything_left(tmp_path):
    cfg = small(7, num_views=2, width=32, height=24)
    assert not all_generated(tmp_path, 2, cfg)
    generate_scenes(tmp_path, 1, cfg, progress=False)
    assert all_generated(tmp_path, 1, cfg) and not all_generated(tmp_path, 2, cfg)  # the second room is missing
    generate_scenes(tmp_path, 2, cfg, progress=False)
    assert all_generated(tmp_path, 2, cfg)
    assert not all_generated(tmp_path, 2, small(7, num_views=3, width=32, height=24))  # other settings: rewritten
