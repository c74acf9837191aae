"""fit3d.splat.rasterize on CUDA: gsplat against the torch backend and against the float64 reference (skipped
without a GPU and gsplat; ``bench/gpu_check.py`` runs them where there is one)."""

from __future__ import annotations

import pytest
import torch

from fit3d.splat.raster_gsplat import SUPPORTED_CHANNELS, channel_chunks
from fit3d.splat.rasterize import gsplat_available, rasterize

from test_rasterize import make_scene, run, weighted_loss  # same folder (pytest prepend import mode)


def test_channel_chunks_use_compiled_sizes():
    for C in (1, 3, 5, 35, 67, 100, 600):
        chunks = channel_chunks(C)
        assert sum(chunks) == C
        assert chunks[0] + 1 in SUPPORTED_CHANNELS and all(c in SUPPORTED_CHANNELS for c in chunks[1:])
    assert channel_chunks(67) == [64, 3]


@pytest.mark.cuda
@pytest.mark.skipif(not gsplat_available(), reason="needs CUDA and gsplat")
@pytest.mark.parametrize("channels,opacity", [(3, (0.3, 1.0)), (67, (0.02, 0.3)), (35, (0.8, 1.0))])
def test_torch_backend_matches_gsplat(channels, opacity):
    params, V, K = make_scene(3000, 96, 72, opacity=opacity, scale=(0.02, 0.15), channels=channels, seed=12,
                              dtype=torch.float32)
    params = [p.cuda() for p in params]
    V, K = V.cuda(), K.cuda()
    res = {}
    for backend in ("torch", "gsplat"):
        ps = [p.clone().requires_grad_(True) for p in params]
        out = rasterize(*ps, V, K, 96, 72, backend=backend)
        weighted_loss(*out).backward()
        res[backend] = ([o.detach() for o in out], [p.grad for p in ps])
    (out_t, g_t), (out_g, g_g) = res["torch"], res["gsplat"]
    for a, b in zip(out_t, out_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max().clamp_min(1)))
    for a, b in zip(g_t, g_g):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


NAMES = ["image", "depth", "alpha", "d_means", "d_quats", "d_scales", "d_opacities", "d_colors"]
# (n, width, height, scene kwargs) as the CPU backends' reference tests: partial edge tiles, early termination,
# long low-opacity lists, huge Gaussians on a non-square image
REFERENCE_SCENES = {
    "multi_tile": (40, 45, 37, dict(seed=0)),
    "early_exit": (60, 32, 32, dict(opacity=(0.9, 1.0), scale=(0.4, 0.8), seed=3, depth=3.0)),
    "low_opacity": (80, 33, 20, dict(opacity=(0.01, 0.15), seed=4)),
    "huge_non_square": (8, 50, 18, dict(scale=(3.0, 8.0), seed=7)),
}


@pytest.mark.cuda
@pytest.mark.skipif(not gsplat_available(), reason="needs CUDA and gsplat")
@pytest.mark.parametrize("geometry_channels", [None, 3])
@pytest.mark.parametrize("scene", list(REFERENCE_SCENES))
def test_gsplat_matches_float64_reference(scene, geometry_channels):
    """gsplat (float32, CUDA) against the float64 reference on the CPU: outputs and every gradient."""
    n, W, H, kw = REFERENCE_SCENES[scene]
    params, V, K = make_scene(n, W, H, channels=5, **kw)
    out_r, g_r = run(params, V, K, W, H, "reference", geometry_channels=geometry_channels)
    out_g, g_g = run([p.float().cuda() for p in params], V.float().cuda(), K.float().cuda(), W, H, "gsplat",
                     geometry_channels=geometry_channels)
    for i, (name, a, b) in enumerate(zip(NAMES, [*out_g, *g_g], [*out_r, *g_r])):
        tol = 1e-4 if i < 3 else 1e-3  # float32 outputs; gradients summed by float32 atomics
        torch.testing.assert_close(a.double().cpu(), b, rtol=tol, atol=tol * float(b.abs().max().clamp_min(1e-12)),
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert out_r[2].max() > 0.1 and any(g.abs().sum() > 0 for g in g_r)
