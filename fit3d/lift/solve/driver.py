"""``solve_scene``: the solve method's sequence for one scene (geometry, features, decoder, refinement) and
its record (timings per phase, the solve's choices) for lift.json."""

from __future__ import annotations

import time
import warnings

import torch

from fit3d.lift.context import LiftContext, LiftResult
from fit3d.lift.decoder import FeatureDecoder, pca_init_decoder
from fit3d.lift.solve.features import solve_features
from fit3d.lift.methods import METHODS
from fit3d.lift.solve.geometry import has_depth, solve_geometry
from fit3d.lift.solve.lsq_decoder import fit_decoder
from fit3d.lift.solve.refine import joint_refine, refine_features


def solve_scene(ctx: LiftContext) -> LiftResult:
    """Stage 1 by ``method = "solve"``: geometry (``solve_geometry``), then features in closed form
    (``solve_features``) with the training tokens' PCA as decoder, optionally refined (f and decoder:
    ``solve.refine_iterations``; everything: ``solve.joint_iterations``). A scene with neither depth nor points
    (COLMAP) is lifted by ``optimize`` (random start, colour and features trained together; recorded under
    ``solve.fell_back_to``): colour-only training from random points leaves no geometry to solve features on."""
    cfg = ctx.cfg
    if not has_depth([ctx.views[i] for i in ctx.train_idx]) and (ctx.points is None or len(ctx.points) == 0):
        warnings.warn(f"{ctx.name}: no depth and no scene points: lifting by optimize instead of solve (a COLMAP "
                      f"model's points, e.g. from `fit3d prepare`, let solve run)", stacklevel=2)
        result = METHODS["optimize"].run(ctx)
        result.extra = {**result.extra, "solve": {"fell_back_to": "optimize", "reason": "no depth, no scene points"}}
        return result
    torch.manual_seed(cfg.seed)
    c0, t0 = time.process_time(), time.perf_counter()
    params, extent, source, history, info = solve_geometry(ctx)
    t1 = time.perf_counter()
    decoder = FeatureDecoder(cfg.feature_dim, ctx.cache.dim, cfg.solve.decoder_kernel or cfg.decoder_kernel
                             ).to(ctx.device)
    pca_init_decoder(decoder, ctx.cache, ctx.train_names, seed=cfg.seed)
    lsq = cfg.solve.decoder == "lsq"
    vs, ds = max(1, cfg.solve.view_stride), max(1, cfg.solve.decoder_stride)
    reuse = ds // vs if lsq and ds % vs == 0 else 0  # the decoder's views are every (ds / vs)-th of the solve's
    params, finfo, pixels = solve_features(ctx, params, decoder, keep_pixels=reuse)
    td = time.perf_counter()
    if lsq:
        views = [ctx.views[i] for i in ctx.train_idx][::ds]
        finfo["decoder"] = fit_decoder(ctx, params, decoder, views, weights=pixels)
    t2 = time.perf_counter()
    refine = refine_features(ctx, params, decoder, cfg.solve.refine_iterations) if cfg.solve.refine_iterations else []
    t3 = time.perf_counter()
    joint = joint_refine(ctx, params, decoder, extent, cfg.solve.joint_iterations) if cfg.solve.joint_iterations else []
    t4 = time.perf_counter()
    sh = min(cfg.max_sh_degree, (len(history) and history[-1]["iteration"] - 1) // max(1, info["iterations"] // 30))
    if joint:
        sh = max(sh, min(cfg.max_sh_degree, cfg.solve.joint_iterations - 1))
    timings = {"geometry": t1 - t0, **info.pop("seconds"), **finfo.pop("seconds"), "decoder": t2 - td, "solve": t2 - t1,
               "refine": t3 - t2, "joint": t4 - t3, "lift": t4 - t0, "lift_cpu": time.process_time() - c0}
    return LiftResult(params, decoder, sh, extent, source, history + refine + joint, timings,
                      {"solve": {**info, **finfo}})
