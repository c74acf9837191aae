"""Wrong geometry and values are caught with clear errors or explicit warnings (issue 22): depth bit depth,
frame size against the intrinsics, field of view, scenes without depth, non-finite weights, probe layers,
unreadable folders and sizes beyond the machine's memory. Each error: exit 1, one line naming the file or
option, no traceback, before any model loads."""

from __future__ import annotations

import errno
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from reliability_kit import H, K, LIFT_OPTS, W, assert_clean_error, copy_of, digest, run_cli


@pytest.fixture
def no_model_load(monkeypatch):
    import fit3d.finetune.trainer as trainer
    import fit3d.lift.stage as stage

    def boom(*a, **k):
        raise AssertionError("a backbone was loaded before the input was checked")

    for mod in (stage, trainer):
        monkeypatch.setattr(mod, "load_backbone", boom)


# ------------------------------------------------------------------ depth
def test_eight_bit_depth_png_is_refused(scene_dir, tiny_dino, tmp_path, capsys, no_model_load):
    """Was: an 8-bit depth PNG was read as millimetres (every depth under 0.26 m)."""
    d = copy_of(scene_dir, tmp_path / "room")
    f = d / "frame-000002.depth.png"
    assert cv2.imwrite(str(f), np.full((H, W), 120, np.uint8))
    rc, _, err = run_cli(capsys, "lift", d, "--out", tmp_path / "o", *LIFT_OPTS, "--model-path", tiny_dino)
    assert_clean_error(rc, err, f, "8-bit")


def test_all_zero_depth_says_which_initialisation(scene_dir, tiny_dino, tmp_path, capsys):
    """Was: an all-zero depth scene silently started from random points."""
    d = copy_of(scene_dir, tmp_path / "room")
    for f in d.glob("*.depth.png"):
        assert cv2.imwrite(str(f), np.zeros((H, W), np.uint16))
    with pytest.warns(UserWarning) as rec:
        rc, _, err = run_cli(capsys, "lift", d, "--out", tmp_path / "o", *LIFT_OPTS, "--model-path", tiny_dino)
    assert rc == 0, err
    msgs = [str(w.message) for w in rec]
    assert any("every depth map" in m and str(d) in m for m in msgs), msgs
    assert any("random points" in m and "init: random" in m for m in msgs), msgs
    import json

    assert json.loads((tmp_path / "o" / "room" / "lift.json").read_text())["init"] == "random"


def test_all_zero_depth_with_solve_falls_back_to_optimize_naming_the_scene(scene_dir, tiny_dino, tmp_path, capsys):
    """solve (the default method) with no usable depth and no points lifts by optimize, saying so (issue 21)."""
    d = copy_of(scene_dir, tmp_path / "room")
    for f in d.glob("*.depth.png"):
        assert cv2.imwrite(str(f), np.zeros((H, W), np.uint16))
    with pytest.warns(UserWarning) as warned:
        rc, _, err = run_cli(capsys, "lift", d, "--out", tmp_path / "o", *LIFT_OPTS, "--model-path", tiny_dino,
                             "--method", "solve")
    assert rc == 0, err
    said = " ".join(str(w.message) for w in warned)
    assert "every depth map" in said and "room: no depth and no scene points: lifting by optimize" in said
    (record,) = (tmp_path / "o").rglob("lift.json")
    assert json.loads(record.read_text())["solve"]["fell_back_to"] == "optimize"


# ------------------------------------------------------------------ frame size against the intrinsics
def test_frame_of_another_size_with_the_same_aspect_gets_K_rescaled(scene_dir, tmp_path):
    """Was: one colour frame of another size than the intrinsics' image kept the unscaled K."""
    from fit3d.data import read_scene

    d = copy_of(scene_dir, tmp_path / "room")
    f = d / "frame-000003.color.jpg"
    img = cv2.imread(str(f))
    assert cv2.imwrite(str(f), cv2.resize(img, (2 * W, 2 * H)))
    assert cv2.imwrite(str(d / "frame-000003.depth.png"),
                       cv2.resize(cv2.imread(str(d / "frame-000003.depth.png"), cv2.IMREAD_UNCHANGED), (2 * W, 2 * H),
                                  interpolation=cv2.INTER_NEAREST))
    s = read_scene(d)
    v = s.views[3]
    assert (v.width, v.height) == (2 * W, 2 * H)
    np.testing.assert_allclose(v.K[:2], 2 * K[:2])
    np.testing.assert_allclose(s.views[0].K, K)


