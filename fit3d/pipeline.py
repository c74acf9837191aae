"""``fit3d pipeline``: lift every scene, fine-tune on all of them, probe original / fine-tuned / concat.

Each stage resumes: lifted scenes are skipped, fine-tuning resumes from its checkpoint and returns a
finished run as is, and probe features are cached. Python API: :func:`run_pipeline`.

Output folder::

    <out>/lifted/<scene>/    Stage 1 (gaussians.ply, decoder.safetensors, lift.json, heldout_pca.png)
    <out>/finetuned/         Stage 2 (model/ via save_pretrained, fit3d.json)
    <out>/probe/<task>/      probe.json, probe.md, figure.png
    <out>/results.json|.md   the summary table and the time of each stage
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.io import write_json, write_text

SOURCES = ("original", "finetuned", "concat")
# headline metric per task: (probe.json key, label, lower is better)
HEADLINE = {
    "depth": [("rmse", "depth RMSE", True), ("abs_rel", "depth abs rel", True), ("delta1", "depth delta1", False)],
    "seg": [("miou", "seg mIoU", False), ("macc", "seg mAcc", False)],
    "corr": [("recall@1", "corr recall@1", False), ("recall@2", "corr recall@2", False)],
}


@dataclass
class PipelineConfig:
    """Settings of the whole pipeline; each stage's full config is reachable from the Python API."""

    out: str = field(default="runs/pipeline", metadata={"help": "output folder"})
    backbone: str = field(default="dinov2_small", metadata={"help": "registered backbone name"})
    model_path: str | None = field(default=None, metadata={
        "help": "local weights folder (default: $FIT3D_MODEL_PATH, else the hub)"})
    tasks: list[str] = field(default_factory=lambda: ["depth", "corr"], metadata={
        "help": "probe tasks: depth seg corr"})
    probe_data: str | None = field(default=None, metadata={
        "help": "probe training data (default: the first scene; frame split 0-398 / 400-498)"})
    eval_data: str | None = field(default=None, metadata={
        "help": "probe test data (default: the probe data's test frames)"})
    max_frame: int | None = field(default=None, metadata={
        "help": "lift / fine-tune only views with frame number <= this (7-Scenes: 398)"})
    lift_iterations: int | None = field(default=None, metadata={
        "help": "Stage 1 iterations per scene (default: LiftConfig's)"})
    lift_width: int | None = field(default=None, metadata={"help": "Stage 1 render width (default: LiftConfig's)"})
    finetune_epochs: int = field(default=1, metadata={"help": "Stage 2 epochs (FiT3D: 1)"})
    finetune_lr: float = field(default=1e-5, metadata={"help": "Stage 2 AdamW learning rate (FiT3D: 1e-5)"})
    finetune_max_steps: int | None = field(default=None, metadata={"help": "cap on Stage 2 steps"})
    finetune_resolution: list[int] | None = field(default=None, metadata={
        "help": "Stage 2 W H: rendered view and backbone input (default: the probe resolution, so the backbone "
                "is trained at the resolution it is evaluated at)"})
    probe_iterations: int = field(default=1500, metadata={"help": "probe head iterations"})
    probe_resolution: list[int] = field(default_factory=lambda: [448, 336], metadata={"help": "probe W H"})
    num_classes: int = field(default=0, metadata={"help": "seg classes (0: the dataset's)"})
    probe_dataset: str = field(default="auto", metadata={"help": "probe dataset layout (see fit3d probe)"})
    train_frames: str = field(default="0-398", metadata={"help": "probe training frame range"})
    test_frames: str = field(default="400-498", metadata={"help": "probe test frame range"})
    val_frames: str | None = field(default=None, metadata={
        "help": "depth probe: frames of the training range kept for choosing the head checkpoint (e.g. 320-398)"})
    device: str = field(default="auto", metadata={"help": "auto / cpu / cuda"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})


