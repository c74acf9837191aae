"""rasterize(..., geometry_channels=k) and render(detach_geometry_for_features=True) in one pass,
held to the two-pass construction: first k channels (+ depth, alpha) through live geometry, the
rest through detached geometry."""

from __future__ import annotations

import math

import pytest
import torch

from fit3d.splat.gaussians import FeatureGaussians
from fit3d.splat.rasterize import gsplat_available, rasterize, rasterize_two_pass
from fit3d.splat.render import render

from test_rasterize import FAST, assert_matches_reference, make_scene, weighted_loss  # same folder

F64 = torch.float64
NAMES = ["image", "depth", "alpha", "d_means", "d_quats", "d_scales", "d_opacities", "d_colors"]

# (n, width, height, scene kwargs): multi-tile with partial edge tiles; opaque with early termination
SCENES = {
    "multi_tile": (40, 45, 37, dict(seed=0, channels=7)),
    "early_exit": (60, 32, 32, dict(opacity=(0.9, 1.0), scale=(0.4, 0.8), seed=3, depth=3.0, channels=7)),
}


def _grads(ps):
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in ps]


def one_pass(params, V, K, W, H, backend, k, loss=weighted_loss):
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    out = rasterize(*ps, V, K, W, H, backend=backend, geometry_channels=k)
    loss(*out).backward()
    return [o.detach() for o in out], _grads(ps)


def two_pass(params, V, K, W, H, backend, k, loss=weighted_loss):
    """The yardstick, built by hand: live render of colors[:, :k], detached render of colors[:, k:]."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    means, quats, scales, opac, colors = ps
    image_a, depth, alpha = rasterize(means, quats, scales, opac, colors[:, :k], V, K, W, H, backend=backend)
    image_b, _, _ = rasterize(means.detach(), quats.detach(), scales.detach(), opac.detach(), colors[:, k:],
                              V, K, W, H, backend=backend)
    out = (torch.cat([image_a, image_b], -1), depth, alpha)
    loss(*out).backward()
    return [o.detach() for o in out], _grads(ps)


def assert_all_close(got, want, rtol=1e-9):
    for name, a, b in zip(NAMES, got, want):
        scale = float(b.abs().max().clamp_min(1e-12))
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("scene", sorted(SCENES))
@pytest.mark.parametrize("k", [0, 3, 7])
@pytest.mark.parametrize("backend", FAST)
def test_one_pass_matches_two_pass(backend, k, scene):
    n, W, H, kw = SCENES[scene]
    params, V, K = make_scene(n, W, H, **kw)
    out1, g1 = one_pass(params, V, K, W, H, backend, k)
    out2, g2 = two_pass(params, V, K, W, H, backend, k)
    assert_all_close([*out1, *g1], [*out2, *g2])
    # the forward is exactly today's (all channels reach geometry)
    full, g_full = one_pass(params, V, K, W, H, backend, None)
    for a, b in zip(out1, full):
        assert torch.equal(a, b)
    if k < 7:  # the mask changed the geometry gradients: the test can tell the two apart
        assert not torch.allclose(g1[0], g_full[0])
    assert all(g.abs().sum() > 0 for g in g1)


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("backend", FAST)
def test_fast_backends_match_reference(backend, k):
    """The float64 reference's own one-pass (detached blend weights) agrees with numba / torch."""
    params, V, K = make_scene(30, 40, 35, seed=1, channels=5)
    assert_matches_reference(params, V, K, 40, 35, backend, geometry_channels=k)


def test_reference_matches_two_pass():
    params, V, K = make_scene(20, 24, 20, seed=2, channels=4)
    out1, g1 = one_pass(params, V, K, 24, 20, "reference", 1)
    out2, g2 = two_pass(params, V, K, 24, 20, "reference", 1)
    assert_all_close([*out1, *g1], [*out2, *g2])


@pytest.mark.parametrize("backend", FAST)
def test_two_pass_helper_matches_one_pass(backend):
    """``rasterize_two_pass`` (the gsplat path) checked on CPU through another backend."""
    params, V, K = make_scene(40, 45, 37, seed=4, channels=6)
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    out = rasterize_two_pass(*ps, V, K, 45, 37, 2, backend=backend)
    weighted_loss(*out).backward()
    out1, g1 = one_pass(params, V, K, 45, 37, backend, 2)
    assert_all_close([*out1, *g1], [*[o.detach() for o in out], *_grads(ps)])


@pytest.mark.parametrize("backend", [*FAST, "reference"])
def test_loss_on_other_channels_leaves_geometry_alone(backend):
    params, V, K = make_scene(25, 30, 26, seed=5, channels=6)
    _, grads = one_pass(params, V, K, 30, 26, backend, 3, loss=lambda image, depth, alpha: image[..., 3:].square().sum())
    assert all((g == 0).all() for g in grads[:4])
    assert (grads[4][:, :3] == 0).all() and grads[4][:, 3:].abs().sum() > 0


