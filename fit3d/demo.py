"""``fit3d demo``: FiT3D end to end on embedded synthetic indoor scenes, with a picture report.

1. generate a handful of synthetic rooms (posed RGB, depth, semantic labels; ScanNet layout),
2. lift each training room into feature Gaussians (Stage 1),
3. fine-tune the backbone on all of them (Stage 2),
4. probe segmentation and depth on held-out rooms for original / fine-tuned / concat features,
5. write ``<out>/report/report.md`` with tables and pictures.

Nothing is downloaded but the backbone (the hub's DINOv2-S where reachable); ``--model-path`` or
``FIT3D_MODEL_PATH`` points at a local copy. Every stage resumes when the command is rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fit3d.compare import compare_figure
from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.data import read_scene
from fit3d.data.synthetic import CLASS_NAMES, SyntheticSceneConfig
from fit3d.data.synthetic_cli import generate_scenes
from fit3d.errors import ModelNotFoundError
from fit3d.finetune.assembled import load_finetuned
from fit3d.finetune.config import FinetuneConfig
from fit3d.io import write_json, write_text
from fit3d.lift.config import LiftConfig
from fit3d.models import load_backbone
from fit3d.paths import shared_model_dir
from fit3d.finetune.recipes import DEFAULT_RECIPE, from_recipe
from fit3d.pipeline import (PROBE_SET_BY_PIPELINE, SHARED, PipelineConfig, add_recipe_argument, results_markdown,
                            run_pipeline)
from fit3d.probe.config import ProbeConfig
from fit3d.viz.images import save_png, vstack
from fit3d.viz.scene import scene_figure


@dataclass
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "output folder"})
    report_dir: str | None = field(default=None, metadata={
        "help": "also copy the report and its pictures here (e.g. docs/demo)"})
    backbone: str = field(default="dinov2_small", metadata={"help": "registered backbone name"})
    model_path: str | None = field(default=None, metadata={
        "help": "local weights folder (default: $FIT3D_MODEL_PATH, else the hub)"})
    train_scenes: int = field(default=3, metadata={"help": "synthetic rooms lifted and fine-tuned on"})
    test_scenes: int = field(default=2, metadata={"help": "held-out rooms the probes are tested on"})
    num_views: int = field(default=60, metadata={"help": "views per room"})
    width: int = field(default=320, metadata={"help": "image width"})
    height: int = field(default=240, metadata={"help": "image height"})
    seed: int = field(default=0, metadata={"help": "seed of the rooms and of every stage"})
    device: str = field(default="auto", metadata={"help": "auto / cpu / cuda"})
    lift: LiftConfig = field(default_factory=lambda: LiftConfig(iterations=500), metadata={
        "inherit": SHARED, "help": "Stage 1 (500 iterations per small synthetic room keep the demo near 15 min)"})
    finetune: FinetuneConfig = field(default_factory=lambda: from_recipe(DEFAULT_RECIPE), metadata={
        "inherit": SHARED, "help": "Stage 2, starting from the --recipe preset"})
    probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(iterations=600, resolution=[224, 168]),
                               metadata={"inherit": PROBE_SET_BY_PIPELINE + ("dataset", "num_classes")})


def resolve_model_path(backbone: str, model_path: str | None) -> str | None:
    """``model_path`` / ``$FIT3D_MODEL_PATH`` if given; else the hub id when the hub answers; else the
    offline copy in ``shared/`` if there is one; else a ModelNotFoundError saying what to pass."""
    given = model_path or os.environ.get("FIT3D_MODEL_PATH")
    if given:
        return given
    try:
        load_backbone(backbone)
        return None  # the hub (or its local cache) has it
    except ModelNotFoundError as e:
        local = shared_model_dir()
        if backbone == "dinov2_small" and (local / "config.json").exists():
            print(f"[fit3d demo] the model hub is not reachable; using the offline DINOv2-S copy at {local}")
            return str(local)
        raise ModelNotFoundError(
            f"fit3d demo needs the weights of {backbone!r}, and the model hub is not reachable from this machine "
            f"and no local copy was given. Pass --model-path DIR (or set FIT3D_MODEL_PATH=DIR) with a folder in "
            f"the hub's layout (config.json + model.safetensors). Details: {e}") from None


def run_demo(cfg: DemoConfig) -> dict:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    model_path = resolve_model_path(cfg.backbone, cfg.model_path)
    scfg = SyntheticSceneConfig(num_views=cfg.num_views, width=cfg.width, height=cfg.height, seed=cfg.seed)
    print(f"[fit3d demo] generating {cfg.train_scenes} training + {cfg.test_scenes} held-out rooms "
          f"({cfg.num_views} views, {cfg.width}x{cfg.height})", flush=True)
    t0 = time.perf_counter()
    train = generate_scenes(out / "scenes" / "train", cfg.train_scenes, scfg)
    test = generate_scenes(out / "scenes" / "test", cfg.test_scenes,
                           dataclasses.replace(scfg, seed=cfg.seed + 1000))
    t_gen = time.perf_counter() - t0
    pcfg = PipelineConfig(out=str(out), backbone=cfg.backbone, model_path=model_path, device=cfg.device,
                          seed=cfg.seed, tasks=["seg", "depth"], probe_data=str(out / "scenes" / "train"),
                          eval_data=str(out / "scenes" / "test"), lift=cfg.lift, finetune=cfg.finetune,
                          probe=dataclasses.replace(cfg.probe, dataset="scannet", num_classes=len(CLASS_NAMES)))
    results = run_pipeline([str(p) for p in train], pcfg)
    results["seconds"] = {"generate": round(t_gen, 1), **results["seconds"],
                          "total": round(time.perf_counter() - t_start, 1)}
    write_json(out / "results.json", results)
    report = write_report(out, cfg, results, train, test, model_path)
    print(f"[fit3d demo] report: {report}")
    if cfg.report_dir:
        dest = Path(cfg.report_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for f in report.parent.iterdir():
            shutil.copy2(f, dest / f.name)
        print(f"[fit3d demo] report copied to {dest}")
    return results


def write_report(out: Path, cfg: DemoConfig, results: dict, train, test, model_path) -> Path:
    """``<out>/report/report.md`` with the pictures it shows next to it."""
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    pics = []
    scene = read_scene(train[0], layout="scannet")
    save_png(rep / "scene.png", scene_figure(scene, num_views=4))
    pics.append(("A synthetic training room: RGB, depth and semantic labels", "scene.png"))
    for p in train[:2]:
        src = out / "lifted" / Path(p).name / "heldout_pca.png"
        if src.exists():
            shutil.copy2(src, rep / f"lift_{Path(p).name}.png")
            pics.append((f"Stage 1, {Path(p).name}: rendered vs the backbone's own features on held-out views "
                         f"(shared PCA basis)", f"lift_{Path(p).name}.png"))
    original, finetuned = load_finetuned(out / "finetuned")
    held = read_scene(test[0], layout="scannet")
    idx = np.linspace(0, len(held) - 1, 3).round().astype(int)
    rows = [compare_figure(held.views[i].image, original, finetuned, panel_height=240) for i in idx]
    save_png(rep / "compare.png", vstack(rows, pad=6))
    pics.append(("Held-out room: image, PCA of original vs fine-tuned DINOv2 features (one basis)", "compare.png"))
    for task in ("seg", "depth"):
        src = out / "probe" / task / "figure.png"
        if src.exists():
            shutil.copy2(src, rep / f"probe_{task}.png")
            pics.append((f"{task} probe on held-out rooms: ground truth and predictions per feature source",
                         f"probe_{task}.png"))
    lines = ["# fit3d demo report", "",
             f"Backbone `{cfg.backbone}` ({model_path or 'hub'}); {len(train)} training rooms (lifted, fine-tuned "
             f"on, probe training) and {len(test)} held-out rooms (probe test), {cfg.num_views} views each at "
             f"{cfg.width}x{cfg.height}. Command: `fit3d demo` with", "", "```json",
             __import__("json").dumps(dataclasses.asdict(cfg), indent=2), "```", "", "## Results", "",
             results_markdown(results), ""]
    lift = results.get("lift", {})
    if lift:
        lines += ["## Stage 1 on held-out views", "", "| room | Gaussians | PSNR | depth abs rel | feature cosine | "
                  "mean-feature baseline | nearest-view baseline |", "|---|---|---|---|---|---|---|"]
        for n, r in lift.items():
            h = r.get("heldout") or {}
            f = lambda k: f"{h[k]:.3f}" if isinstance(h.get(k), (int, float)) else "-"  # noqa: E731
            lines.append(f"| {n} | {r.get('num_gaussians', '-')} | {f('psnr')} | {f('depth_abs_rel')} | "
                         f"{f('feature_cosine')} | {f('baseline_mean_cosine')} | {f('baseline_nearest_cosine')} |")
        lines.append("")
    ft = (results.get("finetune") or {}).get("metrics") or {}
    held_ft = ft.get("heldout") or {}
    if held_ft.get("original"):
        lines += ["## Stage 2", "", f"{results['finetune'].get('steps')} steps. Distance of the features to the rendered "
                  f"3D-aware targets on held-out views: L1 original {held_ft['original']['l1']:.4f} -> fine-tuned "
                  f"{held_ft['finetuned']['l1']:.4f}.", ""]
    lines += ["## Pictures", ""]
    for title, f in pics:
        lines += [f"### {title}", "", f"![{title}]({f})", ""]
    path = rep / "report.md"
    write_text(path, "\n".join(lines))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    add_config_arguments(parser, DemoConfig)


def run(args: argparse.Namespace) -> int:
    run_demo(from_args(DemoConfig, args, base=DemoConfig(finetune=from_recipe(args.recipe))))
    return 0
