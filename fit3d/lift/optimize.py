"""Stage 1 by optimisation (FiT3D's method): 3DGS training of colour, geometry and per-Gaussian features
against the colour + feature loss (``fit3d.lift.loss``) under 3DGS density control, one view per
iteration. Resumable: the whole state is checkpointed to ``<out>/checkpoint.safetensors`` (``fit3d.run``:
tensors + JSON, no pickle) every ``checkpoint_every`` iterations and on SIGTERM / SIGINT; a checkpoint made
with other settings (``ctx.settings`` + the training views) is an error naming them, never resumed.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fit3d.errors import Fit3DError
from fit3d.lift.context import LiftContext, LiftResult
from fit3d.lift.decoder import FeatureDecoder, pca_init_decoder
from fit3d.lift.init import init_params, initial_points, scene_extent
from fit3d.lift.lifted import current_settings
from fit3d.lift.train import Densification, TrainState, decoder_optimizer, make_optimizer, train_step
from fit3d.run import Interrupt, check_resume, load_checkpoint, save_checkpoint
from fit3d.splat.densify import DensifySchedule, DensifyStats

CHECKPOINT_FILE = "checkpoint.safetensors"
OLD_CHECKPOINT_FILE = "checkpoint.pt"  # pickled (fit3d < this version): never loaded
STOP_AFTER_ENV = "FIT3D_LIFT_STOP_AFTER"  # testing aid: SIGKILL the process right after checkpointing iteration k


@dataclass
class _State(TrainState):
    """Everything a checkpoint holds: the step's state (``TrainState``), where the points came from, the numpy
    RNG and the progress."""

    init_source: str = ""
    rng: np.random.Generator | None = None
    iteration: int = 0
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: int | None = None


def _fresh_state(ctx: LiftContext) -> _State:
    cfg, dev = ctx.cfg, ctx.device
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = [ctx.views[i] for i in ctx.train_idx]
    pts, cols, init_source = initial_points(train, ctx.points, ctx.points_rgb, cfg, rng)
    extent = scene_extent(train, pts)
    params = init_params(pts, cols, cfg, dev)
    decoder = FeatureDecoder(cfg.feature_dim, ctx.cache.dim, cfg.decoder_kernel).to(dev)
    if cfg.decoder_init == "pca":
        pca_init_decoder(decoder, ctx.cache, ctx.train_names, seed=cfg.seed)
    return _State(params, extent, make_optimizer(params, cfg, extent), DensifyStats(len(params["means"]), dev), gen,
                  decoder, decoder_optimizer(decoder, cfg), init_source=init_source, rng=rng)


def _resume_state(ctx: LiftContext, tensors: dict, ckpt: dict) -> _State:
    cfg, dev = ctx.cfg, ctx.device
    torch.manual_seed(cfg.seed)
    ckpt = {**tensors, **ckpt}
    params = {k: nn.Parameter(v.to(dev)) for k, v in ckpt["params"].items()}
    decoder = FeatureDecoder(cfg.feature_dim, ctx.cache.dim, cfg.decoder_kernel).to(dev)
    decoder.load_state_dict(ckpt["decoder"])
    st = _State(params, ckpt["extent"], make_optimizer(params, cfg, ckpt["extent"]),
                DensifyStats(len(params["means"]), dev), torch.Generator(), decoder, decoder_optimizer(decoder, cfg),
                ckpt["perm"], init_source=ckpt["init_source"], rng=np.random.default_rng(cfg.seed),
                iteration=ckpt["iteration"], history=ckpt["history"], train_seconds=ckpt["train_seconds"],
                resumed_from=ckpt["iteration"])
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
    check_resume(current_settings(state.get("settings")), checkpoint_settings(ctx), "interrupted lift's checkpoint",
                 path, how="rerun with the settings it was started with, or with --overwrite to start over")
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


def optimize_scene(ctx: LiftContext) -> LiftResult:
    """Train the scene's Gaussians and decoder for ``cfg.iterations`` (resuming a checkpoint of this run)."""
    cfg = ctx.cfg
    st = _load_state(ctx)
    dens = Densification(DensifySchedule.scaled(cfg.iterations), cfg.max_gaussians) if cfg.densify else None
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
            for k, v in train_step(ctx, st, it, sh_interval, dens).items():
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
