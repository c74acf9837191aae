"""A lifted scene on disk: the output of Stage 1 and the input of Stage 2.

Folder layout::

    <out>/<scene>/gaussians.ply        3DGS-compatible PLY + feat_0..feat_{F-1}
    <out>/<scene>/decoder.safetensors  FeatureDecoder (f -> D)
    <out>/<scene>/lift.json            name, method, backbone, model_path, feature_dim, resolution [W, H],
                                       scene {path, layout, train_views, heldout_views}, iterations,
                                       timings, heldout metrics, gaussians (count), init, extent,
                                       history, the method's own record (e.g. "solve"), config, settings
                                       (what determines the result: the non-volatile LiftConfig fields, the
                                       chosen method's own settings only, and the scene path)

Every method's folder is written by :func:`write_lifted` alone. A finished folder is reused only when its
recorded ``settings`` equal the new run's (:func:`reuse_finished`); otherwise the rerun stops naming the
differing fields. Folders of older versions load with their keys brought to these (:func:`current_meta`):
the back-projected lifts' ``num_gaussians`` / ``builder``, the flat ``solve_*`` settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fit3d.data import read_scene
from fit3d.errors import SceneError
from fit3d.io import read_json_dict, write_json
from fit3d.lift.config import SolveConfig
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.init import as_gaussians
from fit3d.lift.methods import METHODS
from fit3d.splat.gaussians import FeatureGaussians

GAUSSIANS_FILE = "gaussians.ply"
DECODER_FILE = "decoder.safetensors"
META_FILE = "lift.json"


def is_lifted(path) -> bool:
    """True when ``path`` holds a finished lift (``lift.json`` is written last)."""
    p = Path(path)
    return all((p / f).exists() for f in (GAUSSIANS_FILE, DECODER_FILE, META_FILE))


@dataclass
class LiftedScene:
    name: str
    path: Path
    gaussians: FeatureGaussians
    decoder: FeatureDecoder
    meta: dict

    @property
    def resolution(self) -> tuple[int, int]:
        """(width, height) the scene was lifted at."""
        w, h = self.meta["resolution"]
        return int(w), int(h)

    def read_views(self, which: str = "train", **kwargs):
        """Re-read this scene's source views (``which`` in train / heldout / all) at the lift resolution."""
        s = self.meta["scene"]
        scene = read_scene(s["path"], layout=s.get("layout", "auto"), resolution=self.resolution, **kwargs)
        if which == "all":
            return scene
        keep = set(s["train_views"] if which == "train" else s["heldout_views"])
        return scene.select(lambda n: n in keep)


def load_lifted(path, map_location: str | torch.device = "cpu") -> LiftedScene:
    """Load a lifted scene folder (Gaussians stay on ``map_location``, CPU by default)."""
    p = Path(path)
    if not is_lifted(p):
        missing = [f for f in (GAUSSIANS_FILE, DECODER_FILE, META_FILE) if not (p / f).exists()]
        raise SceneError(f"{p}: not a finished lifted scene (missing {', '.join(missing)}); run `fit3d lift` first")
    meta = current_meta(read_json_dict(p / META_FILE, "lifted scene record", keys=("resolution", "scene")))
    try:
        g = FeatureGaussians.load_ply(p / GAUSSIANS_FILE).to(map_location)
    except Exception as e:  # plyfile raises several types for a truncated / foreign file
        raise SceneError(f"{p / GAUSSIANS_FILE}: Gaussians are unreadable or corrupt ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); re-lift the scene") from None
    try:
        dec = FeatureDecoder.load(p / DECODER_FILE, map_location=map_location)
    except Exception as e:  # safetensors raises its own error type; a foreign file a KeyError
        raise SceneError(f"{p / DECODER_FILE}: decoder is unreadable or corrupt ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); re-lift the scene") from None
    return LiftedScene(name=meta.get("name", p.name), path=p, gaussians=g, decoder=dec, meta=meta)


def lift_settings(cfg, scene_path, split: tuple[list[str], list[str]] | None = None, device=None) -> dict:
    """What determines a lift's result: the non-volatile ``LiftConfig`` fields with only the chosen method's
    nested settings (``fit3d.lift.methods``), the scene's path, the model's identity
    (``fit3d.models.identity``: resolved weights, fingerprint, architecture), the dtype of the target features
    (``precision`` resolved on ``device``, default ``cfg.device``'s: fp32 / bf16) and, when the views were named,
    the split."""
    from fit3d.device import resolve_device, resolve_precision
    from fit3d.models.identity import model_identity
    from fit3d.run import result_settings

    other = {m.config for name, m in METHODS.items() if m.config and name != cfg.method}
    out = {k: v for k, v in result_settings(cfg).items() if k not in other}
    if split is not None:
        out["views"] = {"train": sorted(split[0]), "heldout": sorted(split[1])}
    out["precision"] = resolve_precision(cfg.precision, device if device is not None else resolve_device(cfg.device))
    return {**out, "scene": str(scene_path), "model": model_identity(cfg.backbone, cfg.model_path)}


