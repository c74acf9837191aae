"""``fit3d generate OUT --num-scenes 3 --seed 0``: write synthetic indoor scenes (ScanNet layout).

Scene ``k`` uses seed ``seed + k`` and goes to ``OUT/synthetic_<seed>``; a scene already written with
the same config is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.errors import Fit3DError
from fit3d.guard import guard_output
from fit3d.data.synthetic.config import SyntheticSceneConfig
from fit3d.data.synthetic.scenes import check_same, generate_scenes, scene_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to write the scenes into (one sub-folder per scene)")
    parser.add_argument("--num-scenes", type=int, default=3, help="how many scenes (default: 3)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate scenes that already exist")
    add_config_arguments(parser, SyntheticSceneConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(SyntheticSceneConfig, args)
    cfg.validate()
    if args.num_scenes < 1:
        raise Fit3DError(f"--num-scenes must be at least 1, got {args.num_scenes}")
    guard_output(args.out, command="generate",
                 replaces=[scene_dir(args.out, cfg.seed + k) for k in range(args.num_scenes)])
    if not args.overwrite:  # a finished scene made with other settings is the user's work: refuse, naming them
        for k in range(args.num_scenes):
            check_same(scene_dir(args.out, cfg.seed + k), dataclasses.replace(cfg, seed=cfg.seed + k))
    paths = generate_scenes(args.out, args.num_scenes, cfg, overwrite=args.overwrite)
    print(f"wrote {len(paths)} scene(s) of {cfg.num_views} views at {cfg.width}x{cfg.height} to {args.out}")
    return 0
