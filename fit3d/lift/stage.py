"""Stage 1: lift a frozen backbone's 2D patch features into per-scene feature Gaussians (FiT3D).

Per scene: read the views (every 8th held out), compute the targets (the backbone's last-layer patch
tokens of every view, cached), fit Gaussians + decoder with the method ``cfg.method`` names (``METHODS``),
evaluate the held-out views against two baselines, and write the lifted folder (``fit3d.lift.lifted``).

Python API: ``lift_scene(scene_or_path, LiftConfig(...), out_dir) -> lift.json dict``.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import torch

from fit3d.data import read_scene
from fit3d.data.readers import frame_number
from fit3d.data.scene import Scene
from fit3d.device import resolve_device
from fit3d.errors import SceneError
from fit3d.guard import check_not_input, mark, model_inputs
from fit3d.io import clean_stale_temps
from fit3d.lift.config import LiftConfig
from fit3d.lift.context import LiftContext
from fit3d.lift.evaluate import evaluate_heldout, save_pca_figure
from fit3d.lift.init import split_views
from fit3d.lift.lifted import lift_settings, write_lifted
from fit3d.lift.methods import METHODS
from fit3d.lift.optimize import remove_checkpoint
from fit3d.lift.targets import TargetCache, token_root
from fit3d.models import load_backbone


def warn_slow_raster(cfg: LiftConfig, device: torch.device) -> None:
    """Warn when a lift on CUDA would rasterize with the torch reference (gsplat missing). The solve's passes move to
    numba on the CPU by themselves; the colour and optimisation iterations stay on the GPU."""
    from fit3d.splat.rasterize import torch_fallback_on_cuda

    if torch_fallback_on_cuda(cfg.raster_backend, device):
        warnings.warn("lifting on CUDA without gsplat: the colour / optimisation iterations rasterize with the torch "
                      "reference, slower than numba on the CPU; `pip install gsplat` (fit3d's extra `cuda`) or "
                      "--device cpu", stacklevel=3)


def load_lift_backbone(cfg: LiftConfig, device=None):
    """The frozen backbone whose tokens are the targets."""
    return load_backbone(cfg.backbone, model_path=cfg.model_path, device=str(device or resolve_device(cfg.device)))


def read_lift_scene(scene_or_path, cfg: LiftConfig, names=None) -> Scene:
    """The scene (a ``Scene`` or a folder for ``read_scene``), restricted to frames <= ``cfg.max_frame`` (and to
    the view ``names`` when given)."""
    keep = None if cfg.max_frame is None else (lambda n: frame_number(n) <= cfg.max_frame)
    if names is not None:
        names, frame_ok = set(names), keep or (lambda n: True)
        keep = lambda n: n in names and frame_ok(n)  # noqa: E731
    if isinstance(scene_or_path, (str, os.PathLike)):
        return read_scene(scene_or_path, names=keep)
    return scene_or_path if keep is None else scene_or_path.select(keep)


def lift_scene(scene_or_path, cfg: LiftConfig | None = None, out_dir=".", *, backbone=None,
               name: str | None = None, scene: Scene | None = None,
               split: tuple[list[str], list[str]] | None = None) -> dict:
    """Lift one scene into ``out_dir`` (the scene's own folder; files gaussians.ply, decoder.safetensors,
    lift.json written last). A method may resume from its checkpoint in ``out_dir``.

    scene_or_path: a ``Scene`` or a folder for ``fit3d.data.read_scene``. ``backbone``: an already loaded
    backbone (else ``load_backbone(cfg.backbone, cfg.model_path)``). ``scene``: ``scene_or_path`` already
    read by :func:`read_lift_scene` (the CLI reads and checks it before loading the backbone). ``split``:
    the (training, held-out) view names (others are not used; default: every ``heldout_every``-th view held
    out). Returns the lift.json dict.
    """
    cfg = cfg or LiftConfig()
    cfg.validate()
    t_start = time.perf_counter()
    out = Path(out_dir)
    if isinstance(scene_or_path, (str, os.PathLike)):
        check_not_input(out, [scene_or_path, *model_inputs(cfg.model_path)])  # also for Python callers
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "lift")
    cache_root = token_root(cfg.cache_dir, out)
    for d in (out, cache_root):
        if d is not None:
            clean_stale_temps(d)  # left by a kill during an atomic write
    device = resolve_device(cfg.device)
    warn_slow_raster(cfg, device)
    wanted = None if split is None else set(split[0]) | set(split[1])
    scene = scene if scene is not None else read_lift_scene(scene_or_path, cfg, wanted)
    if wanted is not None:
        scene = scene.select(lambda n: n in wanted)
    src_path = str(Path(scene_or_path).resolve()) if isinstance(scene_or_path, (str, os.PathLike)) else scene.source
    layout = scene.meta.get("layout", "auto")
    name = name or scene.name
    if len(scene) < 2:
        raise SceneError(f"{src_path or name}: need at least 2 views to lift (one is held out), got {len(scene)}")
    if split is not None:
        train_idx, held_idx = named_split(scene, *split, src_path or name)
    else:
        train_idx, held_idx = split_views([v.name for v in scene.views], cfg.heldout_every)
    if not train_idx:
        raise SceneError(f"{src_path or name}: no training views left after holding out every {cfg.heldout_every}th")
    timings: dict[str, float] = {"read": time.perf_counter() - t_start}

    # Targets, computed on the source-resolution images and cached.
    t0 = time.perf_counter()
    backbone = backbone or load_lift_backbone(cfg, device)
    settings = lift_settings(cfg, src_path, split, device)
    cache = TargetCache.build(cache_root, scene.views, backbone, long_side=cfg.feature_size, backbone_name=cfg.backbone,
                              progress=cfg.progress, model=settings["model"], precision=settings["precision"])
    timings["features"] = time.perf_counter() - t0

    W, H = cfg.render_size(scene.views[0].width, scene.views[0].height)
    ctx = LiftContext(cfg, device, name, [v.resized(W, H) for v in scene.views], train_idx, held_idx, cache, out,
                      scene.points, scene.points_rgb, settings=settings, backbone=backbone)
    del scene  # the source-resolution images are no longer needed (when read here)
    result = METHODS[cfg.method].run(ctx)
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


def named_split(scene: Scene, train: list[str], held: list[str], where) -> tuple[list[int], list[int]]:
    """(training, held-out) view indices of ``scene`` for the given names (``SceneError`` naming a missing one)."""
    index = {v.name: i for i, v in enumerate(scene.views)}
    missing = [n for n in [*train, *held] if n not in index]
    if missing:
        raise SceneError(f"{where}: views {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} are not in "
                         f"the scene")
    overlap = set(train) & set(held)
    if overlap:
        raise SceneError(f"{where}: views {', '.join(sorted(overlap)[:5])} are both training and held-out views")
    return sorted(index[n] for n in train), sorted(index[n] for n in held)
