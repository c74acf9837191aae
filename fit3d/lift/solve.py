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

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from fit3d.errors import NonFiniteError, SceneError
from fit3d.lift.context import LiftContext, LiftResult
from fit3d.lift.decoder import FeatureDecoder, pca_init_decoder
from fit3d.lift.fuse import fuse_points, surfel_params
from fit3d.lift.init import as_gaussians, camera_extent, init_params
from fit3d.lift.loss import color_loss, feature_loss
from fit3d.splat.densify import DensifySchedule, DensifyStats, densify_and_prune
from fit3d.splat.rasterize import rasterize
from fit3d.splat.render import render


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


def _raster_args(params: dict):
    means = params["means"].detach()
    return (means, params["quats"].detach(), params["log_scales"].detach().exp(),
            torch.sigmoid(params["opacity_logits"].detach()))


def _camera(v, device):
    viewmat = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=device))
    return viewmat, torch.as_tensor(v.K, dtype=torch.float32, device=device)


def accumulate(params: dict, views, targets, width: int, height: int, backend: str = "auto",
               progress=None) -> tuple[Tensor, Tensor]:
    """(numerator [N, C], weight [N]): sum over ``views`` and their pixels p of w_pj * targets(i)[p] and w_pj,
    through the rasterizer's backward. targets: i -> [H, W, C]."""
    geo = _raster_args(params)
    N = len(geo[0])
    num, den = None, torch.zeros(N, dtype=torch.float64)
    for i, v in enumerate(views):
        tgt = targets(i).to(geo[0].device)  # [H, W, C]
        C = tgt.shape[-1]
        g = torch.cat([tgt, tgt.new_ones(height, width, 1)], -1)
        c = torch.zeros(N, C + 1, device=geo[0].device, requires_grad=True)
        img, _, _ = rasterize(*geo, c, *_camera(v, geo[0].device), width, height, backend=backend,
                              geometry_channels=0)
        (gr,) = torch.autograd.grad((img * g).sum(), c)
        gr = gr.detach().cpu().double()
        if not bool(gr[:, C].gt(0).any()):
            raise SceneError(f"solve: view {v.name or i} sees none of the {N} Gaussians (all culled: check its pose "
                             f"and the scene's depth / points)")
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


def normal_matvec(params: dict, views, X: Tensor, width: int, height: int, grid: tuple[int, int] | None,
                  backend: str = "auto", progress=None) -> Tensor:
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
        if progress is not None:
            progress.update(1)
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


