"""``fit3d generate OUT --num-scenes 3 --seed 0``: write synthetic indoor scenes (ScanNet layout).

Scene ``k`` uses seed ``seed + k`` and goes to ``OUT/synthetic_<seed>``; a scene already written with
the same config is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tqdm import tqdm

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.errors import Fit3DError
from fit3d.guard import guard_output
from fit3d.run import check_resume
from fit3d.io import clean_stale_temps, read_json
from fit3d.data.synthetic import SyntheticSceneConfig, generate_scene, write_scene


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to write the scenes into (one sub-folder per scene)")
    parser.add_argument("--num-scenes", type=int, default=3, help="how many scenes (default: 3)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate scenes that already exist")
    add_config_arguments(parser, SyntheticSceneConfig)


def scene_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"synthetic_{seed:04d}"


def _done(path: Path, cfg: SyntheticSceneConfig) -> bool:
    meta = path / "synthetic.json"
    try:
        d = read_json(meta) if meta.is_file() else None
    except Fit3DError:  # a corrupt record: regenerate the scene
        return False
    return isinstance(d, dict) and d.get("config") == dataclasses.asdict(cfg)


def generate_scenes(out: Path, num_scenes: int, cfg: SyntheticSceneConfig, overwrite: bool = False,
                    progress: bool = True) -> list[Path]:
    """Write ``num_scenes`` scenes with seeds ``cfg.seed + k``; return their folders (a scene written with
    other settings is regenerated: ``fit3d generate`` refuses that without ``--overwrite``, :func:`check_same`)."""
    configs = [dataclasses.replace(cfg, seed=cfg.seed + k) for k in range(num_scenes)]
    paths = [scene_dir(out, c.seed) for c in configs]
    clean_stale_temps(out)  # scenes a kill interrupted mid-write
    bar = tqdm(list(zip(configs, paths)), desc="generate", unit="scene", disable=not progress)
    for scfg, path in bar:
        bar.set_postfix_str(path.name)
        if overwrite or not _done(path, scfg):
            write_scene(generate_scene(scfg, name=path.name), path)
    return paths


def check_same(path: Path, cfg: SyntheticSceneConfig) -> None:
    """A scene generated at ``path`` with other settings is an error naming them (its record readable)."""
    try:
        d = read_json(path / "synthetic.json") if (path / "synthetic.json").is_file() else None
    except Fit3DError:  # a corrupt record: the scene is regenerated
        return
    if isinstance(d, dict) and isinstance(d.get("config"), dict):
        check_resume(d["config"], dataclasses.asdict(cfg), "generated scene", path,
                     "rerun with --overwrite to replace it, or choose another OUT")


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
