"""The solve's geometry: depth fused into surfels (``fit3d.lift.fuse``) or the scene's points, settled by
colour-only training through Stage 1's step."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from fit3d.errors import SceneError
from fit3d.lift.context import LiftContext
from fit3d.lift.fuse import fuse_points, surfel_params
from fit3d.lift.init import init_params, scene_extent
from fit3d.lift.train import Densification, TrainState, make_optimizer, train_step
from fit3d.splat.densify import DensifySchedule, DensifyStats


def optimize_colour(ctx: LiftContext, params: dict, iterations: int, extent: float, desc: str) -> list[dict]:
    """Colour-only 3DGS training of ``params`` in place (``fit3d.lift.train.train_step`` without a decoder:
    the colour loss, FiT3D's learning rates, density control on its schedule scaled to ``iterations``, up to
    the larger of ``max_gaussians`` / ``solve.max_gaussians``; no opacity reset and no screen-size pruning:
    short runs start from opaque surfels). Features are not rendered. Returns the loss history."""
    cfg = dataclasses.replace(ctx.cfg, iterations=iterations)
    cctx = dataclasses.replace(ctx, cfg=cfg)
    st = TrainState(params, extent, make_optimizer(params, cfg, extent), DensifyStats(len(params["means"]), ctx.device),
                    torch.Generator().manual_seed(cfg.seed))
    dens = Densification(DensifySchedule.scaled(iterations), max(cfg.max_gaussians, cfg.solve.max_gaussians),
                         prune_screen_size=False, reset_opacity=False) if cfg.densify else None
    sh_interval = max(1, iterations // 30)
    history, run = [], 0.0
    for it in tqdm(range(iterations), desc=desc, disable=not cfg.progress, unit="it", leave=False):
        run += train_step(cctx, st, it, sh_interval, dens)["rgb"]
        done = it + 1
        if done % max(1, iterations // 20) == 0 or done == iterations:
            history.append({"iteration": done, "rgb": run / max(1, done - (history[-1]["iteration"] if history else 0)),
                            "gaussians": len(params["means"])})
            run = 0.0
    return history


def has_depth(views) -> bool:
    """Whether any of ``views`` has a valid depth pixel."""
    return any(v.depth is not None and bool((v.depth > 0).any()) for v in views)


def solve_geometry(ctx: LiftContext) -> tuple[dict, float, str, list[dict], dict]:
    """(params, extent, source, history, info): fused depth surfels (+ ``solve.geometry_iterations`` colour-only
    iterations, at most ``solve.geometry_iterations_per_view`` per training view), or, without depth, the scene's
    points trained colour-only for ``solve.nodepth_iterations``."""
    cfg = ctx.cfg
    t0 = time.perf_counter()
    train = [ctx.views[i] for i in ctx.train_idx]
    if has_depth(train):
        means, normals, cols, foot, vox = fuse_points(train, cfg.solve.voxel, cfg.solve.max_gaussians,
                                                      cfg.solve.voxel_factor, cfg.solve.min_views,
                                                      fill_holes=cfg.solve.fill_holes, carve_tol=cfg.solve.carve_tol)
        if len(means) == 0:
            raise SceneError(f"{ctx.name}: solve: no voxel is seen by {cfg.solve.min_views} training views "
                             f"(lower --solve.min-views)")
        params = surfel_params(means, normals, cols, cfg.solve.scale * np.maximum(vox, foot),
                               opacity=cfg.solve.opacity, flat=cfg.solve.flat, feature_dim=cfg.feature_dim,
                               max_sh_degree=cfg.max_sh_degree, device=ctx.device)
        iters = cfg.solve.geometry_iterations
        if cfg.solve.geometry_iterations_per_view > 0:  # a cost proportional to the views, not fixed
            iters = min(iters, math.ceil(cfg.solve.geometry_iterations_per_view * len(train)))
        source, info = "depth-fused", {"voxel": vox, "fused": len(means)}
    elif ctx.points is not None and len(ctx.points) > 0:
        pts = np.asarray(ctx.points, np.float32)
        cols = (np.asarray(ctx.points_rgb, np.float32) if ctx.points_rgb is not None else np.full_like(pts, 0.5))
        params = init_params(pts, cols, cfg, ctx.device)
        source, iters, info = "points+colour", cfg.solve.nodepth_iterations, {}
    else:
        raise SceneError(f"{ctx.name}: solve needs depth in the training views or scene points (COLMAP); this "
                         f"scene has neither (use --method optimize, which starts from random points)")
    extent = scene_extent(train, params["means"].detach().cpu().numpy())
    t1 = time.perf_counter()
    history = optimize_colour(ctx, params, iters, extent, f"colour {ctx.name}") if iters > 0 else []
    seconds = {"fusion": t1 - t0, "colour": time.perf_counter() - t1}
    return params, extent, source, history, {**info, "iterations": iters, "seconds": seconds}
