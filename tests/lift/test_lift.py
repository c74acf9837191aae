"""Stage 1 on a small synthetic scene: learning, outputs, resume, CLI, density control, SSIM, cache."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fit3d.data.scene import Scene, View
from fit3d.splat.gaussians import FeatureGaussians, rgb_to_sh_dc
from fit3d.lift import LiftConfig, lift_scene
from fit3d.lift.lifted import is_lifted, load_lifted

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------ helpers (also used by the resume subprocess)
class ColourBackbone:
    """A tiny deterministic stand-in backbone: each 4x4 patch -> tanh(A @ mean colour + b), D = 16.
    Its features depend on surface colour only, so they are multi-view consistent and learnable."""

    patch_size = 4
    embed_dim = 16

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.A = torch.randn(16, 3, generator=g) * 3
        self.b = torch.randn(16, generator=g)

    def grid_size(self, H, W):
        return H // 4, W // 4

    def prepare(self, images):  # the test scenes' sizes are multiples of the patch already
        return images

    @torch.inference_mode()
    def features(self, images):  # [B, 3, H, W] -> ([B, 16, h, w], [B, 16])
        m = F.avg_pool2d(images, 4) - 0.5  # [B, 3, h, w]
        f = torch.tanh(torch.einsum("dc,bchw->bdhw", self.A, m) + self.b[None, :, None, None])
        return f, f.mean((2, 3))


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """c2w [4, 4] in OpenCV axes (x right, y down, z forward)."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], 1)
    c2w[:3, 3] = eye
    return c2w


def synthetic_gaussians(n_per_plane: int = 150, seed: int = 0) -> FeatureGaussians:
    """Ground truth: a floor and two walls of flat Gaussians coloured in 0.5 m tiles of 4 colours."""
    rng = np.random.default_rng(seed)
    palette = np.array([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9], [0.9, 0.9, 0.3]], np.float32)
    pts, cols = [], []
    for axis in range(3):  # planes x=-1, y=-1, z=-1 spanning [-1, 1]^2
        p = rng.uniform(-1, 1, (n_per_plane, 3))
        p[:, axis] = -1.0
        other = [a for a in range(3) if a != axis]
        tile = (np.floor((p[:, other[0]] + 1) * 2) + np.floor((p[:, other[1]] + 1) * 2) * 3 + axis).astype(int) % 4
        pts.append(p)
        cols.append(palette[tile])
    pts, cols = np.concatenate(pts).astype(np.float32), np.concatenate(cols)
    n = len(pts)
    t = torch.from_numpy
    sh = torch.zeros(n, 16, 3)
    sh[:, 0] = rgb_to_sh_dc(t(cols))
    return FeatureGaussians(t(pts), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.full((n, 3), math.log(0.12)),
                            torch.full((n,), 3.0), sh, torch.zeros(n, 0), sh_degree=0)


def synthetic_scene(n_views: int = 16, width: int = 32, height: int = 24) -> Scene:
    """Views on an arc looking into the corner, rendered from :func:`synthetic_gaussians` (RGB + depth)."""
    from fit3d.splat.render import render

    g = synthetic_gaussians()
    K = np.array([[28.0, 0, width / 2], [0, 28.0, height / 2], [0, 0, 1]])
    views = []
    for i in range(n_views):
        a = 2 * math.pi * i / n_views * 0.25 + math.pi / 8  # a quarter circle facing the corner
        eye = (2.2 * math.cos(a) + 0.3, 2.2 * math.sin(a) + 0.3, 0.8 + 0.2 * math.sin(3 * a))
        c2w = look_at(eye, target=(-0.5, -0.5, -0.5))
        with torch.no_grad():
            r = render(g, K, c2w, width, height, with_features=False)
        depth = torch.where(r.alpha > 0.5, r.depth, torch.zeros_like(r.depth))
        views.append(View(image=r.rgb.clamp(0, 1).numpy(), K=K, c2w=c2w, name=f"frame-{2 * i:06d}",
                          depth=depth.numpy().astype(np.float32)))
    return Scene(name="synthetic", views=views, source="synthetic")


def tiny_config(**kw) -> LiftConfig:
    base = dict(method="optimize", backbone="colour", width=32, feature_size=32, iterations=100, feature_dim=8,
                init_points=300, max_gaussians=700,
                checkpoint_every=0, progress=False, pca_views=1, device="cpu")
    base.update(kw)
    return LiftConfig(**base)


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene()


