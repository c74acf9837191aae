"""``fit3d prepare INPUT --out SCENE``: a folder of photos or a video -> a posed scene (structure from motion).

INPUT is a folder of images or a video file. The scene written to SCENE is what ``fit3d lift SCENE`` and
``fit3d pipeline SCENE`` read (COLMAP layout with the sparse points); see :mod:`fit3d.prepare.stage`.
"""

from __future__ import annotations

import argparse
import sys

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.guard import guard_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fit3d.prepare.config import PrepareConfig

    parser.add_argument("input", metavar="INPUT", help="a folder of photos or a video file")
    parser.add_argument("--out", required=True, metavar="SCENE", help="output scene folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="prepare again over a finished scene (the old one is kept until the new one is complete)")
    add_config_arguments(parser, PrepareConfig)


def run(args: argparse.Namespace) -> int:
    from fit3d.prepare.config import PrepareConfig
    from fit3d.prepare.stage import prepare_scene, summary_line

    cfg = from_args(PrepareConfig, args)
    cfg.validate()
    guard_output(args.out, [args.input], command="prepare")  # before any work: never into the input, locked
    record = prepare_scene(args.input, args.out, cfg, overwrite=args.overwrite)
    if record.get("reused"):
        print(f"{args.out}: already prepared from {args.input} with the same settings, skipping")
    print(summary_line(args.out, record))
    if record["dropped"]:
        shown = ", ".join(record["dropped"][:8]) + (" ..." if len(record["dropped"]) > 8 else "")
        print(f"{args.out}: not registered (left out of the scene): {shown}")
    print(f"next: fit3d lift {args.out} --out LIFTED   (or: fit3d pipeline {args.out} --out RUN)")
    sys.stdout.flush()
    return 0
