"""fit3d.splat.rasterize on CUDA: torch backend against gsplat (skipped without a GPU and gsplat)."""

from __future__ import annotations

import pytest
import torch

from fit3d.splat.raster_gsplat import SUPPORTED_CHANNELS, channel_chunks
from fit3d.splat.rasterize import gsplat_available, rasterize

from test_rasterize import make_scene, weighted_loss  # same folder (pytest prepend import mode)


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