def current_settings(recorded):
    """Recorded lift settings in today's keys: before the methods had nested settings, every record held all
    of method solve's as flat ``solve_*`` fields; they become ``{"solve": {...}}`` for a solve lift and are
    dropped for the others (they never changed those), so an unchanged rerun still resumes / reuses. A solve
    record from before ``geometry_iterations_per_view`` ran its colour iterations uncapped (0), which is
    today's default when it ran none (the cap changes nothing then)."""
    if not isinstance(recorded, dict):
        return recorded
    out = recorded
    if any(k.startswith("solve_") for k in recorded):
        out = {k: v for k, v in recorded.items() if not k.startswith("solve_")}
        if recorded.get("method") == "solve":
            out["solve"] = {k[len("solve_"):]: v for k, v in recorded.items() if k.startswith("solve_")}
    if "precision" not in out:  # recorded before the setting: float32 targets (no lift had run on CUDA)
        out = {**out, "precision": "fp32"}
    solve = out.get("solve")
    if out.get("method") == "solve" and isinstance(solve, dict) and "geometry_iterations_per_view" not in solve:
        cap = SolveConfig.geometry_iterations_per_view if solve.get("geometry_iterations") == 0 else 0.0
        out = {**out, "solve": {**solve, "geometry_iterations_per_view": cap}}
    return out


def current_meta(meta: dict) -> dict:
    """A lift.json dict in today's keys (:func:`current_settings`; the back-projected lifts of older versions
    wrote ``num_gaussians`` and ``builder`` for ``gaussians`` and ``method``)."""
    meta = dict(meta)
    if "num_gaussians" in meta and "gaussians" not in meta:
        meta["gaussians"] = meta.pop("num_gaussians")
    if "method" not in meta and "backprojected" in str(meta.get("builder", "")):
        meta["method"] = "backprojected"
        meta.pop("builder")
    if "settings" in meta:
        meta["settings"] = current_settings(meta["settings"])
    return meta


def write_lifted(ctx, result, timings: dict, t_start: float, src_path, layout: str, heldout: dict) -> dict:
    """The lifted folder of any method: gaussians.ply, decoder.safetensors, then lift.json (last: its presence
    marks the lift finished). ``ctx``: the ``LiftContext``, ``result``: the method's ``LiftResult``."""
    cfg = ctx.cfg
    g = as_gaussians({k: v.detach().cpu() for k, v in result.params.items()}, result.sh_degree)
    g.save_ply(ctx.out / GAUSSIANS_FILE)
    result.decoder.cpu().save(ctx.out / DECODER_FILE)
    timings["total"] = time.perf_counter() - t_start
    names = [v.name for v in ctx.views]
    meta = {
        "name": ctx.name, "method": cfg.method, "backbone": cfg.backbone, "model_path": cfg.model_path,
        "feature_dim": result.decoder.in_dim, "resolution": list(ctx.size),
        "scene": {"path": src_path, "layout": layout, "train_views": ctx.train_names,
                  "heldout_views": [names[i] for i in ctx.held_idx]},
        "iterations": cfg.iterations, "timings": timings, "heldout": heldout,
        "gaussians": len(g), "init": result.init_source, "extent": result.extent,
        "target_grid": list(ctx.cache.grid_size), "target_dim": ctx.cache.dim,
        "targets_computed": getattr(ctx.cache, "computed", None),  # views the backbone ran on (others: token cache)
        "history": result.history, **result.extra, "config": asdict(cfg), "settings": ctx.settings,
    }
    write_json(ctx.out / META_FILE, meta)
    return meta


def reuse_finished(path, settings: dict, how: str | None = None) -> dict | None:
    """The lift.json of the finished lift in ``path`` when it was made with ``settings``; None when
    ``path`` holds no finished lift; ``SettingsMismatch`` naming each differing field otherwise."""
    from fit3d.run import check_resume

    p = Path(path)
    if not is_lifted(p):
        return None
    meta = current_meta(read_json_dict(p / META_FILE, "lifted scene record"))
    check_resume(meta.get("settings"), settings, "finished lift", p, how)
    return meta
