"""``fit3d generate OUT --num-scenes 3 --seed 0``: write synthetic indoor scenes (ScanNet layout).

Scene ``k`` uses seed ``seed + k`` and goes to ``OUT/synthetic_<seed>``; a scene already written with
the same config is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.errors import Fit3DError
from fit3d.data.synthetic.config import SyntheticSceneConfig
from fit3d.data.synthetic.scenes import generate_scenes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to write the scenes into (one sub-folder per scene)")
    parser.add_argument("--num-scenes", type=int, default=3, help="how many scenes (default: 3)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate scenes that already exist")
    add_config_arguments(parser, SyntheticSceneConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(SyntheticSceneConfig, args)
    if args.num_scenes < 1:
        raise Fit3DError(f"--num-scenes must be at least 1, got {args.num_scenes}")
    paths = generate_scenes(args.out, args.num_scenes, cfg, overwrite=args.overwrite)
    print(f"wrote {len(paths)} scene(s) of {cfg.num_views} views at {cfg.width}x{cfg.height} to {args.out}")
    return 0
