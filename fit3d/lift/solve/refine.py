"""Optional gradient refinement after the solve: the features and decoder alone (``solve.refine_iterations``),
or everything through Stage 1's training step (``solve.joint_iterations``: solve as optimize's initialiser)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from tqdm import tqdm

from fit3d.lift.context import LiftContext
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.init import as_gaussians
from fit3d.lift.loss import feature_loss
from fit3d.lift.train import TrainState, decoder_optimizer, make_optimizer, train_step
from fit3d.splat.densify import DensifyStats
from fit3d.splat.render import render


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


def joint_refine(ctx: LiftContext, params: dict, decoder: FeatureDecoder, extent: float, iterations: int
                 ) -> list[dict]:
    """``iterations`` of Stage 1's training step (``fit3d.lift.train.train_step``: colour + feature loss, all
    parameters and the decoder, FiT3D's learning rates with the xyz decay over ``iterations``) from the solved
    field, in place; feature gradients reach geometry and opacity (without them, colour moves the surfels
    under fixed features: RedKitchen 0.952 -> 0.931 in 400 iterations; with them 0.957), no density control.
    Solve as the initialiser of optimize."""
    cfg = dataclasses.replace(ctx.cfg, iterations=iterations, feature_grad_to_geometry=True, densify=False)
    jctx = dataclasses.replace(ctx, cfg=cfg)
    st = TrainState(params, extent, make_optimizer(params, cfg, extent), DensifyStats(len(params["means"]), ctx.device),
                    torch.Generator().manual_seed(cfg.seed), decoder, decoder_optimizer(decoder, cfg))
    history, run = [], {}
    for it in tqdm(range(iterations), desc=f"joint {ctx.name}", disable=not cfg.progress, unit="it", leave=False):
        for k, v in train_step(jctx, st, it, 1, None).items():  # SH degree: the colour phase's (1 / it)
            run[k] = run.get(k, 0.0) + v
        if (it + 1) % max(1, iterations // 20) == 0 or it + 1 == iterations:
            n = (it + 1) - (history[-1]["iteration"] if history else 0)
            history.append({"iteration": it + 1, **{k: v / n for k, v in run.items()}, "phase": "joint"})
            run = {}
    params.update(st.params)
    return history
