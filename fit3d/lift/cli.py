"""``fit3d lift SCENE [SCENE ...] --backbone NAME --out DIR``: Stage 1 for one or many scenes.

Each scene is lifted into ``DIR/<scene folder name>/`` (see :mod:`fit3d.lift.lifted`). Finished scenes
made with the same settings are skipped, interrupted ones resume from their checkpoint; a finished scene
or checkpoint made with other settings stops the command (before any work) naming the differing fields.
``--overwrite`` lifts into a sibling folder and swaps it in only once complete. Options and every scene's
layout are checked first, and each scene is read before the backbone loads. Under ``torchrun``
(env ``RANK`` / ``WORLD_SIZE``) rank r lifts scenes r, r + W, r + 2W, ... (no process group needed:
scenes are independent); on CUDA each rank uses device ``LOCAL_RANK`` (``fit3d.device.resolve_device``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fit3d.lift.config import LiftConfig

    parser.add_argument("scenes", nargs="+", metavar="SCENE", help="scene folders (any layout read_scene knows)")
    parser.add_argument("--out", required=True, help="output folder; scene i goes to OUT/<scene name>")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-lift scenes that are already finished (the old result is kept until the new one is "
                             "complete)")
    add_config_arguments(parser, LiftConfig)


def shard(items: list, rank: int, world_size: int) -> list:
    """The items rank ``rank`` of ``world_size`` handles (round robin)."""
    return items[rank::world_size]


def format_metrics(name: str, meta: dict) -> str:
    h = meta.get("heldout") or {}
    f = lambda x, p=3: "n/a" if x is None else f"{x:.{p}f}"  # noqa: E731
    t = meta.get("timings", {})
    how = f"{meta['iterations']} it" if meta.get("method", "optimize") == "optimize" else meta["method"]
    if (meta.get("solve") or {}).get("fell_back_to"):  # no depth, no points: optimize lifted it
        how = f"{meta['iterations']} it of {meta['solve']['fell_back_to']} (no depth, no points)"
    return (f"{name}: {meta['gaussians']} Gaussians, {how} in {t.get('total', 0):.0f} s | held-out "
            f"({h.get('views', 0)} views) PSNR {f(h.get('psnr'), 2)} dB, depth abs rel {f(h.get('depth_abs_rel'))}, "
            f"feature cosine {f(h.get('feature_cosine'))} vs scene-mean {f(h.get('baseline_mean_cosine'))} / "
            f"nearest-view {f(h.get('baseline_nearest_cosine'))}")


def _prepare_staged(dst: Path, settings: dict) -> Path:
    """The sibling folder an ``--overwrite`` lift of ``dst`` builds in: an earlier interrupted overwrite
    with the same settings resumes there, one with other settings is discarded; the old target cache is
    linked in when the old lift used the same backbone weights (``TargetCache`` checks views and size)."""
    import shutil

    from fit3d.errors import Fit3DError
    from fit3d.io import read_json_dict
    from fit3d.lift.lifted import META_FILE, current_settings
    from fit3d.lift.optimize import CHECKPOINT_FILE
    from fit3d.run import as_recorded, checkpoint_state, staged_dir

    work = staged_dir(dst)
    ck = work / CHECKPOINT_FILE
    if work.exists() and ck.exists():
        try:
            rec = current_settings(checkpoint_state(ck).get("settings")) or {}
        except Fit3DError:  # an unreadable staged checkpoint: start the overwrite afresh
            rec = {}
        if {k: v for k, v in rec.items() if k != "train_views"} != as_recorded(settings):
            shutil.rmtree(work)
    elif work.exists():
        shutil.rmtree(work)
    old_cache = dst / "cache"
    try:
        old = read_json_dict(dst / META_FILE, "lifted scene record").get("settings") or {}
    except Fit3DError:
        old = {}
    same_weights = all(old.get(k, object()) == settings[k] for k in ("scene", "backbone", "model", "feature_size"))
    if same_weights and old_cache.is_dir() and not (work / "cache").exists():
        (work / "cache").mkdir(parents=True)
        for f in old_cache.iterdir():
            if f.is_file() and not f.name.startswith("."):
                try:
                    os.link(f, work / "cache" / f.name)  # free; the cache is only ever replaced, never edited
                except OSError:
                    shutil.copy2(f, work / "cache" / f.name)
    return work


def run(args: argparse.Namespace) -> int:
    from fit3d.data.readers import detect_layout
    from fit3d.device import dist_info
    from fit3d.guard import guard_output, model_inputs
    from fit3d.lift.config import LiftConfig
    from fit3d.lift.lifted import lift_settings, reuse_finished
    from fit3d.lift.stage import lift_scene, load_lift_backbone, read_lift_scene
    from fit3d.run import commit_staged, recover_staged

    cfg = from_args(LiftConfig, args)
    di = dist_info()
    from fit3d.errors import SceneError

    cfg.validate()
    scenes = [Path(s) for s in args.scenes]
    for s in scenes:
        if not s.exists():
            raise SceneError(f"{s}: scene path does not exist")
        detect_layout(s)  # a folder no reader knows fails now, not after the first scenes' lifts
    names = [Path(os.path.abspath(s)).name for s in scenes]  # symlinked scenes keep their own names
    if len(set(names)) != len(names):
        raise SceneError(f"scene folder names must be unique (outputs go to OUT/<name>): {names}")
    out = Path(args.out)
    guard_output(out, [*scenes, *model_inputs(cfg.model_path)], command="lift", replaces=[out / n for n in names])
    if cfg.cache_dir and cfg.cache_dir.lower() != "none":
        from fit3d.guard import check_not_input

        check_not_input(cfg.cache_dir, [*scenes, *model_inputs(cfg.model_path)], option="--cache-dir")
    mine = shard(list(zip(scenes, names)), di.rank, di.world_size)
    finished = {}
    for path, name in mine:  # every finished scene is checked before any work
        recover_staged(out / name)
        if not args.overwrite:
            finished[name] = reuse_finished(out / name, lift_settings(cfg, path.resolve()))
    backbone = None
    for path, name in mine:
        dst = out / name
        if finished.get(name) is not None:
            print(f"{name}: already lifted, skipping ({dst}: same settings)")
            print(format_metrics(name, finished[name]))
            continue
        work = _prepare_staged(dst, lift_settings(cfg, path.resolve())) if args.overwrite and dst.exists() else dst
        scene = read_lift_scene(path, cfg)  # read and checked before the backbone loads
        if backbone is None:  # load once, shared by this rank's scenes
            backbone = load_lift_backbone(cfg)
        meta = lift_scene(path, cfg, work, backbone=backbone, name=name, scene=scene)
        del scene
        if work != dst:
            commit_staged(work, dst)
        print(format_metrics(name, meta))
        sys.stdout.flush()
    return 0
