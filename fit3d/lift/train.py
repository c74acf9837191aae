"""The training step every Stage 1 method shares: one view of a shuffled epoch, the colour loss (and, with a
decoder, the feature loss) through the rasterizer, Adam, and 3DGS density control on its schedule.

``optimize`` (FiT3D's method) runs it with a decoder for ``iterations``; ``solve`` runs it without one
(colour only) to settle its fused geometry, and with one for its optional joint refinement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fit3d.errors import NonFiniteError
from fit3d.lift.config import LiftConfig
from fit3d.lift.context import LiftContext
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.init import as_gaussians
from fit3d.lift.loss import color_loss, lift_loss
from fit3d.splat.densify import (PARAM_NAMES, DensifySchedule, DensifyStats, densify_and_prune, param_group,
                                 reset_opacity)
from fit3d.splat.render import render


def make_optimizer(params: dict, cfg: LiftConfig, extent: float) -> torch.optim.Adam:
    """Adam (eps 1e-15) with one named group per 3DGS parameter, FiT3D's learning rates; torch's fused
    implementation on CPU / CUDA (one kernel for all groups: on 2 CPU cores 2-3x faster than foreach)."""
    lrs = {"means": cfg.lr_means * extent, "quats": cfg.lr_rotation, "log_scales": cfg.lr_scaling,
           "opacity_logits": cfg.lr_opacity, "sh_dc": cfg.lr_sh_dc, "sh_rest": cfg.lr_sh_rest,
           "features": cfg.lr_features}
    return torch.optim.Adam([{"params": [params[k]], "lr": lrs[k], "name": k} for k in PARAM_NAMES], lr=0.0, eps=1e-15,
                            fused=params["means"].device.type in ("cpu", "cuda") or None)


def decoder_optimizer(decoder: FeatureDecoder, cfg: LiftConfig) -> torch.optim.Adam:
    """Adam (eps 1e-15) on the decoder at ``lr_decoder``."""
    return torch.optim.Adam(decoder.parameters(), lr=cfg.lr_decoder, eps=1e-15)


def _log_linear(it: int, iterations: int, start: float, final: float) -> float:
    """3DGS's exponential (log-linear) decay from ``start`` to ``final`` over ``iterations``."""
    t = min(max(it / max(iterations, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(start) + t * math.log(final))


def means_lr(it: int, cfg: LiftConfig, extent: float) -> float:
    """lr_means -> lr_means_final over the run (``cfg.iterations``), times the scene extent (3DGS)."""
    return extent * _log_linear(it, cfg.iterations, cfg.lr_means, cfg.lr_means_final)


def features_lr(it: int, cfg: LiftConfig) -> float:
    """lr_features decayed log-linearly to lr_features_final over the run (constant when that is None)."""
    if cfg.lr_features_final is None:
        return cfg.lr_features
    return _log_linear(it, cfg.iterations, cfg.lr_features, cfg.lr_features_final)


@dataclass(frozen=True)
class Densification:
    """How a run controls density: 3DGS's ``schedule`` (scaled to the run), a cap on the count, and whether
    it prunes by screen size after the first opacity reset and resets opacity (3DGS: both; short colour runs
    from opaque surfels: neither)."""

    schedule: DensifySchedule
    max_gaussians: int
    prune_screen_size: bool = True
    reset_opacity: bool = True


@dataclass
class TrainState:
    """What the step changes: raw parameters (``init_params``' keys) and their optimiser, the decoder and its
    optimiser (None: colour only), density statistics, the view-order generator and the current epoch's
    remaining view order."""

    params: dict
    extent: float
    optimizer: torch.optim.Adam
    stats: DensifyStats
    gen: torch.Generator
    decoder: FeatureDecoder | None = None
    dec_opt: torch.optim.Adam | None = None
    perm: list = field(default_factory=list)


def train_step(ctx: LiftContext, st: TrainState, it: int, sh_interval: int, dens: Densification | None) -> dict:
    """Iteration ``it`` (0-based; learning rates decay over ``ctx.cfg.iterations``) on the next view of the
    shuffled epoch; the SH degree rises by one every ``sh_interval``; ``dens`` None: no density control.
    Returns its loss terms {"loss", "rgb"(, "feat")}."""
    cfg, dev = ctx.cfg, ctx.device
    W, H = ctx.size
    if not st.perm:
        st.perm = torch.randperm(len(ctx.train_idx), generator=st.gen).tolist()
    v = ctx.views[ctx.train_idx[st.perm.pop()]]
    param_group(st.optimizer, "means")["lr"] = means_lr(it, cfg, st.extent)
    features = st.decoder is not None
    if features and cfg.lr_features_final is not None:  # the decoder's LR follows the features' by the same factor
        lr_f = features_lr(it, cfg)
        param_group(st.optimizer, "features")["lr"] = lr_f
        st.dec_opt.param_groups[0]["lr"] = cfg.lr_decoder * lr_f / cfg.lr_features
    g = as_gaussians(st.params, min(cfg.max_sh_degree, it // sh_interval))
    gt = torch.as_tensor(v.image, device=dev)
    if features:
        r = render(g, v.K, v.c2w, W, H, detach_geometry_for_features=not cfg.feature_grad_to_geometry,
                   backend=cfg.raster_backend)
        decoded = st.decoder(r.features.permute(2, 0, 1)[None])  # [1, D, H, W]
        loss = lift_loss(r.rgb, gt, decoded, ctx.cache, ctx.cache.index(v.name), cfg)
        total, terms = loss.total, {"rgb": loss.rgb, "feat": loss.feature}
    else:
        r = render(g, v.K, v.c2w, W, H, with_features=False, backend=cfg.raster_backend)
        total = color_loss(r.rgb, gt, cfg.lambda_dssim)
        terms = {"rgb": total}
    if not torch.isfinite(total):
        what = "loss" if features else "colour loss"
        raise NonFiniteError(f"lift {ctx.name}: {what} became {float(total)} at iteration {it} (view {v.name})")
    total.backward()
    with torch.no_grad():
        if dens is not None and it < dens.schedule.stop:
            vm = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=dev))
            st.stats.update(st.params["means"].detach(), st.params["means"].grad,
                            st.params["log_scales"].detach().exp().max(1).values, vm,
                            torch.as_tensor(v.K, dtype=torch.float32, device=dev), W, H)
    for opt in (st.optimizer, st.dec_opt) if features else (st.optimizer,):
        opt.step()
        opt.zero_grad(set_to_none=True)
    done = it + 1
    if dens is not None:
        sched = dens.schedule
        if sched.densify_now(done):
            screen = dens.prune_screen_size and done > sched.opacity_reset_interval
            densify_and_prune(st.params, st.optimizer, st.stats, grad_threshold=cfg.densify_grad_threshold,
                              extent=st.extent, percent_dense=cfg.percent_dense, min_opacity=cfg.min_opacity,
                              max_screen_size=cfg.max_screen_frac * W if screen else None,
                              max_gaussians=dens.max_gaussians, generator=st.gen)
        if dens.reset_opacity and sched.reset_now(done):
            reset_opacity(st.params, st.optimizer)
    return {"loss": float(total.detach()), **{k: float(t.detach()) for k, t in terms.items()}}