# ------------------------------------------------------------------ learning and outputs
def test_lift_learns_synthetic_scene(scene, tmp_path):
    meta = lift_scene(scene, tiny_config(), tmp_path / "synthetic", backbone=ColourBackbone())
    hist = meta["history"]
    first, last = hist[0], hist[-1]
    assert last["loss"] < 0.7 * first["loss"], hist
    assert last["feat"] < 0.7 * first["feat"], hist
    h = meta["heldout"]
    assert h["views"] == 2
    assert h["feature_cosine"] > h["baseline_mean_cosine"] + 0.05, h
    assert h["psnr"] > 13, h
    assert h["depth_abs_rel"] is not None and h["depth_abs_rel"] < 0.2, h

    out = tmp_path / "synthetic"
    assert is_lifted(out) and (out / "heldout_pca.png").exists()
    lifted = load_lifted(out)
    assert lifted.gaussians.feature_dim == 8 and lifted.decoder.out_dim == 16
    assert lifted.resolution == (32, 24) and len(lifted.gaussians) == meta["gaussians"]
    assert lifted.meta["scene"]["heldout_views"] == ["frame-000000", "frame-000016"]
    assert not set(lifted.meta["scene"]["heldout_views"]) & set(lifted.meta["scene"]["train_views"])
    assert not (out / "checkpoint.safetensors").exists()


def test_feature_dim_is_free_and_geometry_switch(scene, tmp_path):
    meta = lift_scene(scene, tiny_config(iterations=20, feature_dim=5, feature_grad_to_geometry=True, densify=False,
                                         pca_views=0), tmp_path / "s", backbone=ColourBackbone())
    assert load_lifted(tmp_path / "s").gaussians.feature_dim == 5
    assert meta["history"][-1]["iteration"] == 20


# ------------------------------------------------------------------ resume after a hard kill
RESUME_SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from test_lift import synthetic_scene, tiny_config, ColourBackbone
from fit3d.lift import lift_scene
lift_scene(synthetic_scene(), tiny_config(iterations=40, checkpoint_every=10, pca_views=0), {out!r},
           backbone=ColourBackbone())
