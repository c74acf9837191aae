"""Stage 1 by closed-form features (``method = "solve"``): the solve's maths against dense float64 references,
the routes (depth / points / neither), bad input, and an end-to-end lift of a tiny synthetic scene."""

from __future__ import annotations

import dataclasses

import math

import numpy as np
import scipy.sparse as sp
import pytest
import torch
import torch.nn.functional as F

from fit3d.data.scene import Scene, View
from fit3d.errors import Fit3DError
from fit3d.lift import LiftConfig, lift_scene, load_lifted
from fit3d.lift.config import SolveConfig
from fit3d.lift.fuse import fuse_points, normal_quats
from fit3d.lift.init import raster_geometry
from fit3d.lift.solve.cg import conjugate_gradient, weighted_average
from fit3d.lift.solve.passes import accumulate, normal_matvec
from fit3d.splat.fixed_views import FixedViews
from fit3d.splat.reference import rasterize_reference

W, H = 16, 12
K = np.array([[14.0, 0, W / 2], [0, 14.0, H / 2], [0, 0, 1]])


def _look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """c2w [4, 4], OpenCV axes."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    c2w[:3, 3] = eye
    return c2w


def _views(n=3):
    return [View(image=np.zeros((H, W, 3), np.float32), K=K, c2w=_look_at((3.0, 0.4 * i - 0.4, 0.5)),
                 name=f"frame-{i:06d}") for i in range(n)]


def _gaussians(n=12, seed=0, opacity=0.7):
    """Raw params (init_params layout) of n overlapping Gaussians near the origin."""
    g = torch.Generator().manual_seed(seed)
    return {"means": (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.3, 1.2, 0.9]),
            "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
            "log_scales": torch.full((n, 3), math.log(0.12)) + 0.3 * torch.randn(n, 3, generator=g),
            "opacity_logits": torch.full((n,), math.log(opacity / (1 - opacity)))}


def _fixed(params, views, keep=False) -> FixedViews:
    """The numba backend's fixed-geometry renders of ``views``."""
    return FixedViews(*raster_geometry(params), views, W, H, "numba", keep=keep)


def _dense_weights(params, v) -> torch.Tensor:
    """[H*W, N] compositing weights w_pj from the float64 reference rasterizer (one-hot colours)."""
    n = len(params["means"])
    vm = torch.linalg.inv(torch.as_tensor(v.c2w))
    img, _, _ = rasterize_reference(params["means"], params["quats"], params["log_scales"].exp(),
                                    torch.sigmoid(params["opacity_logits"]), torch.eye(n, dtype=torch.float64),
                                    vm, torch.as_tensor(v.K), W, H)
    return img.reshape(H * W, n)