# ------------------------------------------------------------------ geometry
def optimize_colour(ctx: LiftContext, params: dict, iterations: int, extent: float, desc: str) -> list[dict]:
    """Colour-only 3DGS training of ``params`` in place (the colour loss of ``fit3d.lift.loss``, FiT3D's
    learning rates, density control on its schedule scaled to ``iterations``; no opacity reset: short runs
    start from opaque surfels). Features are not rendered. Returns the loss history."""
    from fit3d.lift.optimize import make_optimizer, means_lr

    cfg = dataclasses.replace(ctx.cfg, iterations=iterations)
    W, H = ctx.size
    dev = ctx.device
    opt = make_optimizer(params, cfg, extent)
    stats = DensifyStats(len(params["means"]), dev)
    sched = DensifySchedule.scaled(iterations)
    sh_interval = max(1, iterations // 30)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm: list[int] = []
    history, run = [], 0.0
    for it in tqdm(range(iterations), desc=desc, disable=not cfg.progress, unit="it", leave=False):
        if not perm:
            perm = torch.randperm(len(ctx.train_idx), generator=gen).tolist()
        v = ctx.views[ctx.train_idx[perm.pop()]]
        next(g for g in opt.param_groups if g["name"] == "means")["lr"] = means_lr(it, cfg, extent)
        r = render(as_gaussians(params, min(cfg.max_sh_degree, it // sh_interval)), v.K, v.c2w, W, H,
                   with_features=False, backend=cfg.raster_backend)
        loss = color_loss(r.rgb, torch.as_tensor(v.image, device=dev), cfg.lambda_dssim)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"lift {ctx.name}: colour loss became {float(loss)} at iteration {it} (view {v.name})")
        loss.backward()
        with torch.no_grad():
            if cfg.densify and it < sched.stop:
                vm = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=dev))
                stats.update(params["means"].detach(), params["means"].grad,
                             params["log_scales"].detach().exp().max(1).values, vm,
                             torch.as_tensor(v.K, dtype=torch.float32, device=dev), W, H)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = it + 1
        if cfg.densify and sched.densify_now(done):
            densify_and_prune(params, opt, stats, grad_threshold=cfg.densify_grad_threshold, extent=extent,
                              percent_dense=cfg.percent_dense, min_opacity=cfg.min_opacity,
                              max_screen_size=None, max_gaussians=max(cfg.max_gaussians, cfg.solve_max_gaussians),
                              generator=gen)
        run += float(loss.detach())
        if done % max(1, iterations // 20) == 0 or done == iterations:
            history.append({"iteration": done, "rgb": run / max(1, done - (history[-1]["iteration"] if history else 0)),
                            "gaussians": len(params["means"])})
            run = 0.0
    return history


def solve_geometry(ctx: LiftContext) -> tuple[dict, float, str, list[dict], dict]:
    """(params, extent, source, history, info): fused depth surfels (+ ``solve_geometry_iterations`` colour-only
    iterations), or, without depth, the scene's points trained colour-only for ``solve_nodepth_iterations``."""
    cfg = ctx.cfg
    train = [ctx.views[i] for i in ctx.train_idx]
    has_depth = any(v.depth is not None and bool((v.depth > 0).any()) for v in train)
    if has_depth:
        means, normals, cols, foot, vox = fuse_points(train, cfg.solve_voxel, cfg.solve_max_gaussians,
                                                      cfg.solve_voxel_factor, cfg.solve_min_views,
                                                      fill_holes=cfg.solve_fill_holes, carve_tol=cfg.solve_carve_tol)
        if len(means) == 0:
            raise SceneError(f"{ctx.name}: solve: no voxel is seen by {cfg.solve_min_views} training views "
                             f"(lower --solve-min-views)")
        params = surfel_params(means, normals, cols, cfg.solve_scale * np.maximum(vox, foot),
                               opacity=cfg.solve_opacity, flat=cfg.solve_flat, feature_dim=cfg.feature_dim,
                               max_sh_degree=cfg.max_sh_degree, device=ctx.device)
        source, iters, info = "depth-fused", cfg.solve_geometry_iterations, {"voxel": vox, "fused": len(means)}
    elif ctx.points is not None and len(ctx.points) > 0:
        pts = np.asarray(ctx.points, np.float32)
        cols = (np.asarray(ctx.points_rgb, np.float32) if ctx.points_rgb is not None else np.full_like(pts, 0.5))
        params = init_params(pts, cols, cfg, ctx.device)
        source, iters, info = "points+colour", cfg.solve_nodepth_iterations, {}
    else:
        raise SceneError(f"{ctx.name}: solve needs depth in the training views or scene points (COLMAP); this "
                         f"scene has neither (use --method optimize, which starts from random points)")
    pts = params["means"].detach().cpu().numpy()
    extent = max(camera_extent(np.stack([v.c2w for v in train])), 0.1 * float(np.linalg.norm(pts.max(0) - pts.min(0))),
                 1e-3)
    history = optimize_colour(ctx, params, iters, extent, f"colour {ctx.name}") if iters > 0 else []
    return params, extent, source, history, {**info, "iterations": iters}


# ------------------------------------------------------------------ features
def refine_features(ctx: LiftContext, params: dict, decoder: FeatureDecoder, iterations: int) -> list[dict]:
    """Adam on f and the decoder with Stage 1's feature loss (geometry fixed), in place."""
    cfg = ctx.cfg
    W, H = ctx.size
    feats = nn.Parameter(params["features"].detach().clone())
    opt = torch.optim.Adam([{"params": [feats], "lr": cfg.lr_features},
                            {"params": decoder.parameters(), "lr": cfg.lr_decoder}], eps=1e-15)
    gen = torch.Generator().manual_seed(cfg.seed)
    geo = {k: v.detach() for k, v in params.items() if k != "features"}
    history, perm = [], []
    for it in tqdm(range(iterations), desc=f"refine {ctx.name}", disable=not cfg.progress, unit="it", leave=False):
        if not perm:
            perm = torch.randperm(len(ctx.train_idx), generator=gen).tolist()
        v = ctx.views[ctx.train_idx[perm.pop()]]
        r = render(as_gaussians({**geo, "features": feats}, 0), v.K, v.c2w, W, H, with_rgb=False,
                   backend=cfg.raster_backend)
        loss = feature_loss(decoder(r.features.permute(2, 0, 1)[None]), ctx.cache, ctx.cache.index(v.name),
                            cfg.feature_loss_at)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % max(1, iterations // 20) == 0:
            history.append({"iteration": it + 1, "feat": float(loss.detach())})
    params["features"] = nn.Parameter(feats.detach())
    return history


def solve_features(ctx: LiftContext, params: dict, decoder: FeatureDecoder) -> tuple[dict, dict]:
    """Per-Gaussian features in the decoder's basis: the weighted average, then ``solve_cg_iterations`` of
    preconditioned CG on the least-squares problem. Drops Gaussians no training pixel weights (never NaN).
    Returns (params, info)."""
    cfg = ctx.cfg
    W, H = ctx.size
    proj = decoder_projection(decoder).to(ctx.device)
    train = [ctx.views[i] for i in ctx.train_idx]
    sub = train[::max(1, cfg.solve_view_stride)]
    at = cfg.solve_targets_at
    grid = ctx.cache.grid_size if at == "grid" else None
    total = len(train) + (len(sub) * (cfg.solve_cg_iterations + 1 + (len(sub) < len(train)))
                          if cfg.solve_cg_iterations else 0)
    bar = tqdm(total=total, desc=f"solve {ctx.name}", disable=not cfg.progress, unit="view")
    targets = lambda vs: (lambda i: view_targets(ctx.cache, vs[i].name, proj, W, H, at))  # noqa: E731
    num, den = accumulate(params, train, targets(train), W, H, cfg.raster_backend, bar)
    f, keep = weighted_average(num, den)
    if not bool(keep.any()):
        raise SceneError(f"{ctx.name}: solve: no Gaussian is seen by any training view")
    params = {k: nn.Parameter(v.detach()[keep]) for k, v in params.items()}
    info = {"dropped_unseen": int((~keep).sum())}
    f = f[keep]
    if cfg.solve_cg_iterations > 0:
        if len(sub) < len(train):  # the least-squares right-hand side over the same views as the matrix
            num_s, den_s = accumulate(params, sub, targets(sub), W, H, cfg.raster_backend, bar)
        else:
            num_s, den_s = num[keep], den[keep]
        mv = lambda X: normal_matvec(params, sub, X, W, H, grid, cfg.raster_backend, bar)  # noqa: E731
        precond = den_s.clamp_min(1e-6)
        f, hist = conjugate_gradient(mv, num_s, f, precond, cfg.solve_cg_iterations, ridge=1e-3 * precond)
        info["cg_residual"] = hist
    bar.close()
    if not bool(torch.isfinite(f).all()):
        raise NonFiniteError(f"{ctx.name}: solve: features became non-finite")
    params["features"] = nn.Parameter(f.float().to(ctx.device).contiguous())
    return params, info


def solve_scene(ctx: LiftContext) -> LiftResult:
    """Stage 1 by ``method = "solve"``: geometry (``solve_geometry``), then features in closed form
    (``solve_features``) with the training tokens' PCA as decoder, optionally refined."""
    cfg = ctx.cfg
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    params, extent, source, history, info = solve_geometry(ctx)
    t1 = time.perf_counter()
    decoder = FeatureDecoder(cfg.feature_dim, ctx.cache.dim, cfg.decoder_kernel).to(ctx.device)
    pca_init_decoder(decoder, ctx.cache, ctx.train_names, seed=cfg.seed)
    params, finfo = solve_features(ctx, params, decoder)
    t2 = time.perf_counter()
    refine = refine_features(ctx, params, decoder, cfg.solve_refine_iterations) if cfg.solve_refine_iterations else []
    t3 = time.perf_counter()
    sh = min(cfg.max_sh_degree, (len(history) and history[-1]["iteration"] - 1) // max(1, info["iterations"] // 30))
    timings = {"geometry": t1 - t0, "solve": t2 - t1, "refine": t3 - t2, "lift": t3 - t0}
    return LiftResult(params, decoder, sh, extent, source, history + refine, timings,
                      {"solve": {**info, **finfo}})