def _stage_configs(cfg: PipelineConfig):
    from fit3d.finetune.config import FinetuneConfig
    from fit3d.lift.config import LiftConfig

    lift = LiftConfig(backbone=cfg.backbone, model_path=cfg.model_path, max_frame=cfg.max_frame, seed=cfg.seed,
                      device=cfg.device)
    if cfg.lift_iterations is not None:
        lift.iterations = cfg.lift_iterations
    if cfg.lift_width is not None:
        lift.width = cfg.lift_width
    ft = FinetuneConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, max_steps=cfg.finetune_max_steps,
                        resolution=list(cfg.finetune_resolution or cfg.probe_resolution),
                        device=None if cfg.device == "auto" else cfg.device)
    return lift, ft


def probe_config(cfg: PipelineConfig, task: str, data: str, finetuned: str | None, out: Path):
    """The ProbeConfig the pipeline uses for ``task`` (original, and fine-tuned + concat when given)."""
    from fit3d.probe.cli import ProbeConfig

    return ProbeConfig(task=task, data=data, eval_data=cfg.eval_data, dataset=cfg.probe_dataset,
                       backbone=cfg.backbone, model_path=cfg.model_path, finetuned=finetuned,
                       features=list(SOURCES) if finetuned else ["original"], out=str(out / task),
                       resolution=list(cfg.probe_resolution), iterations=cfg.probe_iterations,
                       seed=cfg.seed, num_classes=cfg.num_classes, train_frames=cfg.train_frames,
                       test_frames=cfg.test_frames, val_frames=cfg.val_frames if task == "depth" else None,
                       device="auto" if cfg.device == "auto" else cfg.device,
                       cache_dir=str(out / "cache"))


def run_pipeline(scenes: list[str], cfg: PipelineConfig, *, lift_cfg=None, finetune_cfg=None,
                 verbose: bool = True) -> dict:
    """Run Stage 1 on every scene, Stage 2 on all of them, then the probes. Returns ``results.json``'s dict."""
    from fit3d.finetune.trainer import finetune
    from fit3d.probe.cli import run_probe
    from fit3d.lift.stage import lift_scene

    out = Path(cfg.out)
    lift_d, ft_d = _stage_configs(cfg)
    lift_cfg, finetune_cfg = lift_cfg or lift_d, finetune_cfg or ft_d
    finished = validate_pipeline(scenes, cfg, lift_cfg, finetune_cfg)
    seconds: dict[str, float] = {}

    def say(msg):
        if verbose:
            print(f"[fit3d pipeline] {msg}", flush=True)

    # Stage 1 ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    lifted_dirs, lift_reports = [], {}
    for i, s in enumerate(scenes):
        name = Path(s).name
        d = out / "lifted" / name
        if finished[name] is not None:
            say(f"lift {i + 1}/{len(scenes)} {name}: done already with these settings, skipped")
            lift_reports[name] = finished[name]
        else:
            say(f"lift {i + 1}/{len(scenes)} {name} -> {d}")
            lift_reports[name] = lift_scene(s, lift_cfg, d, name=name)
        lifted_dirs.append(str(d))
    seconds["lift"] = time.perf_counter() - t0

    # Stage 2 ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    ft_dir = out / "finetuned"
    say(f"fine-tune {cfg.backbone} on {len(lifted_dirs)} lifted scene(s) -> {ft_dir}")
    manifest = finetune(lifted_dirs, cfg.backbone, ft_dir, finetune_cfg, model_path=cfg.model_path)
    seconds["finetune"] = time.perf_counter() - t0

    # probes ----------------------------------------------------------------------------------------
    probe_data = cfg.probe_data or scenes[0]
    probes = {}
    for task in cfg.tasks:
        t0 = time.perf_counter()
        say(f"probe {task}: original / fine-tuned / concat")
        probes[task] = run_probe(probe_config(cfg, task, probe_data, str(ft_dir), out / "probe"),
                                 command=None, verbose=verbose)
        seconds[f"probe_{task}"] = time.perf_counter() - t0

    results = summarize(cfg, lift_reports, manifest, probes, seconds)
    write_json(out / "results.json", results)
    write_text(out / "results.md", results_markdown(results))
    if verbose:
        print(results_markdown(results))
    return results