def test_weights_through_the_backward_equal_a_float64_accumulation():
    params, views = _gaussians(), _views()
    g = torch.Generator().manual_seed(1)
    targets = [torch.randn(H, W, 5, generator=g) for _ in views]
    num, den = accumulate(_fixed(params, views), lambda i: targets[i])
    ref_num = sum(_dense_weights(params, v).T @ t.reshape(-1, 5).double() for v, t in zip(views, targets))
    ref_den = sum(_dense_weights(params, v).sum(0) for v in views)
    assert float(ref_den.min()) > 0  # every Gaussian is seen: the comparison covers all of them
    torch.testing.assert_close(den, ref_den, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(num, ref_num, rtol=1e-4, atol=1e-4)
    # the weighted average is the exact minimiser of sum_p sum_j w_pj |f_j - F(p)|^2 (each Gaussian's
    # weighted fit to the pixels it touches): check against gradient descent on that objective
    f, keep = weighted_average(num, den)
    assert keep.all()
    Ws = [_dense_weights(params, v) for v in views]
    x = torch.zeros_like(f, requires_grad=True)
    opt = torch.optim.LBFGS([x], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = sum((w[:, :, None] * (x[None] - t.reshape(-1, 1, 5).double()) ** 2).sum() for w, t in zip(Ws, targets))
        loss.backward()
        return loss
    opt.step(closure)
    torch.testing.assert_close(f, x.detach(), rtol=0, atol=1e-5)


def test_cg_reaches_the_least_squares_optimum_of_the_render_loss():
    """With overlapping Gaussians the weighted average is not the minimiser of sum_p |sum_j w_pj f_j - F(p)|^2;
    CG from it reaches the same optimum as gradient descent (L-BFGS) on the rendered loss, within 1e-3
    relative, and lowers the loss below the weighted average's."""
    params, views = _gaussians(opacity=0.5), _views()
    g = torch.Generator().manual_seed(2)
    # targets a consistent field can explain exactly: the render of random per-Gaussian features
    f_true = torch.randn(len(params["means"]), 4, generator=g, dtype=torch.float64)
    Ws = [_dense_weights(params, v) for v in views]
    targets = [(w @ f_true).reshape(H, W, 4).float() for w in Ws]
    num, den = accumulate(_fixed(params, views), lambda i: targets[i])
    f0, _ = weighted_average(num, den)
    mv = lambda X: normal_matvec(_fixed(params, views), X, None)  # noqa: E731
    f_cg, hist = conjugate_gradient(mv, num, f0, den, iterations=40)
    assert hist[-1] < 1e-3 * hist[0], hist

    x = f0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")
    loss_of = lambda z: sum(((w @ z - t.reshape(-1, 4).double()) ** 2).sum() for w, t in zip(Ws, targets))  # noqa: E731

    def closure():
        opt.zero_grad()
        loss = loss_of(x)
        loss.backward()
        return loss
    opt.step(closure)
    gd = x.detach()
    assert float(loss_of(f_cg)) < 0.1 * float(loss_of(f0))
    assert float(loss_of(f_cg)) <= float(loss_of(gd)) + 1e-3 * float(loss_of(f0))
    # the optimum: compare rendered features (unique even where the system is rank deficient)
    rend = lambda z: torch.cat([w @ z for w in Ws])  # noqa: E731
    err = (rend(f_cg) - rend(gd)).norm() / rend(gd).norm()
    assert float(err) < 1e-3, float(err)


def test_fused_surfels_sit_on_the_depth_surface_facing_the_camera():
    v = _views(1)[0]
    v.depth = np.full((H, W), 2.0, np.float32)  # a fronto-parallel plane 2 m ahead
    means, normals, cols, foot, vox = fuse_points([v], max_points=10_000)
    z = (means - v.c2w[:3, 3]) @ v.c2w[:3, 2]  # camera-frame depth of every surfel
    np.testing.assert_allclose(z, 2.0, atol=1e-6)
    np.testing.assert_allclose(normals @ v.c2w[:3, 2], -1.0, atol=1e-6)  # towards the camera
    np.testing.assert_allclose(foot, 2.0 / 14.0, rtol=1e-6)
    from fit3d.splat.densify import quat_to_rotmat

    R = quat_to_rotmat(torch.as_tensor(normal_quats(normals)))  # z axis (the flat one) = the normal
    np.testing.assert_allclose(R[:, :, 2].numpy(), normals, atol=1e-6)


# ------------------------------------------------------------------ lifting end to end
class _ColourBackbone:
    """Each 4x4 patch -> tanh(A @ mean colour + b), D = 12: multi-view consistent stand-in tokens."""

    patch_size, embed_dim = 4, 12

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.A, self.b = torch.randn(12, 3, generator=g) * 3, torch.randn(12, generator=g)

    @torch.inference_mode()
    def features(self, images):
        f = torch.tanh(torch.einsum("dc,bchw->bdhw", self.A, F.avg_pool2d(images, 4) - 0.5)
                       + self.b[None, :, None, None])
        return f, f.mean((2, 3))


def _room(n_views=10, width=32, height=24) -> Scene:
    """Views of a corner (three textured planes of flat Gaussians) with rendered RGB + depth."""
    from fit3d.lift.init import as_gaussians
    from fit3d.splat.gaussians import rgb_to_sh_dc
    from fit3d.splat.render import render

    rng = np.random.default_rng(0)
    pal = np.array([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9], [0.9, 0.9, 0.3]], np.float32)
    pts, cols = [], []
    for axis in range(3):
        p = rng.uniform(-1, 1, (300, 3))
        p[:, axis] = -1.0
        o = [a for a in range(3) if a != axis]
        pts.append(p)
        cols.append(pal[(np.floor((p[:, o[0]] + 1) * 2) + np.floor((p[:, o[1]] + 1) * 2) * 3 + axis).astype(int) % 4])
    pts, cols = torch.tensor(np.concatenate(pts), dtype=torch.float32), torch.tensor(np.concatenate(cols))
    n = len(pts)
    g = as_gaussians({"means": pts, "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                      "log_scales": torch.full((n, 3), math.log(0.1)), "opacity_logits": torch.full((n,), 3.0),
                      "sh_dc": rgb_to_sh_dc(cols)[:, None], "sh_rest": torch.zeros(n, 0, 3),
                      "features": torch.zeros(n, 0)}, 0)
    Kr = np.array([[28.0, 0, width / 2], [0, 28.0, height / 2], [0, 0, 1]])
    views = []
    for i in range(n_views):
        a = 0.5 * math.pi * i / n_views + math.pi / 8
        c2w = _look_at((2.2 * math.cos(a) + 0.3, 2.2 * math.sin(a) + 0.3, 0.8), target=(-0.5, -0.5, -0.5))
        with torch.no_grad():
            r = render(g, Kr, c2w, width, height, with_features=False)
        views.append(View(image=r.rgb.clamp(0, 1).numpy(), K=Kr, c2w=c2w, name=f"frame-{2 * i:06d}",
                          depth=torch.where(r.alpha > 0.5, r.depth, 0 * r.depth).numpy()))
    return Scene(name="room", views=views, source="synthetic")


def _cfg(top: dict | None = None, **solve) -> LiftConfig:
    """A small solve lift; ``solve``: ``SolveConfig`` fields, ``top``: other ``LiftConfig`` fields."""
    s = dict(min_views=1, max_gaussians=3000, cg_iterations=3, view_stride=1, geometry_iterations=0, ridge_select=False)
    s.update(solve)
    return LiftConfig(method="solve", backbone="colour", width=32, feature_size=32, feature_dim=6, progress=False,
                      pca_views=0, device="cpu", max_sh_degree=1, solve=SolveConfig(**s), **(top or {}))


@pytest.fixture(scope="module")
def room():
    return _room()


def test_solve_lifts_a_scene_with_depth(room, tmp_path):
    meta = lift_scene(room, _cfg(), tmp_path / "room", backbone=_ColourBackbone())
    h = meta["heldout"]
    assert meta["method"] == "solve" and meta["init"] == "depth-fused"
    assert h["feature_cosine"] > h["baseline_mean_cosine"] + 0.05, h
    assert h["depth_abs_rel"] < 0.1, h
    assert set(meta["timings"]) >= {"features", "geometry", "solve", "lift", "eval"}
    cg = meta["solve"]["cg_residual"]
    assert cg[-1] < cg[0], cg
    lifted = load_lifted(tmp_path / "room")  # the same folder Stage 2 reads
    assert lifted.gaussians.feature_dim == 6 and torch.isfinite(lifted.gaussians.features).all()
    assert len(lifted.gaussians) == meta["gaussians"]


def test_cg_beats_the_weighted_average_alone(room, tmp_path):
    a = lift_scene(room, _cfg(cg_iterations=0), tmp_path / "a", backbone=_ColourBackbone())
    b = lift_scene(room, _cfg(cg_iterations=4), tmp_path / "b", backbone=_ColourBackbone())
    assert b["heldout"]["feature_cosine"] > a["heldout"]["feature_cosine"], (a["heldout"], b["heldout"])


def test_scene_without_depth_takes_the_colour_route(room, tmp_path):
    pts = np.concatenate([v.unproject(np.stack(np.nonzero(v.depth > 0)[::-1], 1) + 0.5, v.depth[v.depth > 0])
                          for v in room.views[1:3]])[::7]
    views = [View(image=v.image, K=v.K, c2w=v.c2w, name=v.name) for v in room.views]  # no depth
    scene = Scene(name="nodepth", views=views, source="synthetic", points=pts.astype(np.float32),
                  points_rgb=np.full((len(pts), 3), 0.5, np.float32))
    meta = lift_scene(scene, _cfg(nodepth_iterations=40), tmp_path / "nd", backbone=_ColourBackbone())
    assert meta["init"] == "points+colour"
    assert meta["history"] and meta["history"][-1]["iteration"] == 40
    assert meta["heldout"]["feature_cosine"] > meta["heldout"]["baseline_mean_cosine"], meta["heldout"]


def test_no_depth_and_no_points_is_lifted_by_optimize(room, tmp_path):
    """The default method lifts a scene with neither depth nor points: by optimize (random start, colour and
    features together), above the scene-mean baseline (solve's colour-only route from random points was not:
    0.61 against 0.69 on this room)."""
    views = [View(image=v.image, K=v.K, c2w=v.c2w, name=v.name) for v in room.views]
    with pytest.warns(UserWarning, match="optimize instead of solve"):
        meta = lift_scene(Scene(name="bare", views=views, source="synthetic"),
                          dataclasses.replace(_cfg(), iterations=300, init_points=2000), tmp_path / "x",
                          backbone=_ColourBackbone())
    assert meta["method"] == "solve" and meta["solve"]["fell_back_to"] == "optimize" and meta["init"] == "random"
    h = meta["heldout"]
    assert h["feature_cosine"] > h["baseline_mean_cosine"], h
    assert load_lifted(tmp_path / "x").gaussians.feature_dim == 6


def test_a_view_that_sees_no_gaussian_is_a_clear_error(room, tmp_path):
    views = list(room.views)
    away = views[3]
    c2w = away.c2w.copy()
    c2w[:3, :3] = c2w[:3, :3] @ np.diag([-1.0, 1.0, -1.0])  # turned round: every Gaussian behind it
    views[3] = View(image=away.image, K=away.K, c2w=c2w, name=away.name)  # no depth: fusion ignores it
    with pytest.raises(Fit3DError, match=f"{away.name} sees none"):
        lift_scene(Scene(name="away", views=views, source="synthetic"), _cfg(), tmp_path / "y",
                   backbone=_ColourBackbone())


def test_free_space_carving_drops_a_floater():
    from fit3d.lift.fuse import free_space_violations

    views = _views(3)
    for v in views:
        v.depth = np.full((H, W), 3.0, np.float32)  # a wall ~3 m ahead of every camera
    wall = np.array([[0.0, 0.0, 0.5]])  # on the line of sight, far behind the floater
    floater = np.array([[2.0, 0.0, 0.5]])  # 1 m in front of the cameras, well before the wall
    seen, bad = free_space_violations(np.concatenate([wall, floater]), views, 0.05)
    assert list(seen) == [3, 3] and bad[1] == 3 and bad[0] == 0


def test_lift_help_lists_the_solve_options():
    import argparse

    from fit3d.config import from_args
    from fit3d.lift.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    text = p.format_help()  # argparse %-formats every help string: a stray % breaks --help
    assert "{optimize,solve,backprojected}" in text and "--solve.cg-iterations" in text
    assert "--solve-cg-iterations" not in text  # the old flat spelling: a hidden alias of the nested option
    for argv in (["--solve.cg-iterations", "7"], ["--solve-cg-iterations", "7"]):
        assert from_args(LiftConfig, p.parse_args(["s", "--out", "o", *argv])).solve.cg_iterations == 7


def test_cg_stops_once_the_residual_is_below_the_tolerance():
    params, views = _gaussians(opacity=0.5), _views()
    g = torch.Generator().manual_seed(3)
    targets = [torch.randn(H, W, 3, generator=g) for _ in views]
    num, den = accumulate(_fixed(params, views), lambda i: targets[i])
    f0, _ = weighted_average(num, den)
    mv = lambda X: normal_matvec(_fixed(params, views), X, None)  # noqa: E731
    _, full = conjugate_gradient(mv, num, f0, den, iterations=30)
    tol = full[len(full) // 3]  # a residual that the full run passes a third of the way in
    _, early = conjugate_gradient(mv, num, f0, den, iterations=30, tol=tol)
    assert early[-1] <= tol < early[-2] and len(early) < len(full), (early, full)


def test_joint_refinement_from_the_weighted_average_beats_it(room, tmp_path):
    """solve_joint_iterations runs optimize's loss on everything from the solved field: starting from the
    plain weighted average (no CG) it must raise the held-out cosine, and it is timed and recorded."""
    a = lift_scene(room, _cfg(cg_iterations=0), tmp_path / "a", backbone=_ColourBackbone())
    b = lift_scene(room, _cfg(cg_iterations=0, joint_iterations=60), tmp_path / "b",
                   backbone=_ColourBackbone())
    assert b["heldout"]["feature_cosine"] > a["heldout"]["feature_cosine"], (a["heldout"], b["heldout"])
    assert b["timings"]["joint"] > 0 and b["history"][-1] == {**b["history"][-1], "phase": "joint", "iteration": 60}
    assert {"fusion", "colour", "average", "cg", "lift_cpu"} <= set(b["timings"])


def test_least_squares_decoder_beats_the_pca_basis(room, tmp_path):
    """solve_decoder=lsq fits every tap of the decoder to the training tokens; on held-out views it must beat
    the PCA decoder the features were solved in, and its fit is recorded."""
    a = lift_scene(room, _cfg(decoder="pca"), tmp_path / "a", backbone=_ColourBackbone())
    b = lift_scene(room, _cfg(decoder="lsq"), tmp_path / "b", backbone=_ColourBackbone())
    assert b["heldout"]["feature_cosine"] > a["heldout"]["feature_cosine"], (a["heldout"], b["heldout"])
    n_train = len(b["scene"]["train_views"])  # every solve_decoder_stride-th (2nd) of them
    assert b["solve"]["decoder"]["views"] == (n_train + 1) // 2 and b["timings"]["decoder"] > 0
    assert "decoder" not in a["solve"]


def test_cached_projections_give_the_same_products_on_every_pass():
    """FixedViews (projections kept across CG passes) against fresh rasterisation of each pass."""
    params, views = _gaussians(opacity=0.5), _views()
    X = torch.randn(len(params["means"]), 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    fv = _fixed(params, views, keep=True)
    fresh = normal_matvec(_fixed(params, views), X, (3, 4))
    for _ in range(2):
        torch.testing.assert_close(normal_matvec(fv, X, (3, 4)), fresh)
    assert len(fv._cache) == len(views)


@pytest.mark.parametrize("grid", [None, (3, 4), (5, 7)])
def test_sparse_weights_give_the_rasterised_passes(grid):
    """ViewWeights (each view's compositing weights extracted once, every pass a sparse product) against the
    rasterised passes: the same weight sums, right-hand side and normal operator, on exact (3, 4) and
    overlapping (5, 7) adaptive-pooling windows as well as at pixels."""
    from fit3d.lift.solve.weights import ViewWeights

    params, views = _gaussians(opacity=0.5), _views()
    g = torch.Generator().manual_seed(5)
    X = torch.randn(len(params["means"]), 4, generator=g, dtype=torch.float64)
    fv = _fixed(params, views, keep=True)
    vw = ViewWeights(fv, grid)
    torch.testing.assert_close(vw.matvec(X), normal_matvec(fv, X, grid), rtol=1e-4, atol=1e-5)
    if grid is None or grid == (3, 4):  # there nearest upsampling is area x the pooling's adjoint
        t = [torch.randn(*(grid or (H, W)), 4, generator=g) for _ in views]
        up = [F.interpolate(x.permute(2, 0, 1)[None], size=(H, W), mode="nearest")[0].permute(1, 2, 0) for x in t]
        num, den = accumulate(fv, lambda i: up[i])
        torch.testing.assert_close(vw.rhs(torch.cat([x.reshape(-1, 4) for x in t])), num, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(vw.den, den, rtol=1e-5, atol=1e-6)
    kept = vw.den > float(vw.den.median())  # dropping Gaussians = their columns: zero features elsewhere
    full = vw.matvec(torch.where(kept[:, None], X, torch.zeros_like(X)))
    torch.testing.assert_close(vw.keep(kept).matvec(X[kept]), full[kept])


@pytest.mark.parametrize("grid", [None, (4, 6), (5, 7)])
def test_pooled_design_is_the_pooled_unfold(grid):
    """pooled_design's box filter + strided unfold (exact 3x3 blocks of a 12x18 image) and its general path
    (overlapping windows) against the pixel-level unfold average-pooled, as the decoder's fit used it."""
    from fit3d.lift.solve.lsq_decoder import pooled_design

    img = torch.randn(1, 3, 12, 18, generator=torch.Generator().manual_seed(0))
    for k in (1, 3, 5):
        cols = F.unfold(img, k, padding=k // 2).reshape(1, 3 * k * k, 12, 18)
        want = cols[0].reshape(3 * k * k, -1) if grid is None else F.adaptive_avg_pool2d(cols, grid)[0].reshape(3 * k * k, -1)
        torch.testing.assert_close(pooled_design(img, k, grid), want)


def test_normal_equations_give_the_least_squares_solution():
    """Buffered ssyrk / GEMM sums over uneven row blocks, then the ridge solve, against the stacked lstsq."""
    from fit3d.lift.solve.lsq_decoder import NormalEquations

    g = torch.Generator().manual_seed(1)
    blocks = [(torch.randn(n, 6, generator=g), torch.randn(n, 4, generator=g)) for n in (5, 17, 3, 30)]
    ne = NormalEquations(6, 4, rows=20)  # flushes after the second and the fourth block
    for X, Y in blocks:
        ne.add(X, Y)
    X, Y = (torch.cat(t).double() for t in zip(*blocks))
    torch.testing.assert_close(ne.solve(0.0), torch.linalg.lstsq(X, Y).solution, rtol=1e-5, atol=1e-6)
    lam = 0.1 * float((X.T @ X).diagonal().mean())
    torch.testing.assert_close(ne.solve(0.1), torch.linalg.solve(X.T @ X + lam * torch.eye(6, dtype=torch.float64), X.T @ Y),
                               rtol=1e-5, atol=1e-6)


def test_decoder_from_the_kept_pixel_weights_equals_the_rasterised_one(room, tmp_path, monkeypatch):
    """With the decoder's views every 2nd of the solve's, fit_decoder renders through the CG's kept compositing
    weights (sparse products); the decoder must be the one fitted from rasterised renders."""
    import fit3d.lift.solve.driver as solve_mod
    from safetensors.torch import load_file

    cfg = _cfg(dict(raster_backend="numba"), decoder_kernel=3, decoder_stride=2)
    used = []
    fit = solve_mod.fit_decoder

    def spy(*a, weights=None, **kw):
        used.append(weights is not None)
        return fit(*a, weights=weights, **kw)
    monkeypatch.setattr(solve_mod, "fit_decoder", spy)
    lift_scene(room, cfg, tmp_path / "a", backbone=_ColourBackbone())
    monkeypatch.setattr(solve_mod, "fit_decoder", lambda *a, weights=None, **kw: spy(*a, **kw))
    lift_scene(room, cfg, tmp_path / "b", backbone=_ColourBackbone())
    assert used == [True, False]
    wa, wb = (load_file(str(tmp_path / d / "decoder.safetensors")) for d in "ab")
    assert wa.keys() == wb.keys()
    for k in wa:
        # float32 renders agree to ~1e-6; the least-squares solve amplifies that to ~2e-4 of the largest tap
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-3 * float(wb[k].abs().max()))


def test_view_subsets_of_the_weights_are_their_rows():
    """ViewWeights.views(idx): the listed views' rows of M, their normal operator = the sum of those views'."""
    from fit3d.lift.solve.weights import ViewWeights

    params, views = _gaussians(opacity=0.5), _views()
    fv = _fixed(params, views, keep=True)
    vw = ViewWeights(fv, (3, 4))
    X = torch.randn(len(params["means"]), 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    parts = [vw.views([i]) for i in range(len(views))]
    torch.testing.assert_close(sum(p.matvec(X) for p in parts), vw.matvec(X), rtol=1e-5, atol=1e-6)
    sub = vw.views([0, 2])
    assert (sub.M != sp.vstack([vw.M[:12], vw.M[24:36]])).nnz == 0
    torch.testing.assert_close(sub.den, parts[0].den + parts[2].den)


def test_ridge_selection_picks_a_candidate_and_records_it(room, tmp_path, monkeypatch):
    """solve_ridge_select scores the candidates on held-back training views and keeps the best; the lift's
    held-out cosine is then within 1e-3 of the better of the grid's two ends, fixed (here: above both).
    Stopping after the first falling score (the default) runs a prefix of the grid and gives the same choice and
    the same lift as scoring every candidate."""
    import functools

    from fit3d.lift.solve import features
    from fit3d.lift.solve.cg import RIDGE_CANDIDATES, select_ridge

    sel = lift_scene(room, _cfg(cg_iterations=10, ridge_select=True), tmp_path / "sel",
                     backbone=_ColourBackbone())
    info = sel["solve"]
    monkeypatch.setattr(features, "select_ridge", functools.partial(select_ridge, stop_early=False))
    full = lift_scene(room, _cfg(cg_iterations=10, ridge_select=True), tmp_path / "full",
                      backbone=_ColourBackbone())
    monkeypatch.undo()
    scores = full["solve"]["ridge_scores"]
    assert list(scores) == [f"{r:g}" for r in RIDGE_CANDIDATES]
    run = list(info["ridge_scores"])
    assert run == list(scores)[:len(run)] and info["ridge_scores"] == {k: scores[k] for k in run}
    assert info["ridge"] == full["solve"]["ridge"] == max(RIDGE_CANDIDATES, key=lambda r: scores[f"{r:g}"])
    assert sel["heldout"] == full["heldout"]
    ends = [lift_scene(room, _cfg(cg_iterations=10, cg_ridge=r),
                       tmp_path / f"r{r:g}", backbone=_ColourBackbone())["heldout"]["feature_cosine"]
            for r in (RIDGE_CANDIDATES[0], RIDGE_CANDIDATES[-1])]
    assert sel["heldout"]["feature_cosine"] >= max(ends) - 1e-3, (sel["heldout"], ends)


def test_ridge_selection_stops_after_its_peak():
    """select_ridge stops at the first candidate scoring below its predecessor: with noisy targets on few
    views (the strongest ridge predicts held-back views best) it runs two of the four candidates, and its
    choice and features equal those of scoring every candidate."""
    from fit3d.lift.solve.cg import RIDGE_CANDIDATES, select_ridge
    from fit3d.lift.solve.weights import ViewWeights

    params, views = _gaussians(n=80, opacity=0.5), _views(8)
    vw = ViewWeights(_fixed(params, views, keep=True), (3, 4))
    T = 1.0 + torch.randn(vw.M.shape[0], 4, generator=torch.Generator().manual_seed(0))
    full = select_ridge(vw, T, RIDGE_CANDIDATES, 10, 0.0, every=4, stop_early=False)
    early = select_ridge(vw, T, RIDGE_CANDIDATES, 10, 0.0, every=4)
    s = list(full[1].values())
    peak = s.index(max(s))
    assert all(a <= b for a, b in zip(s[:peak], s[1:peak + 1])) and all(a >= b for a, b in zip(s[peak:], s[peak + 1:]))
    assert len(early[1]) == 2 and early[1] == dict(list(full[1].items())[:len(early[1])])
    assert early[0] == full[0]
    torch.testing.assert_close(early[2], full[2], rtol=0, atol=0)


def test_colour_iterations_capped_per_training_view(room, tmp_path):
    """solve.geometry_iterations_per_view caps the colour-only iterations at that many per training view
    (0: no cap); the lift records the iterations it ran."""
    n_train = len(room.views) - len(room.views[::8])
    capped = lift_scene(room, _cfg(geometry_iterations=10 * n_train, geometry_iterations_per_view=0.5),
                        tmp_path / "c", backbone=_ColourBackbone())
    assert capped["solve"]["iterations"] == math.ceil(0.5 * n_train)
    free = lift_scene(room, _cfg(geometry_iterations=3, geometry_iterations_per_view=0), tmp_path / "f",
                      backbone=_ColourBackbone())
    assert free["solve"]["iterations"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rule for a CUDA device without gsplat (here: no GPU at all)")
def test_solve_passes_on_cuda_without_gsplat_take_numbas_sparse_path_on_the_cpu():
    from fit3d.lift.solve.passes import passes_backend, solve_views
    from fit3d.splat.rasterize import numba_available

    if not numba_available():
        pytest.skip("numba missing")
    cuda = torch.device("cuda")  # a device object only: nothing is allocated on it
    assert passes_backend("auto", cuda) == "numba"  # torch's rasterizer re-renders every view each pass
    assert passes_backend("torch", cuda) == "torch" and passes_backend("auto", "cpu") == "auto"
    params = {"means": torch.randn(20, 3) + torch.tensor([0, 0, 4.0]), "quats": torch.randn(20, 4),
              "log_scales": torch.full((20, 3), -2.0), "opacity_logits": torch.zeros(20)}
    view = View(name="v", image=np.zeros((8, 8, 3), np.float32), K=np.array([[8.0, 0, 4], [0, 8, 4], [0, 0, 1]]),
                c2w=np.eye(4))
    fv = solve_views(params, [view], 8, 8, "auto", cuda)
    assert fv.backend == "numba" and fv.device.type == "cpu"
    assert solve_views(params, [view], 8, 8, "auto", "cpu").device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rule for a CUDA device without gsplat (here: no GPU at all)")
def test_a_lift_on_cuda_without_gsplat_warns_that_its_iterations_are_slow():
    import warnings

    from fit3d.lift.config import LiftConfig
    from fit3d.lift.stage import warn_slow_raster

    with pytest.warns(UserWarning, match="without gsplat"):
        warn_slow_raster(LiftConfig(), torch.device("cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_slow_raster(LiftConfig(), torch.device("cpu"))
        warn_slow_raster(LiftConfig(raster_backend="torch"), torch.device("cuda"))  # chosen: no warning