def test_geometry_channels_out_of_range():
    params, V, K = make_scene(5, 16, 16, channels=3)
    for k in (-1, 4):
        with pytest.raises(ValueError, match="geometry_channels"):
            rasterize(*params, V, K, 16, 16, backend="torch", geometry_channels=k)


@pytest.mark.cuda
@pytest.mark.skipif(not gsplat_available(), reason="needs CUDA and gsplat")
def test_gsplat_matches_torch_on_cuda():
    params, V, K = make_scene(3000, 96, 72, scale=(0.02, 0.15), channels=67, seed=12, dtype=torch.float32)
    params, V, K = [p.cuda() for p in params], V.cuda(), K.cuda()
    out_t, g_t = one_pass(params, V, K, 96, 72, "torch", 3)
    out_g, g_g = one_pass(params, V, K, 96, 72, "gsplat", 3)
    for name, a, b in zip(NAMES, [*out_g, *g_g], [*out_t, *g_t]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max().clamp_min(1)),
                                   msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------ render()
def make_gaussians(n=60, F=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=F64) * torch.tensor([1.0, 0.8, 0.5], dtype=F64)
    means[:, 2] += 4.0
    return FeatureGaussians(means, torch.randn(n, 4, generator=g, dtype=F64),
                            torch.empty(n, 3, dtype=F64).uniform_(math.log(0.08), math.log(0.4), generator=g),
                            torch.randn(n, generator=g, dtype=F64), torch.randn(n, 4, 3, generator=g, dtype=F64) * 0.3,
                            torch.randn(n, F, generator=g, dtype=F64), sh_degree=1)


FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh", "features")
K_CAM = torch.tensor([[40.0, 0, 20.0], [0, 42.0, 16.5], [0, 0, 1]])
C2W = torch.eye(4)
C2W[:3, 3] = torch.tensor([0.1, -0.05, 0.2])   # view-dependent colour depends on the means


def _render_grads(g0, fn, loss):
    leaves = {f: getattr(g0, f).clone().requires_grad_(True) for f in FIELDS}
    g = FeatureGaussians(**leaves, sh_degree=g0.sh_degree)
    r = fn(g)
    loss(r).backward()
    outs = [r.rgb.detach(), r.features.detach(), r.depth.detach(), r.alpha.detach()]
    return outs, [torch.zeros_like(v) if v.grad is None else v.grad for v in leaves.values()]


def old_render(g, backend, with_rgb=True):
    """render(detach_geometry_for_features=True) as it was: a second pass through detached geometry."""
    c2w = C2W.to(F64)
    viewmat, K = torch.linalg.inv(c2w), K_CAM.to(F64)
    args = (g.means, g.quats, g.log_scales.exp(), g.opacities)
    first = g.colors(c2w[:3, 3]) if with_rgb else g.features
    image, depth, alpha = rasterize(*args, first, viewmat, K, 40, 33, backend=backend)
    feats, _, _ = rasterize(*(a.detach() for a in args), g.features, viewmat, K, 40, 33, backend=backend)
    rgb = image if with_rgb else image.new_zeros(33, 40, 3)
    return type("R", (), dict(rgb=rgb, features=feats, depth=depth, alpha=alpha))


def render_loss(r):
    ramp = torch.linspace(-1, 1, r.features.numel(), dtype=r.features.dtype).reshape(r.features.shape)
    return r.rgb.square().sum() + (r.features * ramp).sum() + 0.1 * r.depth.sum() - r.alpha.sum()


@pytest.mark.parametrize("with_rgb", [True, False])
@pytest.mark.parametrize("backend", FAST)
def test_render_detached_features_match_two_pass(backend, with_rgb):
    g0 = make_gaussians()
    new = _render_grads(g0, lambda g: render(g, K_CAM.to(F64), C2W.to(F64), 40, 33, with_rgb=with_rgb,
                                             detach_geometry_for_features=True, backend=backend), render_loss)
    old = _render_grads(g0, lambda g: old_render(g, backend, with_rgb), render_loss)
    for name, a, b in zip(["rgb", "features", "depth", "alpha", *FIELDS], [*new[0], *new[1]], [*old[0], *old[1]]):
        scale = float(b.abs().max().clamp_min(1e-12))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * scale, msg=lambda m, n=name: f"{n}: {m}")
    assert all(v.abs().sum() > 0 for v in new[1][:4])


@pytest.mark.parametrize("backend", FAST)
def test_render_feature_loss_reaches_only_features(backend):
    g0 = make_gaussians(seed=1)
    cam = (K_CAM.to(F64), C2W.to(F64), 40, 33)
    _, grads = _render_grads(g0, lambda g: render(g, *cam, detach_geometry_for_features=True, backend=backend),
                             lambda r: r.features.abs().sum())
    assert all((v == 0).all() for v in grads[:5]) and grads[5].abs().sum() > 0
    # without detaching, the same loss does move the geometry
    _, grads = _render_grads(g0, lambda g: render(g, *cam, backend=backend), lambda r: r.features.abs().sum())
    assert grads[0].abs().sum() > 0 and grads[3].abs().sum() > 0
