"""``fit3d`` command line: one subcommand per stage and one for the whole pipeline.

Each subcommand lives in its stage's module, which defines ``add_arguments(parser)`` and
``run(args) -> int``. Commands whose module does not exist yet say so plainly.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "lift": ("fit3d.lift.cli", "Stage 1: lift a backbone's 2D features into per-scene feature Gaussians"),
    "finetune": ("fit3d.finetune.cli", "Stage 2: fine-tune the 2D backbone on rendered 3D-aware features"),
    "probe": ("fit3d.probe.cli", "Evaluate features: linear seg/depth probes, cross-view correspondence"),
    "pipeline": ("fit3d.pipeline", "lift + finetune + probe in one command"),
    "demo": ("fit3d.demo", "The whole method end to end on embedded synthetic indoor scenes"),
    "compare": ("fit3d.compare", "PCA pictures of original vs fine-tuned features for any images"),
    "view": ("fit3d.view.cli", "Look at lifted scenes in the browser: splats, feature PCA, similarity, cameras"),
    "export": ("fit3d.view.export", "Write a lifted scene as a standard 3DGS PLY coloured by its feature PCA"),
    "generate": ("fit3d.data.synthetic.cli", "Generate synthetic indoor scenes (posed RGB, depth, labels)"),
    "backbones": ("fit3d.models.cli", "List the registered 2D backbones"),
}


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            return None  # the command's module is not built yet
        raise


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="fit3d", description=__doc__.splitlines()[0])
    from fit3d import __version__

    parser.add_argument("--version", action="version", version=f"fit3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module, help_) in COMMANDS.items():
        mod = _load(module)
        p = sub.add_parser(name, help=help_ if mod else f"{help_} [not built yet]", description=help_)
        if mod is not None:
            mod.add_arguments(p)
        modules[name] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from fit3d.errors import Fit3DError

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    mod = modules[args.command]
    if mod is None:
        print(f"fit3d {args.command}: not built yet in this version of fit3d.", file=sys.stderr)
        return 2
    try:
        return int(mod.run(args) or 0)
    except Fit3DError as e:
        print(f"fit3d: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a read-only folder, a permission no check foresaw: one line naming the path
        from fit3d.io import describe_os_error

        print(f"fit3d: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # fit3d.run.Interrupted says where its checkpoint went
        why = str(e) if str(e) else f"{args.command}: interrupted; rerun the same command to resume"
        print(f"\nfit3d: {why}", file=sys.stderr)
        return 130
    finally:
        from fit3d.guard import release_locks

        release_locks()


if __name__ == "__main__":
    sys.exit(main())
