"""fit3d.splat.raster_numba's fast paths held to the torch code they replace: the counting-sort tile lists
and the Gaussian-major forward kernel (on a dense, saturating scene like a Stage 2 target's)."""

from __future__ import annotations

import pytest
import torch

from fit3d.splat.rasterize import numba_available, rasterize

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba missing")


@pytest.mark.parametrize("size", [(45, 37), (96, 72), (16, 16)])
def test_tile_lists_equal_the_torch_lists(size):
    from fit3d.splat.raster_numba import build_tile_lists as numba_lists
    from fit3d.splat.raster_torch import build_tile_lists as torch_lists

    W, H = size
    g = torch.Generator().manual_seed(W)
    n = 500
    means2d = (torch.rand(n, 2, generator=g) * 1.4 - 0.2) * torch.tensor([W, H])  # some off the image
    radii = torch.randint(0, 12, (n, 2), generator=g)
    depths = torch.randint(1, 20, (n,), generator=g).float()  # many ties: the stable order decides
    a, b = numba_lists(means2d, radii, depths, W, H), torch_lists(means2d, radii, depths, W, H)
    assert (a.tiles_x, a.tiles_y) == (b.tiles_x, b.tiles_y)
    for name in ("gids", "offsets", "counts"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.gids.numel() > (n if a.tiles_x * a.tiles_y > 1 else n // 2)  # several tiles a Gaussian; most on the image
    empty = numba_lists(means2d[:0], radii[:0], depths[:0], W, H)
    assert empty.gids.numel() == 0 and empty.counts.sum() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_saturating_forward_equals_torch(dtype):
    """Hundreds of Gaussians a pixel, nearly every pixel saturating part-way down its list (a Stage 2 target's
    regime): the Gaussian-major kernel's image, alpha and depth equal the torch backend's, and its per-pixel
    stopping points give the same gradients."""
    g = torch.Generator().manual_seed(7)
    n, W, H = 3000, 50, 38
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([3.0, 2.4, 1.0]).double()
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.08 + 0.04
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.3
    colors = torch.randn(n, 9, generator=g, dtype=torch.float64)
    K = torch.tensor([[45.0, 0, W / 2], [0, 45.0, H / 2], [0, 0, 1]], dtype=torch.float64)
    params = [t.to(dtype) for t in (means, quats, scales, opac, colors)]
    outs, grads = {}, {}
    for backend in ("torch", "numba"):
        ps = [p.clone().requires_grad_(True) for p in params]
        image, depth, alpha = rasterize(*ps, torch.eye(4, dtype=dtype), K.to(dtype), W, H, backend=backend)
        (image.square().sum() + depth.sum() + alpha.sum()).backward()
        outs[backend] = (image.detach(), depth.detach(), alpha.detach())
        grads[backend] = [p.grad for p in ps]
    assert (outs["numba"][2] > 1 - 1e-3).float().mean() > 0.75
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for a, b in zip(outs["numba"], outs["torch"]):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(grads["numba"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * float(b.abs().max()))


@pytest.mark.parametrize("geometry_channels", [None, 2])
def test_forward_only_path_equals_the_autograd_path(geometry_channels):
    """``rasterize`` without gradients (the kernel reads each Gaussian's channels in place, depth last) gives
    the autograd path's image, depth and alpha, bit for bit."""
    from test_rasterize import make_scene

    params, V, K = make_scene(400, 45, 37, seed=2, channels=6, dtype=torch.float32, opacity=(0.2, 0.9))
    with torch.no_grad():
        fast = rasterize(*params, V, K, 45, 37, backend="numba", geometry_channels=geometry_channels)
    ps = [p.clone().requires_grad_(True) for p in params]
    slow = rasterize(*ps, V, K, 45, 37, backend="numba", geometry_channels=geometry_channels)
    assert slow[0].requires_grad and not fast[0].requires_grad
    for a, b in zip(fast, slow):
        assert torch.equal(a, b.detach())
    assert float(fast[2].max()) > 0.5