"""


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    out = str(tmp_path / "killed")
    script = RESUME_SCRIPT.format(here=str(HERE), out=out)
    env = {**os.environ, "FIT3D_LIFT_STOP_AFTER": "25"}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr  # SIGKILLed right after the checkpoint at iteration 25
    assert (tmp_path / "killed" / "checkpoint.safetensors").exists() and not is_lifted(out)

    meta = lift_scene(synthetic_scene(), tiny_config(iterations=40, checkpoint_every=10, pca_views=0), out,
                      backbone=ColourBackbone())
    assert meta["resumed_from"] == 25 and meta["history"][-1]["iteration"] == 40
    assert is_lifted(out) and not (tmp_path / "killed" / "checkpoint.safetensors").exists()

    ref = lift_scene(synthetic_scene(), tiny_config(iterations=40, checkpoint_every=10, pca_views=0),
                     tmp_path / "straight", backbone=ColourBackbone())
    assert ref["resumed_from"] is None
    a, b = load_lifted(out), load_lifted(tmp_path / "straight")
    torch.testing.assert_close(a.gaussians.means, b.gaussians.means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.gaussians.features, b.gaussians.features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.decoder.conv.weight, b.decoder.conv.weight, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the methods as peers
def tiny_solve(**solve) -> LiftConfig:
    """A seconds-long solve lift of the synthetic scene (no colour phase, a few CG iterations)."""
    from fit3d.lift.config import SolveConfig

    s = dict(geometry_iterations=0, cg_iterations=3, ridge_select=False, decoder_kernel=3, max_gaussians=3000)
    return tiny_config(method="solve", solve=SolveConfig(**{**s, **solve}))


def test_every_method_is_registered_once_with_its_settings_nested():
    import dataclasses

    from fit3d.lift.methods import METHODS

    method = next(f for f in dataclasses.fields(LiftConfig) if f.name == "method")
    assert method.metadata["choices"] == tuple(METHODS) == ("optimize", "solve", "backprojected")
    cfg = LiftConfig()
    for name, m in METHODS.items():
        if m.config:  # the method's own settings: a nested config named after it
            assert dataclasses.is_dataclass(getattr(cfg, m.config)) and m.config == name


def test_backprojected_is_a_peer_written_by_the_one_writer(scene, tmp_path):
    """backprojected through lift_scene: the same folder and lift.json keys as every method, held-out metrics
    above the scene-mean baseline, and only its own nested settings recorded."""
    from fit3d.lift.config import BackprojectedConfig
    from fit3d.lift.lifted import META_FILE

    cfg = tiny_config(method="backprojected", backprojected=BackprojectedConfig(stride=2))
    meta = lift_scene(scene, cfg, tmp_path / "bp", backbone=ColourBackbone())
    solved = lift_scene(scene, tiny_solve(), tmp_path / "solve", backbone=ColourBackbone())
    on_disk = json.loads((tmp_path / "bp" / META_FILE).read_text())
    assert on_disk["method"] == "backprojected" and on_disk["gaussians"] == len(load_lifted(tmp_path / "bp").gaussians)
    assert set(on_disk) - {"backprojected"} == set(solved) - {"solve"}  # one key set, plus each method's record
    assert "num_gaussians" not in on_disk and "builder" not in on_disk
    assert on_disk["settings"]["backprojected"]["stride"] == 2 and "solve" not in on_disk["settings"]
    assert "backprojected" not in solved["settings"] and solved["settings"]["solve"]["cg_ridge"] == 1e-4
    h = meta["heldout"]
    assert h["feature_cosine"] > h["baseline_mean_cosine"], h
    assert 0 < meta["backprojected"]["explained_variance"] <= 1


def test_lifted_folders_of_older_versions_load_in_todays_keys(scene, tmp_path):
    """A back-projected folder written with num_gaussians / builder and a record with flat solve_* settings
    read as today's keys; an unchanged solve rerun reuses such a folder, a changed one names the nested field."""
    from fit3d.errors import Fit3DError
    from fit3d.lift.lifted import META_FILE, current_settings, lift_settings, reuse_finished

    out = tmp_path / "old"
    meta = lift_scene(scene, tiny_solve(), out, backbone=ColourBackbone())
    old = {k: v for k, v in meta.items() if k not in ("gaussians", "method")}
    old.update(num_gaussians=meta["gaussians"], builder="fit3d.lift.backprojected (depth back-projection)")
    (out / META_FILE).write_text(json.dumps(old))
    assert (load_lifted(out).meta["gaussians"], load_lifted(out).meta["method"]) == (meta["gaussians"], "backprojected")

    s = meta["settings"]
    flat = {**{k: v for k, v in s.items() if k != "solve"}, **{f"solve_{k}": v for k, v in s["solve"].items()}}
    assert current_settings(flat) == s
    assert current_settings({**flat, "method": "optimize"}) == {k: v for k, v in s.items() if k != "solve"} | {
        "method": "optimize"}
    (out / META_FILE).write_text(json.dumps({**meta, "settings": flat}))
    assert reuse_finished(out, lift_settings(tiny_solve(), "synthetic")) is not None
    from fit3d.config import set_fields

    with pytest.raises(Fit3DError, match=r"solve\.cg_ridge: 0\.0001 -> 0\.1"):
        reuse_finished(out, lift_settings(set_fields(tiny_solve(), ["solve_cg_ridge=0.1"]), "synthetic"))



def test_records_before_the_colour_cap_read_as_today(tmp_path):
    """A solve record without ``geometry_iterations_per_view`` ran uncapped colour iterations: read as 0 (a
    rerun with today's cap is a mismatch naming it), or as today's default when it ran none (reused)."""
    from fit3d.lift.config import SolveConfig
    from fit3d.lift.lifted import current_settings

    old = {"method": "solve", "solve": {"geometry_iterations": 300, "cg_ridge": 1e-4}}
    assert current_settings(old)["solve"]["geometry_iterations_per_view"] == 0.0
    none = {"method": "solve", "solve_geometry_iterations": 0}
    assert current_settings(none)["solve"] == {"geometry_iterations": 0, "geometry_iterations_per_view":
                                               SolveConfig.geometry_iterations_per_view}
    # a record from before the precision setting: float32 targets
    assert current_settings({"method": "optimize", "lr": 1}) == {"method": "optimize", "lr": 1, "precision": "fp32"}
    assert current_settings({"method": "optimize", "precision": "bf16"})["precision"] == "bf16"
