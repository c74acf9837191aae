"""fit3d.splat.rasterize: torch backend against the float64 reference, gradcheck, edge cases."""

from __future__ import annotations

import pytest
import torch

from fit3d.splat.rasterize import numba_available, rasterize, resolve_backend

F64 = torch.float64
FAST = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba missing"))]


def make_scene(n, width, height, *, opacity=(0.3, 1.0), scale=(0.05, 0.35), channels=5, seed=0,
               depth=4.0, dtype=F64):
    """Gaussians scattered in front of a camera at the origin looking down +z (OpenCV axes)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([1.0, 0.8, 0.6], dtype=dtype)
    means[:, 2] += depth
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * (scale[1] - scale[0]) + scale[0]
    opac = torch.rand(n, generator=g, dtype=dtype) * (opacity[1] - opacity[0]) + opacity[0]
    colors = torch.rand(n, channels, generator=g, dtype=dtype)
    f = 1.1 * max(width, height)
    K = torch.tensor([[f, 0, width / 2], [0, f * 1.05, height / 2 + 1.3], [0, 0, 1]], dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)
    return [means, quats, scales, opac, colors], viewmat, K


def weighted_loss(image, depth, alpha):
    """A loss touching every output with distinct weights."""
    def ramp(x, lo, hi):
        return torch.linspace(lo, hi, x.numel(), dtype=x.dtype, device=x.device).reshape(x.shape)
    return (image * ramp(image, -1, 1)).sum() + (depth * ramp(depth, 0.2, 0.1)).sum() + (alpha * ramp(alpha, 1, -2)).sum()


def run(params, viewmat, K, width, height, backend, **kw):
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    image, depth, alpha = rasterize(*ps, viewmat, K, width, height, backend=backend, **kw)
    weighted_loss(image, depth, alpha).backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in ps]
    return (image.detach(), depth.detach(), alpha.detach()), grads


def assert_matches_reference(params, viewmat, K, width, height, backend="torch", **kw):
    out_r, grad_r = run(params, viewmat, K, width, height, "reference", **kw)
    out_t, grad_t = run(params, viewmat, K, width, height, backend, **kw)
    for name, a, b in zip(["image", "depth", "alpha", "d_means", "d_quats", "d_scales", "d_opacities", "d_colors"],
                          [*out_t, *grad_t], [*out_r, *grad_r]):
        scale = b.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}")
    return out_r, grad_r


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("backend", FAST)
def test_matches_reference_multi_tile(seed, backend):
    params, V, K = make_scene(40, 45, 37, seed=seed)   # 3x3 tiles, partial edge tiles
    (image, _, alpha), grads = assert_matches_reference(params, V, K, 45, 37, backend)
    assert alpha.max() > 0.5 and all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("backend", FAST)
def test_matches_reference_with_early_termination(backend):
    # many opaque overlapping Gaussians: most pixels stop at transmittance <= 1e-4
    params, V, K = make_scene(60, 32, 32, opacity=(0.9, 1.0), scale=(0.4, 0.8), seed=3, depth=3.0)
    (_, _, alpha), _ = assert_matches_reference(params, V, K, 32, 32, backend)
    assert (alpha > 1 - 1e-3).float().mean() > 0.5


@pytest.mark.parametrize("backend", FAST)
def test_matches_reference_low_opacity(backend):
    params, V, K = make_scene(80, 33, 20, opacity=(0.01, 0.15), seed=4)
    assert_matches_reference(params, V, K, 33, 20, backend)


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_float64(backend):
    params, V, K = make_scene(6, 12, 10, opacity=(0.3, 0.8), scale=(0.15, 0.4), channels=2, seed=5)
    params = [p.requires_grad_(True) for p in params]

    def f(*ps):
        return rasterize(*ps, V, K, 12, 10, backend=backend)

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def _assert_finite(out, grads):
    for t in [*out, *grads]:
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("backend", FAST)
def test_behind_camera_and_near_plane(backend):
    params, V, K = make_scene(30, 24, 20, seed=6, depth=0.5)   # ~half behind / at the camera
    params[0][:3, 2] = torch.tensor([0.0, 0.005, -1.0], dtype=F64)  # at, inside and behind the near plane
    out, grads = assert_matches_reference(params, V, K, 24, 20, backend)
    _assert_finite(out, grads)
    assert (grads[0][:3] == 0).all()  # culled Gaussians get exactly zero gradient


@pytest.mark.parametrize("backend", FAST)
def test_huge_gaussians_and_non_square(backend):
    params, V, K = make_scene(8, 50, 18, scale=(3.0, 8.0), seed=7)
    out, grads = assert_matches_reference(params, V, K, 50, 18, backend)
    _assert_finite(out, grads)
    assert out[0].shape == (18, 50, 5) and out[1].shape == out[2].shape == (18, 50)


@pytest.mark.parametrize("backend", FAST)
def test_all_culled_is_empty_and_finite(backend):
    params, V, K = make_scene(10, 16, 16, seed=8)
    params[0][:, 2] = -2.0
    out, grads = run(params, V, K, 16, 16, backend)
    _assert_finite(out, grads)
    assert all((t == 0).all() for t in out) and all((g == 0).all() for g in grads)


@pytest.mark.parametrize("backend", FAST)
def test_single_gaussian_centre_pixel(backend):
    params, V, K = make_scene(1, 17, 17, seed=9)
    params[0][0] = torch.tensor([0.0, 0.0, 3.0], dtype=F64)
    params[3][0] = 0.8
    K[1, 2] = 8.5
    out, grads = assert_matches_reference(params, V, K, 17, 17, backend)
    _assert_finite(out, grads)
    image, depth, alpha = out
    torch.testing.assert_close(alpha[8, 8], torch.tensor(0.8, dtype=F64))   # sigma = 0 at the centre
    torch.testing.assert_close(depth[8, 8], torch.tensor(3.0, dtype=F64))
    assert depth[alpha == 0].eq(0).all()


@pytest.mark.parametrize("backend", FAST)
def test_float32_close_to_float64(backend):
    params, V, K = make_scene(200, 64, 48, seed=10, channels=35)
    out64, _ = run(params, V, K, 64, 48, backend)
    out32, _ = run([p.float() for p in params], V.float(), K.float(), 64, 48, backend)
    for a, b in zip(out32, out64):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)


def test_backend_resolution():
    assert resolve_backend("auto", torch.device("cpu")) == ("numba" if numba_available() else "torch")
    with pytest.raises(ValueError):
        resolve_backend("opengl", torch.device("cpu"))


def test_float32_backends_agree():
    """numba and torch composite the same float32 scene to float32 precision, gradients included."""
    if not numba_available():
        pytest.skip("numba missing")
    params, V, K = make_scene(300, 48, 40, seed=11, channels=8, dtype=torch.float32)
    out_t, g_t = run(params, V, K, 48, 40, "torch")
    out_n, g_n = run(params, V, K, 48, 40, "numba")
    for a, b in zip([*out_n, *g_n], [*out_t, *g_t]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max().clamp_min(1)))


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("opacity", [0.3, 0.99])
def test_compositing_weights_equal_the_reference_and_the_forward(opacity):
    """raster_numba.composite_weights (each pixel's (Gaussian, alpha x T) entries) against the float64
    reference's one-hot render, and its product with colours against the forward kernel; 0.99 opacity
    exercises early termination."""
    from fit3d.splat.projection import project
    from fit3d.splat.raster_numba import composite, composite_weights
    from fit3d.splat.raster_torch import build_tile_lists
    from fit3d.splat.reference import rasterize_reference

    g = torch.Generator().manual_seed(0)
    n, W, H = 40, 37, 29  # several tiles, ragged edges
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([1.6, 1.2, 0.4]).double()
    means[:, 2] += 3.0
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=1)
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.15 + 0.03
    opac = torch.full((n,), opacity, dtype=torch.float64)
    vm, K = torch.eye(4, dtype=torch.float64), torch.tensor([[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]]).double()
    dense, _, _ = rasterize_reference(means, quats, scales, opac, torch.eye(n, dtype=torch.float64), vm, K, W, H)
    p = project(means, quats, scales, opac, vm, K, W, H)
    lists = build_tile_lists(p.means2d, p.radii, p.depths, W, H)
    indptr, gids, w = composite_weights(p.means2d, p.conics, p.opacities, lists, W, H)
    assert w.dtype == torch.float64 and int(indptr[-1]) == len(gids) == len(w)
    rows = torch.repeat_interleave(torch.arange(W * H), indptr.diff())
    mat = torch.zeros(W * H, n, dtype=torch.float64).index_put_((rows, p.ids[gids]), w, accumulate=True)
    assert float(dense.abs().sum()) > 0
    torch.testing.assert_close(mat, dense.reshape(W * H, n), rtol=1e-7, atol=1e-9)
    colors = torch.randn(len(p.ids), 5, generator=g, dtype=torch.float64)
    img, _ = composite(p.means2d, p.conics, p.opacities, colors, lists, W, H)
    prod = torch.zeros(W * H, 5, dtype=torch.float64).index_add_(0, rows, w[:, None] * colors[gids])
    torch.testing.assert_close(prod.reshape(H, W, 5), img, rtol=1e-10, atol=1e-12)
