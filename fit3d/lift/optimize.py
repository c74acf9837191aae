"""Stage 1 by optimisation (FiT3D's method): 3DGS training of colour, geometry and per-Gaussian features
against the colour + feature loss (``fit3d.lift.loss``) under 3DGS density control, one view per
iteration. Resumable: the whole state is checkpointed to ``<out>/checkpoint.safetensors`` (``fit3d.run``:
tensors + JSON, no pickle) every ``checkpoint_every`` iterations and on SIGTERM / SIGINT; a checkpoint made
with other settings (``ctx.settings`` + the training views) is an error naming them, never resumed.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fit3d.errors import Fit3DError, NonFiniteError
from fit3d.lift.config import LiftConfig
from fit3d.lift.context import LiftContext, LiftResult
from fit3d.lift.decoder import FeatureDecoder, pca_init_decoder
from fit3d.lift.init import as_gaussians, camera_extent, init_params, initial_points
from fit3d.lift.loss import lift_loss
from fit3d.splat.densify import (PARAM_NAMES, DensifySchedule, DensifyStats, densify_and_prune, param_group,
                                 reset_opacity)
from fit3d.run import Interrupt, check_resume, load_checkpoint, save_checkpoint
from fit3d.splat.render import render

CHECKPOINT_FILE = "checkpoint.safetensors"
OLD_CHECKPOINT_FILE = "checkpoint.pt"  # pickled (fit3d < this version): never loaded
STOP_AFTER_ENV = "FIT3D_LIFT_STOP_AFTER"  # testing aid: SIGKILL the process right after checkpointing iteration k


def make_optimizer(params: dict, cfg: LiftConfig, extent: float) -> torch.optim.Adam:
    """Adam (eps 1e-15) with one named group per 3DGS parameter, FiT3D's learning rates; torch's fused
    implementation on CPU / CUDA (one kernel for all groups: on 2 CPU cores 2-3x faster than foreach)."""
    lrs = {"means": cfg.lr_means * extent, "quats": cfg.lr_rotation, "log_scales": cfg.lr_scaling,
           "opacity_logits": cfg.lr_opacity, "sh_dc": cfg.lr_sh_dc, "sh_rest": cfg.lr_sh_rest,
           "features": cfg.lr_features}
    return torch.optim.Adam([{"params": [params[k]], "lr": lrs[k], "name": k} for k in PARAM_NAMES], lr=0.0, eps=1e-15,
                            fused=params["means"].device.type in ("cpu", "cuda") or None)


def _log_linear(it: int, iterations: int, start: float, final: float) -> float:
    """3DGS's exponential (log-linear) decay from ``start`` to ``final`` over ``iterations``."""
    t = min(max(it / max(iterations, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(start) + t * math.log(final))


def means_lr(it: int, cfg: LiftConfig, extent: float) -> float:
    """lr_means -> lr_means_final over the run, times the scene extent (3DGS)."""
    return extent * _log_linear(it, cfg.iterations, cfg.lr_means, cfg.lr_means_final)


def features_lr(it: int, cfg: LiftConfig) -> float:
    """lr_features decayed log-linearly to lr_features_final over the run (constant when that is None)."""
    if cfg.lr_features_final is None:
        return cfg.lr_features
    return _log_linear(it, cfg.iterations, cfg.lr_features, cfg.lr_features_final)


@dataclass
class _State:
    """Everything a checkpoint holds: the parameters, optimisers, density statistics, RNGs and progress."""

    params: dict
    extent: float
    init_source: str
    optimizer: torch.optim.Adam
    decoder: FeatureDecoder
    dec_opt: torch.optim.Adam
    stats: DensifyStats
    gen: torch.Generator
    rng: np.random.Generator
    iteration: int = 0
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    perm: list = field(default_factory=list)
    resumed_from: int | None = None


def _fresh_state(ctx: LiftContext) -> _State:
    cfg, dev = ctx.cfg, ctx.device
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = [ctx.views[i] for i in ctx.train_idx]
    pts, cols, init_source = initial_points(train, ctx.points, ctx.points_rgb, cfg, rng)
    # Cameras that barely move (turntable-free captures) give a near-zero radius: floor it at a
    # tenth of the initial point cloud's size so the xyz LR and the split threshold stay sensible.
    extent = max(camera_extent(np.stack([v.c2w for v in train])),
                 0.1 * float(np.linalg.norm(pts.max(0) - pts.min(0))), 1e-3)
    params = init_params(pts, cols, cfg, dev)
    decoder = FeatureDecoder(cfg.feature_dim, ctx.cache.dim, cfg.decoder_kernel).to(dev)
    if cfg.decoder_init == "pca":
        pca_init_decoder(decoder, ctx.cache, ctx.train_names, seed=cfg.seed)
    return _State(params, extent, init_source, make_optimizer(params, cfg, extent), decoder,
                  torch.optim.Adam(decoder.parameters(), lr=cfg.lr_decoder, eps=1e-15),
                  DensifyStats(len(params["means"]), dev), gen, rng)


def _resume_state(ctx: LiftContext, tensors: dict, ckpt: dict) -> _State:
    cfg, dev = ctx.cfg, ctx.device
    torch.manual_seed(cfg.seed)
    ckpt = {**tensors, **ckpt}
    params = {k: nn.Parameter(v.to(dev)) for k, v in ckpt["params"].items()}
    decoder = FeatureDecoder(cfg.feature_dim, ctx.cache.dim, cfg.decoder_kernel).to(dev)
    decoder.load_state_dict(ckpt["decoder"])
    st = _State(params, ckpt["extent"], ckpt["init_source"], make_optimizer(params, cfg, ckpt["extent"]), decoder,
                torch.optim.Adam(decoder.parameters(), lr=cfg.lr_decoder, eps=1e-15),
                DensifyStats(len(params["means"]), dev), torch.Generator(), np.random.default_rng(cfg.seed),
                ckpt["iteration"], ckpt["history"], ckpt["train_seconds"], ckpt["perm"], ckpt["iteration"])
    st.optimizer.load_state_dict(ckpt["optimizer"])
    st.dec_opt.load_state_dict(ckpt["decoder_optimizer"])
    st.stats.load_state_dict({k: v.to(dev) for k, v in ckpt["stats"].items()})
    st.gen.set_state(ckpt["generator"])
    st.rng.bit_generator.state = ckpt["np_rng"]
    return st


def checkpoint_settings(ctx: LiftContext) -> dict:
    """What a checkpoint must share with this run to be resumed: the lift settings and training views."""
    return {**ctx.settings, "train_views": ctx.train_names}


def _load_state(ctx: LiftContext) -> _State:
    """Resume from ``<out>/checkpoint.safetensors`` when present (``SettingsMismatch`` when it was made
    with other settings), else start fresh."""
    path = ctx.out / CHECKPOINT_FILE
    if (ctx.out / OLD_CHECKPOINT_FILE).exists():
        raise Fit3DError(f"{ctx.out / OLD_CHECKPOINT_FILE}: a pickled checkpoint of an older fit3d; it is never "
                         f"loaded (unpickling can run code): delete it to start over")
    if not path.exists():
        return _fresh_state(ctx)
    tensors, state = load_checkpoint(path)  # CPU: generator states must stay there; .to(dev) below
    check_resume(state.get("settings"), checkpoint_settings(ctx), "interrupted lift's checkpoint", path,
                 how="rerun with the settings it was started with, or with --overwrite to start over")
    try:
        return _resume_state(ctx, tensors, state)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise Fit3DError(f"{path}: checkpoint does not fit this run ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); delete it to start over") from None


def _save_state(ctx: LiftContext, st: _State, train_seconds: float) -> None:
    save_checkpoint(ctx.out / CHECKPOINT_FILE,
                    {"params": {k: v.detach() for k, v in st.params.items()},
                     "optimizer": st.optimizer.state_dict(), "decoder": st.decoder.state_dict(),
                     "decoder_optimizer": st.dec_opt.state_dict(), "stats": st.stats.state_dict(),
                     "generator": st.gen.get_state()},
                    {"iteration": st.iteration, "np_rng": st.rng.bit_generator.state, "history": st.history,
                     "train_seconds": train_seconds, "perm": st.perm, "extent": st.extent,
                     "init_source": st.init_source, "settings": checkpoint_settings(ctx)})


def _step(ctx: LiftContext, st: _State, it: int, sched: DensifySchedule, sh_interval: int) -> dict:
    """One iteration on the next view of the shuffled epoch; returns its loss terms."""
    cfg, dev = ctx.cfg, ctx.device
    W, H = ctx.size
    if not st.perm:
        st.perm = torch.randperm(len(ctx.train_idx), generator=st.gen).tolist()
    v = ctx.views[ctx.train_idx[st.perm.pop()]]
    param_group(st.optimizer, "means")["lr"] = means_lr(it, cfg, st.extent)
    if cfg.lr_features_final is not None:  # the decoder's LR follows the features' by the same factor
        lr_f = features_lr(it, cfg)
        param_group(st.optimizer, "features")["lr"] = lr_f
        st.dec_opt.param_groups[0]["lr"] = cfg.lr_decoder * lr_f / cfg.lr_features
    g = as_gaussians(st.params, min(cfg.max_sh_degree, it // sh_interval))
    r = render(g, v.K, v.c2w, W, H, detach_geometry_for_features=not cfg.feature_grad_to_geometry,
               backend=cfg.raster_backend)
    decoded = st.decoder(r.features.permute(2, 0, 1)[None])  # [1, D, H, W]
    loss = lift_loss(r.rgb, torch.as_tensor(v.image, device=dev), decoded, ctx.cache, ctx.cache.index(v.name), cfg)
    if not torch.isfinite(loss.total):
        raise NonFiniteError(f"lift {ctx.name}: loss became {float(loss.total)} at iteration {it} (view {v.name})")
    loss.total.backward()
    with torch.no_grad():
        if cfg.densify and it < sched.stop:
            vm = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=dev))
            st.stats.update(st.params["means"].detach(), st.params["means"].grad,
                            st.params["log_scales"].detach().exp().max(1).values, vm,
                            torch.as_tensor(v.K, dtype=torch.float32, device=dev), W, H)
    for opt in (st.optimizer, st.dec_opt):
        opt.step()
        opt.zero_grad(set_to_none=True)
    done = it + 1
    if cfg.densify:
        if sched.densify_now(done):
            densify_and_prune(st.params, st.optimizer, st.stats, grad_threshold=cfg.densify_grad_threshold,
                              extent=st.extent, percent_dense=cfg.percent_dense, min_opacity=cfg.min_opacity,
                              max_screen_size=cfg.max_screen_frac * W if done > sched.opacity_reset_interval else None,
                              max_gaussians=cfg.max_gaussians, generator=st.gen)
        if sched.reset_now(done):
            reset_opacity(st.params, st.optimizer)
    return {"loss": float(loss.total.detach()), "rgb": float(loss.rgb.detach()), "feat": float(loss.feature.detach())}


def optimize_scene(ctx: LiftContext) -> LiftResult:
    """Train the scene's Gaussians and decoder for ``cfg.iterations`` (resuming a checkpoint of this run)."""
    cfg = ctx.cfg
    st = _load_state(ctx)
    sched = DensifySchedule.scaled(cfg.iterations)
    sh_interval = max(1, cfg.iterations // 30)
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    t0 = time.perf_counter()
    elapsed = lambda: st.train_seconds + time.perf_counter() - t0  # noqa: E731
    run: dict[str, float] = {"loss": 0.0, "rgb": 0.0, "feat": 0.0}
    n_run = 0
    bar = tqdm(range(st.iteration, cfg.iterations), desc=f"lift {ctx.name}", disable=not cfg.progress, unit="it",
               initial=st.iteration, total=cfg.iterations)
    with Interrupt() as term:
        for it in bar:
            for k, v in _step(ctx, st, it, sched, sh_interval).items():
                run[k] += v
            n_run += 1
            done = st.iteration = it + 1
            if done % max(1, cfg.iterations // 50) == 0 or done == cfg.iterations:
                st.history.append({"iteration": done, **{k: v / n_run for k, v in run.items()},
                                   "gaussians": len(st.params["means"])})
                run, n_run = dict.fromkeys(run, 0.0), 0
                bar.set_postfix(loss=f"{st.history[-1]['loss']:.3f}", feat=f"{st.history[-1]['feat']:.3f}",
                                n=len(st.params["means"]))
            stop = term.requested or done == stop_after
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations) or stop:
                _save_state(ctx, st, elapsed())
            if done == stop_after:
                os.kill(os.getpid(), signal.SIGKILL)  # testing aid: a hard kill right after the checkpoint
            if term.requested:
                term.stop(f"lift {ctx.name}: iteration {done}", ctx.out / CHECKPOINT_FILE)
    bar.close()
    return LiftResult(st.params, st.decoder, min(cfg.max_sh_degree, cfg.iterations // sh_interval), st.extent,
                      st.init_source, st.history, {"train": elapsed()}, {"resumed_from": st.resumed_from})


def remove_checkpoint(ctx: LiftContext) -> None:
    """Called once the lifted folder is written."""
    (ctx.out / CHECKPOINT_FILE).unlink(missing_ok=True)
