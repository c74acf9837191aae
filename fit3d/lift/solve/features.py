"""The solve's features for one scene: the weighted average of the targets, then CG on the least-squares
problem of the rendered features (the ridge chosen on held-back training views), geometry fixed."""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm import tqdm

from fit3d.errors import NonFiniteError, SceneError
from fit3d.lift.context import LiftContext
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.solve.basis import decoder_projection, stacked_targets, view_targets
from fit3d.lift.solve.cg import RIDGE_CANDIDATES, conjugate_gradient, select_ridge, weighted_average
from fit3d.lift.solve.passes import accumulate, normal_matvec, solve_views
from fit3d.lift.solve.weights import ViewWeights


def solve_features(ctx: LiftContext, params: dict, decoder: FeatureDecoder, keep_pixels: int = 0
                   ) -> tuple[dict, dict, list | None]:
    """Per-Gaussian features in the decoder's basis: the weighted average, then up to ``solve.cg_iterations``
    of preconditioned CG on the least-squares problem (until the relative residual is below ``solve.cg_tol``),
    both over every ``solve.view_stride``-th training view. With ``solve.ridge_select`` (sparse path, 8+ views)
    the ridge is chosen on held-back training views first (``select_ridge``) and the CG starts from that
    candidate's features for ``solve.ridge_select_iterations``; else ``solve.cg_ridge``. Drops Gaussians those
    views do not weight (never NaN). With the numba backend each view's compositing weights are extracted once
    (``ViewWeights``) and every pass is a sparse product; other backends rasterise each pass. Returns (params,
    info, pixels): info["seconds"] times the average and the CG; pixels are every ``keep_pixels``-th of those
    views' [H*W, N] compositing weights of the kept Gaussians (the sparse path; else None)."""
    cfg = ctx.cfg
    W, H = ctx.size
    proj = decoder_projection(decoder).to(ctx.device)
    train = [ctx.views[i] for i in ctx.train_idx]
    sub = train[::max(1, cfg.solve.view_stride)]  # dense trajectories: neighbouring views add little
    at = cfg.solve.targets_at
    grid = ctx.cache.grid_size if at == "grid" else None
    fv = solve_views(params, sub, W, H, cfg.raster_backend, ctx.device, keep=False)  # one pass: nothing to keep
    sparse = fv.backend == "numba"
    bar = tqdm(total=len(sub) * (1 + (0 if sparse else cfg.solve.cg_iterations + (cfg.solve.cg_iterations > 0))),
               desc=f"solve {ctx.name}", disable=not cfg.progress, unit="view")
    t0 = time.perf_counter()
    if sparse:
        vw = ViewWeights(fv, grid, progress=bar, keep_pixels=keep_pixels)
        T = stacked_targets(ctx.cache, [v.name for v in sub], proj, W, H, at)
        num, den = vw.rhs(T), vw.den
    else:
        num, den = accumulate(fv, lambda i: view_targets(ctx.cache, sub[i].name, proj, W, H, at), progress=bar)
    f, keep = weighted_average(num, den)
    if not bool(keep.any()):
        raise SceneError(f"{ctx.name}: solve: no Gaussian is seen by any training view")
    params = {k: nn.Parameter(v.detach()[keep]) for k, v in params.items()}
    info = {"dropped_unseen": int((~keep).sum()), "views": len(sub), "sparse": sparse}
    f, num, den = f[keep], num[keep], den[keep]
    t1 = time.perf_counter()
    if sparse:
        vw.keep(keep)
    if cfg.solve.cg_iterations > 0:
        if sparse:
            mv = vw.matvec
            info["weights_nnz"] = int(vw.M.nnz)
        else:
            fv = solve_views(params, sub, W, H, cfg.raster_backend, ctx.device)  # kept Gaussians, projected once
            mv = lambda X: normal_matvec(fv, X, grid, progress=bar)  # noqa: E731
        precond = den.clamp_min(1e-6)
        ridge, iterations = cfg.solve.cg_ridge, cfg.solve.cg_iterations
        if sparse and cfg.solve.ridge_select and len(sub) >= 8 and cfg.solve.ridge_select_iterations > 0:
            t2 = time.perf_counter()
            iterations = cfg.solve.ridge_select_iterations  # from the chosen candidate's features: near already
            ridge, scores, f = select_ridge(vw, T, RIDGE_CANDIDATES, iterations, cfg.solve.cg_tol,
                                            every=8 if len(sub) >= 16 else 4)
            info["ridge_scores"] = {f"{r:g}": v for r, v in scores.items()}
            info["ridge_select_seconds"] = time.perf_counter() - t2
        info["ridge"] = ridge
        f, hist = conjugate_gradient(mv, num, f, precond, iterations, ridge=ridge * precond, tol=cfg.solve.cg_tol)
        info["cg_residual"] = hist
    bar.close()
    if not bool(torch.isfinite(f).all()):
        raise NonFiniteError(f"{ctx.name}: solve: features became non-finite")
    params["features"] = nn.Parameter(f.float().to(ctx.device).contiguous())
    info["seconds"] = {"average": t1 - t0, "cg": time.perf_counter() - t1}
    return params, info, vw.pixels if sparse else None