def test_frame_of_another_aspect_is_refused(scene_dir, tiny_dino, tmp_path, capsys, no_model_load):
    d = copy_of(scene_dir, tmp_path / "room")
    for p in d.glob("*.depth.png"):
        p.unlink()  # a colour-only scene: nothing but K says what the frame should be
    f = d / "frame-000003.color.jpg"
    assert cv2.imwrite(str(f), cv2.resize(cv2.imread(str(f)), (W, 2 * H)))
    rc, _, err = run_cli(capsys, "lift", d, "--out", tmp_path / "o", *LIFT_OPTS, "--model-path", tiny_dino)
    assert_clean_error(rc, err, f, "aspect ratio", f"{W}x{2 * H}")


def test_scannet_frame_of_another_size_gets_K_rescaled(tmp_path):
    from fit3d.data import read_scene
    from fit3d.data.synthetic import SyntheticSceneConfig, generate_scene, write_scene

    d = write_scene(generate_scene(SyntheticSceneConfig(num_views=3, width=32, height=24, seed=0)), tmp_path / "s")
    shutil.rmtree(d / "depth")  # without depth the colour size is the grid
    K0 = read_scene(d).views[0].K
    f = d / "color" / "1.png"
    assert cv2.imwrite(str(f), cv2.resize(cv2.imread(str(f)), (64, 48)))
    s = read_scene(d)
    np.testing.assert_allclose(s.views[1].K[:2], 2 * K0[:2])
    np.testing.assert_allclose(s.views[0].K, K0)


# ------------------------------------------------------------------ field of view
@pytest.mark.parametrize("fov", ["180", "0", "-10", "250", "nan"])
def test_generate_field_of_view_outside_the_open_interval(fov, tmp_path, capsys):
    """Was: --fov-deg 180 wrote fx ~ 1e-15, and lift accepted it."""
    rc, _, err = run_cli(capsys, "generate", tmp_path / "g", "--num-scenes", "1", "--num-views", "2",
                         "--width", "16", "--height", "12", "--fov-deg", fov)
    assert_clean_error(rc, err, "--fov-deg")
    assert not (tmp_path / "g").exists()


def test_lift_refuses_a_degenerate_focal_length(scene_dir, tiny_dino, tmp_path, capsys, no_model_load):
    d = copy_of(scene_dir, tmp_path / "room")
    np.savetxt(d / "camera-intrinsics.txt", [[1e-15, 0, 20], [0, 1e-15, 15], [0, 0, 1]])
    rc, _, err = run_cli(capsys, "lift", d, "--out", tmp_path / "o", *LIFT_OPTS, "--model-path", tiny_dino)
    assert_clean_error(rc, err, "field of view", "frame-000000")


# ------------------------------------------------------------------ non-finite weights, layers
def _nan_finetuned(finetuned, tmp_path):
    from safetensors.torch import load_file, save_file

    ft = copy_of(finetuned[0], tmp_path / "ft")
    f = ft / "model" / "model.safetensors"
    sd = load_file(str(f))
    k = next(k for k in sd if sd[k].is_floating_point() and sd[k].ndim == 2)
    sd[k][0, 0] = float("nan")
    save_file(sd, str(f), metadata={"format": "pt"})
    import json

    m = json.loads((ft / "fit3d.json").read_text())
    m.pop("finetuned_fingerprint", None)  # the record is edited along (else its fingerprint check names it first)
    (ft / "fit3d.json").write_text(json.dumps(m))
    return ft


def test_compare_with_non_finite_weights_names_the_model(finetuned, scene_dir, tmp_path, capsys):
    """Was: a LinAlgError traceback from the PCA."""
    ft = _nan_finetuned(finetuned, tmp_path)
    rc, _, err = run_cli(capsys, "compare", scene_dir / "frame-000000.color.jpg", "--finetuned", ft, "--out",
                         tmp_path / "o", "--device", "cpu")
    assert_clean_error(rc, err, ft / "model", "NaN")


