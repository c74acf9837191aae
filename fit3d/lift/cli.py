"""``fit3d lift SCENE [SCENE ...] --backbone NAME --out DIR``: Stage 1 for one or many scenes.

Each scene is lifted into ``DIR/<scene folder name>/`` (see :mod:`fit3d.lift.lifted`). Finished scenes
(``lift.json`` present) are skipped, interrupted ones resume from their checkpoint. Under ``torchrun``
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
    parser.add_argument("--overwrite", action="store_true", help="re-lift scenes that are already finished")
    add_config_arguments(parser, LiftConfig)


def shard(items: list, rank: int, world_size: int) -> list:
    """The items rank ``rank`` of ``world_size`` handles (round robin)."""
    return items[rank::world_size]


def format_metrics(name: str, meta: dict) -> str:
    h = meta.get("heldout") or {}
    f = lambda x, p=3: "n/a" if x is None else f"{x:.{p}f}"  # noqa: E731
    t = meta.get("timings", {})
    return (f"{name}: {meta['gaussians']} Gaussians, {meta['iterations']} it in {t.get('total', 0):.0f} s | held-out "
            f"({h.get('views', 0)} views) PSNR {f(h.get('psnr'), 2)} dB, depth abs rel {f(h.get('depth_abs_rel'))}, "
            f"feature cosine {f(h.get('feature_cosine'))} vs scene-mean {f(h.get('baseline_mean_cosine'))} / "
            f"nearest-view {f(h.get('baseline_nearest_cosine'))}")


def run(args: argparse.Namespace) -> int:
    import shutil

    from fit3d.device import dist_info
    from fit3d.io import read_json
    from fit3d.lift.config import LiftConfig
    from fit3d.lift.stage import lift_scene, load_lift_backbone
    from fit3d.lift.lifted import META_FILE, is_lifted

    cfg = from_args(LiftConfig, args)
    di = dist_info()
    from fit3d.errors import SceneError

    scenes = [Path(s) for s in args.scenes]
    for s in scenes:
        if not s.exists():
            raise SceneError(f"{s}: scene path does not exist")
    names = [Path(os.path.abspath(s)).name for s in scenes]  # symlinked scenes keep their own names
    if len(set(names)) != len(names):
        raise SceneError(f"scene folder names must be unique (outputs go to OUT/<name>): {names}")
    out = Path(args.out)
    mine = shard(list(zip(scenes, names)), di.rank, di.world_size)
    backbone = None
    for path, name in mine:
        dst = out / name
        if is_lifted(dst) and not args.overwrite:
            print(f"{name}: already lifted, skipping ({dst})")
            print(format_metrics(name, read_json(dst / META_FILE)))
            continue
        if args.overwrite and dst.exists():
            shutil.rmtree(dst)
        if backbone is None:  # load once, shared by this rank's scenes
            backbone = load_lift_backbone(cfg)
        meta = lift_scene(path, cfg, dst, backbone=backbone, name=name)
        print(format_metrics(name, meta))
        sys.stdout.flush()
    return 0
