"""Stage 1 without feature optimisation (``LiftConfig.method = "solve"``): features in closed form.

With geometry fixed, each Gaussian's feature is the average of the target tokens over the training pixels
it contributes to, weighted by its compositing weight there (alpha x transmittance):
``f_j = sum_p w_pj F(p) / sum_p w_pj`` (learning-free uplifting, LUDVIG). ``sum_p w_pj F(p)`` is the
gradient of ``<render(c), F>`` w.r.t. per-Gaussian channels ``c``, so the rasterizer's backward gives it
(render zeros that require grad, backward ``F``; the denominator is the same with ``F = 1``): no new kernel.
F is taken in the training tokens' top-``feature_dim`` (uncentred) PCA basis, the decoder's centre tap
(``pca_init_decoder``); the average commutes with that linear map, so this equals averaging the full
D-wide tokens and projecting afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fit3d.errors import SceneError


def decoder_projection(decoder) -> Tensor:
    """[f, D] least-squares inverse of the decoder's centre tap ([D, f]): decoded = tap @ f."""
    w = decoder.conv.weight.detach()
    c = w.shape[-1] // 2
    return torch.linalg.pinv(w[:, :, c, c].double()).float()


def view_targets(cache, name: str, proj: Tensor, width: int, height: int, at: str) -> Tensor:
    """[H, W, f] the view's tokens in the decoder's basis at the render size: ``render`` bilinearly
    upsampled (FiT3D's targets), ``grid`` each token repeated over its pixels (the adjoint of the grid
    loss's average pooling, up to the constant pool area)."""
    g = torch.einsum("kd,dhw->khw", proj, cache.grid(cache.index(name)))[None]
    mode = {"render": dict(mode="bilinear", align_corners=False), "grid": dict(mode="nearest")}[at]
    return F.interpolate(g, size=(height, width), **mode)[0].permute(1, 2, 0).contiguous()


def accumulate(params: dict, views, targets, width: int, height: int, backend: str = "auto",
               progress=None) -> tuple[Tensor, Tensor]:
    """(numerator [N, C], weight [N]): sum over ``views`` and their pixels p of w_pj * targets(i)[p] and w_pj,
    through the rasterizer's backward. targets: i -> [H, W, C]."""
    from fit3d.splat.rasterize import rasterize

    means = params["means"].detach()
    quats, scales = params["quats"].detach(), params["log_scales"].detach().exp()
    opac = torch.sigmoid(params["opacity_logits"].detach())
    N = len(means)
    num, den = None, torch.zeros(N, dtype=torch.float64)
    for i, v in enumerate(views):
        tgt = targets(i)  # [H, W, C]
        C = tgt.shape[-1]
        g = torch.cat([tgt, tgt.new_ones(height, width, 1)], -1)
        c = torch.zeros(N, C + 1, device=means.device, requires_grad=True)
        viewmat = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=means.device))
        K = torch.as_tensor(v.K, dtype=torch.float32, device=means.device)
        img, _, _ = rasterize(means, quats, scales, opac, c, viewmat, K, width, height, backend=backend,
                              geometry_channels=0)
        (gr,) = torch.autograd.grad((img * g).sum(), c)
        gr = gr.detach().cpu().double()
        num = gr[:, :C] if num is None else num + gr[:, :C]
        den += gr[:, C]
        if progress is not None:
            progress.update(1)
    if num is None:
        raise SceneError("solve: no training views to accumulate features from")
    return num, den


def weighted_average(num: Tensor, den: Tensor, min_weight: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(f [N, C] = num / den where den > min_weight, keep [N] bool). Never NaN: rows without weight are
    marked for dropping."""
    keep = den > min_weight
    f = torch.zeros_like(num)
    f[keep] = num[keep] / den[keep, None]
    return f, keep


def _raster_args(params: dict):
    means = params["means"].detach()
    return (means, params["quats"].detach(), params["log_scales"].detach().exp(),
            torch.sigmoid(params["opacity_logits"].detach()))


def _camera(v, device):
    viewmat = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=device))
    return viewmat, torch.as_tensor(v.K, dtype=torch.float32, device=device)


def normal_matvec(params: dict, views, X: Tensor, width: int, height: int, grid: tuple[int, int] | None,
                  backend: str = "auto") -> Tensor:
    """A X for A = sum_v W_v^T U P W_v (W_v: view v's compositing weights [pixels, N]; P: average pooling to
    the token ``grid`` (h, w), U: its nearest upsampling, both identity when ``grid`` is None). X [N, C]."""
    from fit3d.splat.rasterize import rasterize

    geo = _raster_args(params)
    out = torch.zeros(X.shape, dtype=torch.float64)
    area = (height * width) / (grid[0] * grid[1]) if grid else 1.0
    for v in views:
        c = X.detach().float().to(geo[0].device).requires_grad_(True)
        img, _, _ = rasterize(*geo, c, *_camera(v, geo[0].device), width, height, backend=backend,
                              geometry_channels=0)
        if grid:
            img = F.adaptive_avg_pool2d(img.permute(2, 0, 1)[None], grid)
        (g,) = torch.autograd.grad(0.5 * area * (img * img).sum(), c)
        out += g.detach().cpu().double()
    return out


def conjugate_gradient(matvec, b: Tensor, x0: Tensor, precond: Tensor, iterations: int,
                       ridge: Tensor | None = None) -> tuple[Tensor, list[float]]:
    """Preconditioned CG for (A + diag(ridge)) X = b, every column of b [N, C] at once (A is shared; each
    column has its own step sizes). precond [N] > 0: a diagonal approximation of A. Returns (X, relative
    residual norms per iteration). Hand-written: a few lines, and the matvec is a pass over the views."""
    ridge = torch.zeros_like(precond) if ridge is None else ridge
    A = lambda x: matvec(x) + ridge[:, None] * x  # noqa: E731
    x = x0.clone()
    r = b - A(x)
    z = r / precond[:, None]
    p = z.clone()
    rz = (r * z).sum(0)
    bn = b.norm(dim=0).clamp_min(1e-30)
    hist = [float((r.norm(dim=0) / bn).mean())]
    for _ in range(iterations):
        Ap = A(p)
        step = rz / (p * Ap).sum(0).clamp_min(1e-30)
        x = x + step * p
        r = r - step * Ap
        hist.append(float((r.norm(dim=0) / bn).mean()))
        z = r / precond[:, None]
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz.clamp_min(1e-30)) * p
        rz = rz_new
    return x, hist
