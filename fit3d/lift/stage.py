"""Stage 1: lift a frozen backbone's 2D patch features into per-scene feature Gaussians (FiT3D).

Per scene: read the views (every 8th held out), compute the targets (the backbone's last-layer patch
tokens of every view, cached), fit Gaussians + decoder with the method ``cfg.method`` names (``METHODS``),
evaluate the held-out views against two baselines, and write the lifted folder (``fit3d.lift.lifted``).

Python API: ``lift_scene(scene_or_path, LiftConfig(...), out_dir) -> lift.json dict``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable


from fit3d.data import read_scene
from fit3d.data.readers import frame_number
from fit3d.data.scene import Scene
from fit3d.device import resolve_device
from fit3d.errors import SceneError
from fit3d.guard import check_not_input, mark, model_inputs
from fit3d.io import clean_stale_temps, write_json
from fit3d.lift.config import LiftConfig
from fit3d.lift.context import LiftContext, LiftResult
from fit3d.lift.evaluate import evaluate_heldout, save_pca_figure
from fit3d.lift.init import as_gaussians, split_views
from fit3d.lift.lifted import DECODER_FILE, GAUSSIANS_FILE, META_FILE, lift_settings
from fit3d.lift.optimize import optimize_scene, remove_checkpoint
from fit3d.lift.solve import solve_scene
from fit3d.lift.targets import TargetCache
from fit3d.models import load_backbone

# Stage 1 methods: LiftContext -> LiftResult.
METHODS: dict[str, Callable[[LiftContext], LiftResult]] = {"optimize": optimize_scene, "solve": solve_scene}


def load_lift_backbone(cfg: LiftConfig, device=None):
    """The frozen backbone whose tokens are the targets."""
    return load_backbone(cfg.backbone, model_path=cfg.model_path, device=str(device or resolve_device(cfg.device)))


def read_lift_scene(scene_or_path, cfg: LiftConfig) -> Scene:
    """The scene (a ``Scene`` or a folder for ``read_scene``), restricted to frames <= ``cfg.max_frame``."""
    keep = None if cfg.max_frame is None else (lambda n: frame_number(n) <= cfg.max_frame)
    if isinstance(scene_or_path, (str, os.PathLike)):
        return read_scene(scene_or_path, names=keep)
    return scene_or_path if keep is None else scene_or_path.select(keep)


def lift_scene(scene_or_path, cfg: LiftConfig | None = None, out_dir=".", *, backbone=None,
               name: str | None = None, scene: Scene | None = None) -> dict:
    """Lift one scene into ``out_dir`` (the scene's own folder; files gaussians.ply, decoder.safetensors,
    lift.json written last). A method may resume from its checkpoint in ``out_dir``.

    scene_or_path: a ``Scene`` or a folder for ``fit3d.data.read_scene``. ``backbone``: an already loaded
    backbone (else ``load_backbone(cfg.backbone, cfg.model_path)``). ``scene``: ``scene_or_path`` already
    read by :func:`read_lift_scene` (the CLI reads and checks it before loading the backbone). Returns the
    lift.json dict.
    """
    cfg = cfg or LiftConfig()
    cfg.validate()
    t_start = time.perf_counter()
    out = Path(out_dir)
    if isinstance(scene_or_path, (str, os.PathLike)):
        check_not_input(out, [scene_or_path, *model_inputs(cfg.model_path)])  # also for Python callers
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "lift")
    for d in (out, out / "cache"):
        clean_stale_temps(d)  # left by a kill during an atomic write
    device = resolve_device(cfg.device)
    scene = scene if scene is not None else read_lift_scene(scene_or_path, cfg)
    src_path = str(Path(scene_or_path).resolve()) if isinstance(scene_or_path, (str, os.PathLike)) else scene.source
    layout = scene.meta.get("layout", "auto")
    name = name or scene.name
    if len(scene) < 2:
        raise SceneError(f"{src_path or name}: need at least 2 views to lift (one is held out), got {len(scene)}")
    names = [v.name for v in scene.views]
    train_idx, held_idx = split_views(names, cfg.heldout_every)
    if not train_idx:
        raise SceneError(f"{src_path or name}: no training views left after holding out every {cfg.heldout_every}th")
    timings: dict[str, float] = {"read": time.perf_counter() - t_start}

    # Targets, computed on the source-resolution images and cached.
    t0 = time.perf_counter()
    backbone = backbone or load_lift_backbone(cfg, device)
    settings = lift_settings(cfg, src_path)
    cache = TargetCache.build(out / "cache" / f"{cfg.backbone}-{cfg.feature_size}.npy", scene.views, backbone,
                              long_side=cfg.feature_size, backbone_name=cfg.backbone, progress=cfg.progress,
                              model=settings["model"])
    timings["features"] = time.perf_counter() - t0

    W, H = cfg.render_size(scene.views[0].width, scene.views[0].height)
    ctx = LiftContext(cfg, device, name, [v.resized(W, H) for v in scene.views], train_idx, held_idx, cache, out,
                      scene.points, scene.points_rgb, settings=settings)
    del scene  # the source-resolution images are no longer needed (when read here)
    result = METHODS[cfg.method](ctx)
    timings.update(result.timings)

    t0 = time.perf_counter()
    result.decoder.eval()
    heldout, pca = evaluate_heldout(result.params, result.decoder, ctx.views, train_idx, held_idx, cache,
                                    result.sh_degree, (W, H), result.extent, cfg.raster_backend,
                                    cfg.pca_views) if held_idx else ({}, [])
    timings["eval"] = time.perf_counter() - t0
    if pca:
        save_pca_figure(out / "heldout_pca.png", pca)
    meta = write_lifted(ctx, result, timings, t_start, src_path, layout, heldout)
    remove_checkpoint(ctx)
    return meta


def write_lifted(ctx: LiftContext, result: LiftResult, timings: dict, t_start: float, src_path, layout: str,
                 heldout: dict) -> dict:
    """gaussians.ply, decoder.safetensors, then lift.json (last: its presence marks the lift finished)."""
    cfg = ctx.cfg
    g = as_gaussians({k: v.detach().cpu() for k, v in result.params.items()}, result.sh_degree)
    g.save_ply(ctx.out / GAUSSIANS_FILE)
    result.decoder.cpu().save(ctx.out / DECODER_FILE)
    timings["total"] = time.perf_counter() - t_start
    names = [v.name for v in ctx.views]
    meta = {
        "name": ctx.name, "method": cfg.method, "backbone": cfg.backbone, "model_path": cfg.model_path,
        "feature_dim": cfg.feature_dim, "resolution": list(ctx.size),
        "scene": {"path": src_path, "layout": layout, "train_views": ctx.train_names,
                  "heldout_views": [names[i] for i in ctx.held_idx]},
        "iterations": cfg.iterations, "timings": timings, "heldout": heldout,
        "gaussians": len(g), "init": result.init_source, "extent": result.extent,
        "target_grid": list(ctx.cache.grid_size), "target_dim": ctx.cache.dim,
        "history": result.history, **result.extra, "config": asdict(cfg), "settings": ctx.settings,
    }
    write_json(ctx.out / META_FILE, meta)
    return meta
