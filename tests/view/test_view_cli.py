"""``fit3d view`` / ``fit3d export`` on a small lifted scene: clean errors for bad input, the export's PLY."""

import socket

import numpy as np
import pytest
import torch

from fit3d.cli import main
from fit3d.lift.lifted import load_lifted
from fit3d.splat.sh import SH_C0
from fit3d.view.scenes import find_lifted, load_view_scene
from fit3d.view.splats import basis_colors, fit_feature_pca

from view_testkit import fake_finetuned

pytest.importorskip("viser")


def test_view_refuses_a_folder_that_is_not_lifted(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty"), "--port", "8181"]) == 1
    err = capsys.readouterr().err
    assert "not a finished lifted scene" in err and "empty" in err and "Traceback" not in err
    assert main(["view", str(tmp_path / "nowhere"), "--port", "8181"]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_view_refuses_a_port_in_use(view_lifted, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["view", str(view_lifted), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"--port {port}" in err and "in use" in err and "Traceback" not in err
    assert main(["view", str(view_lifted), "--port", "70000"]) == 1
    assert "not a TCP port" in capsys.readouterr().err


def test_view_refuses_a_finetuned_folder_of_another_backbone(view_lifted, view_model_dir, tmp_path, capsys):
    ft = fake_finetuned(tmp_path / "ft", view_model_dir, backbone="dinov2_base")
    assert main(["view", str(view_lifted), "--finetuned", str(ft), "--port", "8182"]) == 1
    err = capsys.readouterr().err
    assert "dinov2_base" in err and "dinov2_small" in err and str(ft) in err and "Traceback" not in err
    assert main(["view", str(view_lifted), "--finetuned", str(tmp_path), "--port", "8182"]) == 1
    assert "not a fit3d fine-tuned folder" in capsys.readouterr().err


def test_find_lifted_expands_run_folders(view_lifted):
    run = view_lifted.parent
    assert find_lifted([view_lifted]) == [view_lifted]
    assert find_lifted([run]) == [view_lifted]  # a folder of lifted scenes


def test_viewer_panel_and_colours(view_lifted, view_model_dir, tmp_path):
    """The server side without a browser: colour modes, a click on a Gaussian, the similarity panel."""
    from fit3d.view.cli import ViewConfig, start_viewer

    ft = fake_finetuned(tmp_path / "ft", view_model_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    v = start_viewer([view_lifted], ViewConfig(port=port, finetuned=str(ft), short_side=48))
    try:
        sp = v.scenes[0].splats
        assert len(v.scenes[0].frustums) == 8
        rgb = v.colors(0)
        v.set_mode("PCA")
        pca = v.colors(0)
        assert np.abs(pca - rgb).mean() > 0.05
        # a ray straight at a Gaussian from the first camera picks it and colours by similarity
        c = v.scenes[0].c2ws[0][:3, 3]
        k = int(np.argmax(sp.opacities[:, 0] * (np.linalg.norm(sp.centers - c, axis=1) < 1.5)))
        hit = v.click(c, sp.centers[k] - c)
        assert hit is not None and v.mode == "Similarity" and v.query is not None
        assert np.abs(v.colors(0) - pca).mean() > 0.05
        panel = v.panel_image(0, 2, (20.0, 30.0))
        assert panel.dtype == np.uint8 and panel.shape[0] > 3 * 180  # image, original, fine-tuned stacked
    finally:
        v.stop()


def test_export_writes_a_standard_ply_coloured_by_the_feature_pca(view_lifted, tmp_path, capsys):
    from plyfile import PlyData

    out = tmp_path / "scene_pca.ply"
    assert main(["export", str(view_lifted), "--colors", "pca", "--out", str(out)]) == 0
    v = PlyData.read(str(out))["vertex"].data
    names = set(v.dtype.names)
    assert {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "rot_3"} <= names
    assert not any(n.startswith("feat_") for n in names)
    lifted = load_lifted(view_lifted)
    sp = load_view_scene(view_lifted, cameras=False).splats
    want = basis_colors(fit_feature_pca([sp]), sp)
    got = SH_C0 * np.stack([v["f_dc_0"], v["f_dc_1"], v["f_dc_2"]], 1) + 0.5
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(v["x"], lifted.gaussians.means[:, 0].numpy())
    np.testing.assert_allclose(v["opacity"], lifted.gaussians.opacity_logits.numpy())
    assert np.abs(got - sp.rgbs).mean() > 0.05  # not the scene's own colours
    # never over its input or an existing file without --overwrite
    assert main(["export", str(view_lifted), "--out", str(view_lifted / "gaussians.ply")]) == 1
    assert main(["export", str(view_lifted), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.ply")]) == 1
    assert "not a finished lifted scene" in capsys.readouterr().err
    torch.testing.assert_close(load_lifted(view_lifted).gaussians.means, lifted.gaussians.means)


def test_viewer_of_several_scenes_switches_and_shares_a_basis(view_lifted, tmp_path):
    """Two scenes: one shown at a time; shared PCA gives one colour per feature across them."""
    import shutil

    from fit3d.view.cli import ViewConfig, start_viewer

    other = tmp_path / "room2"
    shutil.copytree(view_lifted, other)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    v = start_viewer([view_lifted, other], ViewConfig(port=port, max_splats=2000))
    try:
        assert [s.name for s in v.scenes] == [f"room ({view_lifted})", f"room ({other})"]  # one lift, copied
        assert len(v.scenes[1].splats) == 2000
        assert v.splat_handles[0].visible and not v.splat_handles[1].visible
        v.show_scene(1)
        assert v.splat_handles[1].visible and not v.splat_handles[0].visible
        assert not any(fh.visible for fh in v.frustum_handles[0]) and any(fh.visible for fh in v.frustum_handles[1])
        v.set_mode("PCA")
        v.set_shared(True)
        a, b = v.colors(0), v.colors(1)
        same = np.isin(v.scenes[0].splats.index, v.scenes[1].splats.index)
        common = np.intersect1d(v.scenes[0].splats.index, v.scenes[1].splats.index)
        ia = np.searchsorted(v.scenes[0].splats.index, common)
        ib = np.searchsorted(v.scenes[1].splats.index, common)
        assert same.any()
        np.testing.assert_allclose(a[ia], b[ib], atol=1e-6)  # the same Gaussian, the same colour in both
    finally:
        v.stop()