@pytest.mark.parametrize("layers", [["99"], ["0", "-5"]])
def test_probe_layers_out_of_range(layers, scene_dir, tiny_dino, tmp_path, capsys, monkeypatch):
    """Was: a ValueError traceback from the backbone once features were being extracted."""
    import fit3d.probe.sources as sources

    monkeypatch.setattr(sources, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    rc, _, err = run_cli(capsys, "probe", "--task", "depth", "--data", scene_dir, "--out", tmp_path / "p",
                         "--model-path", tiny_dino, "--layers", *layers)
    assert_clean_error(rc, err, "--layers", "1 blocks")


# ------------------------------------------------------------------ unreadable scene folders
def test_scene_folder_without_read_permission(scene_dir, tiny_dino, tmp_path, capsys, monkeypatch):
    """Was: a PermissionError traceback. Simulated (root reads any folder): listing it fails with EACCES."""
    d = copy_of(scene_dir, tmp_path / "room")
    real_listdir, real_scandir = os.listdir, os.scandir

    def deny(fn):
        def f(p=".", *a, **k):
            if os.path.realpath(p) == os.path.realpath(d):
                raise PermissionError(errno.EACCES, "Permission denied", str(p))
            return fn(p, *a, **k)
        return f

    monkeypatch.setattr(os, "listdir", deny(real_listdir))
    monkeypatch.setattr(os, "scandir", deny(real_scandir))
    os.chmod(d, 0)  # what a non-root user meets for real
    try:
        rc, _, err = run_cli(capsys, "lift", d, "--out", tmp_path / "o", *LIFT_OPTS, "--model-path", tiny_dino)
    finally:
        os.chmod(d, 0o755)
    assert_clean_error(rc, err, d, "Permission denied")


# ------------------------------------------------------------------ sizes beyond the machine's memory
BIG = "100000"


@pytest.mark.parametrize("case", ["lift width", "lift feature size", "probe resolution", "finetune resolution",
                                  "generate size", "compare max side", "demo size"])
def test_sizes_beyond_memory_are_refused_at_once(case, scene_dir, lifted, finetuned, tiny_dino, tmp_path, capsys,
                                                 no_model_load):
    """Was: an allocation attempt (and an OOM) instead of a bound."""
    argv, option = {
        "lift width": (["lift", scene_dir, "--out", tmp_path / "o", *LIFT_OPTS, "--model-path", tiny_dino,
                        "--width", BIG], "--width"),
        "lift feature size": (["lift", scene_dir, "--out", tmp_path / "o", *LIFT_OPTS, "--model-path", tiny_dino,
                               "--feature-size", BIG], "--feature-size"),
        "probe resolution": (["probe", "--task", "depth", "--data", scene_dir, "--out", tmp_path / "o",
                              "--model-path", tiny_dino, "--resolution", BIG, BIG], "--resolution"),
        "finetune resolution": (["finetune", "--scenes", lifted[0] / "room", "--out", tmp_path / "o", "--model-path",
                                 tiny_dino, "--resolution", BIG, BIG, "--workers", "0"], "--resolution"),
        "generate size": (["generate", tmp_path / "o", "--width", BIG, "--height", BIG], "--width"),
        "compare max side": (["compare", scene_dir / "frame-000000.color.jpg", "--finetuned", finetuned[0], "--out",
                              tmp_path / "o", "--max-side", BIG, "--short-side", BIG], "--max-side"),
        "demo size": (["demo", "--out", tmp_path / "o", "--width", BIG, "--height", BIG, "--model-path", tiny_dino],
                      "--width"),
    }[case]
    rc, _, err = run_cli(capsys, *argv)
    assert_clean_error(rc, err, option, "GiB")
    assert not (tmp_path / "o").exists()


def test_memory_bound_accepts_the_defaults():
    from fit3d.compare import CompareConfig
    from fit3d.data.synthetic import SyntheticSceneConfig
    from fit3d.finetune.config import FinetuneConfig
    from fit3d.lift.config import LiftConfig
    from fit3d.probe.config import ProbeConfig

    for cfg in (LiftConfig(), FinetuneConfig(resolution=[448, 336]), ProbeConfig(), SyntheticSceneConfig(),
                CompareConfig(), LiftConfig(width=876, height=584, feature_size=1344)):
        cfg.validate()
