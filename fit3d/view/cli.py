"""``fit3d view LIFTED_DIR [LIFTED_DIR ...]``: an interactive viewer of lifted scenes in the browser.

Starts a local viser server (``--port``, default 8080) and prints its URL. Each lifted scene is drawn as
Gaussian splats coloured by RGB, the PCA of the decoded features (one basis per scene, or shared) or the
similarity to a clicked Gaussian (with a threshold), next to its training cameras (click one to fly
there). With ``--finetuned DIR`` a panel shows, for a point of a training image (click a camera's image,
or move the sliders), the patch similarity of the original and of the fine-tuned backbone side by side.
Scenes over ``--max-splats`` Gaussians are drawn from a uniform random subset (said in the panel).
Needs the optional extra: ``pip install 'fit3d[view]'``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.errors import Fit3DError
from fit3d.config import check_counts


@dataclass
class ViewConfig:
    port: int = field(default=8080, metadata={"help": "port of the local web server"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)"})
    max_splats: int = field(default=500_000, metadata={
        "help": "Gaussians drawn per scene at most (a uniform random subset above it; 0: all)"})
    finetuned: str = field(default="", metadata={
        "help": "a `fit3d finetune` output folder: adds the original-vs-fine-tuned patch-similarity panel"})
    shared_pca: bool = field(default=False, metadata={"help": "start with one PCA basis for all scenes"})
    cameras: bool = field(default=True, metadata={"help": "show the training cameras (re-reads the scenes' images)"})
    short_side: int = field(default=448, metadata={"help": "similarity panel: model input short side in pixels"})
    device: str = field(default="auto", metadata={"help": "similarity panel: auto / cpu / cuda"})
    seed: int = field(default=0, metadata={"help": "seed of the --max-splats subset"})

    def validate(self) -> None:
        check_counts(self, {"max_splats": 0, "short_side": 14})
        if not 1 <= self.port <= 65535:
            raise Fit3DError(f"--port {self.port}: not a TCP port (1-65535)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenes", nargs="+", type=Path, help="lifted scene folders (or folders holding them, "
                                                              "or a pipeline / demo output folder)")
    add_config_arguments(parser, ViewConfig)


def start_viewer(paths, cfg: ViewConfig):
    """Check everything, load the scenes (and models), start the server; returns the running ``Viewer``."""
    from fit3d.view.scenes import check_finetuned, check_widths, find_lifted, load_view_scene, unique_names
    from fit3d.view.server import Viewer, check_port, import_viser

    cfg.validate()
    import_viser()
    check_port(cfg.host, cfg.port)  # before minutes of loading
    dirs = find_lifted(paths)
    manifest = None
    if cfg.finetuned:
        from fit3d.finetune.assembled import read_manifest

        manifest = read_manifest(cfg.finetuned)
    scenes = [load_view_scene(d, cfg.max_splats, cfg.seed, cfg.cameras) for d in dirs]
    unique_names(scenes)
    models = None
    if manifest is not None:
        from fit3d.device import resolve_device
        from fit3d.finetune.assembled import load_finetuned

        check_finetuned(scenes, manifest, cfg.finetuned)
        models = load_finetuned(cfg.finetuned, device=str(resolve_device(cfg.device)))
        check_widths(scenes, models[1].embed_dim, cfg.finetuned)
    for s in scenes:
        print(f"{s.name}: {s.splats.describe()}, {len(s.frustums)} training cameras ({s.path})")
    runs = [Path(p) for p in paths if (Path(p) / "finetuned" / "fit3d.json").is_file()]
    if runs and not cfg.finetuned:
        print(f"tip: --finetuned {runs[0] / 'finetuned'} adds the original-vs-fine-tuned similarity panel")
    return Viewer(scenes, host=cfg.host, port=cfg.port, models=models, short_side=cfg.short_side,
                  shared_pca=cfg.shared_pca)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(ViewConfig, args)
    viewer = start_viewer(args.scenes, cfg)
    print(f"fit3d view: open {viewer.url} in a browser (Ctrl+C stops the server)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("fit3d view: stopped")
        return 0
    finally:
        viewer.stop()