def validate_pipeline(scenes: list[str], cfg: PipelineConfig, lift_cfg, finetune_cfg) -> dict:
    """Check every option, scene and probe setting before any work; returns {scene name: lift.json of a
    finished lift with the same settings, or None}. A finished lift made with other settings is a
    ``SettingsMismatch`` naming the differing fields."""
    from fit3d.data.readers import detect_layout
    from fit3d.errors import Fit3DError
    from fit3d.lift.lifted import lift_settings, reuse_finished
    from fit3d.run import check_counts, check_device, check_size

    if not scenes:
        raise Fit3DError("pipeline: no scenes given")
    bad = [t for t in cfg.tasks if t not in HEADLINE]
    if bad or not cfg.tasks:
        raise Fit3DError(f"--tasks {' '.join(cfg.tasks)}: expected one or more of {', '.join(HEADLINE)}")
    check_counts(cfg, {"probe_iterations": 1, "num_classes": 0, "finetune_epochs": 1, "finetune_max_steps": 1,
                       "lift_iterations": 1, "lift_width": 1})
    check_size(cfg, "probe_resolution")
    check_size(cfg, "finetune_resolution")
    check_device(cfg.device)
    lift_cfg.validate()
    finetune_cfg.validate()
    for s in scenes:
        detect_layout(s)  # SceneError naming a missing folder or one no reader knows
    for opt, path in (("--probe-data", cfg.probe_data), ("--eval-data", cfg.eval_data)):
        if path is not None and not Path(path).exists():
            raise Fit3DError(f"{opt} {path}: does not exist")
    names = [Path(s).name for s in scenes]
    if len(set(names)) != len(names):
        raise Fit3DError(f"pipeline: scene folder names must be unique (lifts go to <out>/lifted/<name>): {names}")
    out = Path(cfg.out)
    how = f"use another --out, or delete {out / 'lifted'}/<scene> to lift it again"
    return {n: reuse_finished(out / "lifted" / n, lift_settings(lift_cfg, Path(s).resolve()), how)
            for s, n in zip(scenes, names)}


def summarize(cfg: PipelineConfig, lift_reports: dict, manifest: dict, probes: dict, seconds: dict) -> dict:
    """Flat numbers: ``depth_rmse`` -> {original, finetuned, concat}, ... plus stage seconds."""
    res: dict = {"config": dataclasses.asdict(cfg), "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for task, p in probes.items():
        for key, _, _ in HEADLINE[task]:
            res[f"{task}_{key}".replace("@", "")] = {s: p["metrics"][s][key] for s in SOURCES
                                                    if s in p["metrics"] and key in p["metrics"][s]}
        base = [k for k in p["metrics"] if k.startswith("baseline")]
        if base:
            res[f"{task}_baseline"] = {b: p["metrics"][b] for b in base}
    res["lift"] = {n: {"heldout": r.get("heldout"), "num_gaussians": r.get("gaussians"),
                       "seconds": r.get("timings", {}).get("total")} for n, r in lift_reports.items()}
    res["finetune"] = {"steps": manifest.get("steps"), "metrics": manifest.get("metrics")}
    return res


def results_markdown(results: dict) -> str:
    """One table: headline metrics per feature source, then the time of each stage."""
    rows = []
    for task, metrics in HEADLINE.items():
        for key, label, lower in metrics:
            vals = results.get(f"{task}_{key}".replace("@", ""))
            if not vals:
                continue
            cells = [f"{vals[s]:.4f}" if s in vals and vals[s] is not None else "-" for s in SOURCES]
            o, c = vals.get("original"), vals.get("concat")
            rel = f"{(o - c) / o * 100 if lower else (c - o) / o * 100:+.1f}%" if o and c is not None else "-"
            rows.append(f"| {label} {'↓' if lower else '↑'} | " + " | ".join(cells) + f" | {rel} |")
    lines = ["| metric | original | finetuned | concat | concat gain (+ = better) |", "|---|---|---|---|---|", *rows,
             "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in results["seconds"].items()]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenes", nargs="+", help="scene folders (any layout fit3d reads)")
    add_config_arguments(parser, PipelineConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(PipelineConfig, args)
    run_pipeline(args.scenes, cfg)
    return 0
