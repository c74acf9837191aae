"""The solve's passes by rasterisation (backends without compositing weights: torch, gsplat): the weighted
sums of targets through the rasterizer's backward, and the normal operator of the least-squares problem."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fit3d.errors import SceneError
from fit3d.lift.solve.weights import all_culled
from fit3d.splat.fixed_views import FixedViews


def passes_backend(backend: str, device) -> str:
    """The rasterizer backend of the solve's fixed-view passes. ``auto`` on a CUDA device without gsplat is
    numba's sparse path on the CPU: there each view's compositing weights are extracted once and every pass is
    a sparse product, where the torch rasterizer re-renders each view for every pass (on an H200 it did about
    4 view passes a second: 9 minutes for a 41-view solve; docs/gpu.md)."""
    from fit3d.splat.rasterize import numba_available, torch_fallback_on_cuda

    return "numba" if torch_fallback_on_cuda(backend, device) and numba_available() else backend


def solve_views(params: dict, views, width: int, height: int, backend: str, device, keep: bool = True) -> FixedViews:
    """``FixedViews`` of ``params``' geometry for the solve's passes, on the device :func:`passes_backend` picks."""
    from fit3d.lift.init import raster_geometry

    backend = passes_backend(backend, device)
    geometry = raster_geometry(params)
    if backend == "numba":
        geometry = tuple(t.cpu() for t in geometry)
    return FixedViews(*geometry, views, width, height, backend, keep=keep)


def accumulate(fv: FixedViews, targets, progress=None) -> tuple[Tensor, Tensor]:
    """(numerator [N, C], weight [N]) float64: sum over ``fv``'s views and their pixels p of w_pj * targets(i)[p]
    and w_pj, through the rasterizer's backward. targets: i -> [H, W, C]."""
    dev, N = fv.device, fv.num_gaussians
    W, H = fv.size
    num, den = None, torch.zeros(N, dtype=torch.float64)
    for i, v in enumerate(fv.views):
        tgt = targets(i).to(dev)  # [H, W, C]
        C = tgt.shape[-1]
        g = torch.cat([tgt, tgt.new_ones(H, W, 1)], -1)
        c = torch.zeros(N, C + 1, device=dev, requires_grad=True)
        (gr,) = torch.autograd.grad((fv.render(i, c) * g).sum(), c)
        gr = gr.detach().cpu().double()
        if not bool(gr[:, C].gt(0).any()):
            raise all_culled(v, i, N)
        num = gr[:, :C] if num is None else num + gr[:, :C]
        den += gr[:, C]
        if progress is not None:
            progress.update(1)
    if num is None:
        raise SceneError("solve: no training views to accumulate features from")
    return num, den


def normal_matvec(fv: FixedViews, X: Tensor, grid: tuple[int, int] | None, progress=None) -> Tensor:
    """A X for A = sum_v W_v^T U P W_v (W_v: view v's compositing weights [pixels, N]; P: average pooling to
    the token ``grid`` (h, w), U: its nearest upsampling, both identity when ``grid`` is None). X [N, C].
    Per-view products are summed in float32 (at most a few hundred views), the result is float64."""
    W, H = fv.size
    area = (H * W) / (grid[0] * grid[1]) if grid else 1.0
    x = X.detach().to(device=fv.device, dtype=torch.float32)
    out = torch.zeros(X.shape, dtype=torch.float32, device=x.device)
    for i in range(len(fv)):
        c = x.clone().requires_grad_(True)
        img = fv.render(i, c)
        if grid:
            img = F.adaptive_avg_pool2d(img.permute(2, 0, 1)[None], grid)
        (g,) = torch.autograd.grad(0.5 * area * (img * img).sum(), c)
        out += g
        if progress is not None:
            progress.update(1)
    return out.cpu().double()
