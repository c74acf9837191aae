"""``fit3d pipeline``: lift every scene, fine-tune on all of them, probe original / fine-tuned / concat.

Each stage resumes: lifted scenes are skipped, fine-tuning resumes from its checkpoint and returns a
finished run as is, and probe features are cached. Python API: :func:`run_pipeline`.

Output folder::

    <out>/lifted/<scene>/    Stage 1 (gaussians.ply, decoder.safetensors, lift.json, heldout_pca.png)
    <out>/finetuned/         Stage 2 (model/ via save_pretrained, fit3d.json)
    <out>/probe/<task>/      probe.json, probe.md, figure.png
    <out>/cache/             the token cache of Stage 1 and the probes (fit3d.models.tokens)
    <out>/results.json|.md   the summary table and the time of each stage
    <out>/seconds.json       wall / CPU seconds of each lift and of the fine-tuning, from the run that computed
                             it: a rerun that reuses them reports those (``fit3d.clock.Clock.unit``)
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from fit3d.clock import Clock, stage_table
from fit3d.config import check_choices, inherit
from fit3d.data.readers import detect_layout
from fit3d.errors import Fit3DError
from fit3d.finetune.config import FinetuneConfig
from fit3d.finetune.recipes import DEFAULT_RECIPE, add_recipe_arguments, config_from_args, recipe
from fit3d.finetune.trainer import finetune, is_finished
from fit3d.guard import guard_output, model_inputs
from fit3d.io import clean_stale_temps, write_json, write_text
from fit3d.lift.config import LiftConfig
from fit3d.lift.lifted import lift_settings, reuse_finished
from fit3d.lift.stage import lift_scene
from fit3d.probe.config import ProbeConfig
from fit3d.probe.protocol import run_probe
from fit3d.probe.sources import KINDS as SOURCES
from fit3d.device import PRECISIONS, check_device

# headline metric per task: (probe.json key, label, lower is better)
HEADLINE = {
    "depth": [("rmse", "depth RMSE", True), ("abs_rel", "depth abs rel", True), ("delta1", "depth delta1", False)],
    "seg": [("miou", "seg mIoU", False), ("macc", "seg mAcc", False)],
    "corr": [("recall@1", "corr recall@1", False), ("recall@2", "corr recall@2", False)],
}


SECONDS_FILE = "seconds.json"  # the seconds of each resumable part (fit3d.clock.Clock's record)

# Fields every stage config has with one meaning; the pipeline sets them on each stage.
SHARED = ("backbone", "model_path", "device", "seed")
# ProbeConfig fields the pipeline sets per task.
PROBE_SET_BY_PIPELINE = SHARED + ("task", "data", "eval_data", "finetuned", "features", "out", "cache_dir")


@dataclass
class PipelineConfig:
    """Settings of the whole pipeline: shared fields, then each stage's own config (``--lift.iterations``,
    ``--finetune.max-steps``, ``--probe.iterations``, ...)."""

    out: str = field(default="runs/pipeline", metadata={"help": "output folder"})
    backbone: str = field(default="dinov2_small", metadata={"help": "registered backbone name (every stage)"})
    model_path: str | None = field(default=None, metadata={
        "help": "local weights folder (default: $FIT3D_MODEL_PATH, else the hub)"})
    device: str = field(default="auto", metadata={"help": "auto / cpu / cuda / cuda:N (every stage)"})
    precision: str = field(default="auto", metadata={
        "choices": PRECISIONS,
        "help": "dtype of the frozen features of Stage 1's targets, of Stage 2's reference (the original's forward in "
                "each step) and of the probes: auto = bf16 autocast on CUDA and on CPUs with bf16 hardware (AMX / "
                "AVX-512 BF16), else float32; Stage 2 trains as --finetune.amp says"})
    seed: int | None = field(default=None, metadata={
        "help": "seed of every stage (default: each stage's own: lift 0, fine-tune 42 as FiT3D, probe 0)"})
    tasks: list[str] = field(default_factory=lambda: ["depth", "corr"], metadata={
        "choices": ("depth", "seg", "corr"), "help": "probe tasks"})
    probe_data: str | None = field(default=None, metadata={
        "help": "probe training data (default: the first scene; frame split --probe.train-frames / --probe.test-frames)"})
    eval_data: str | None = field(default=None, metadata={
        "help": "probe test data (default: the probe data's test frames)"})
    lift: LiftConfig = field(default_factory=LiftConfig, metadata={"inherit": SHARED + ("precision",)})
    finetune: FinetuneConfig = field(default_factory=lambda: recipe(DEFAULT_RECIPE), metadata={
        "inherit": SHARED + ("precision",), "help": "Stage 2, starting from the --recipe preset"})
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={"inherit": PROBE_SET_BY_PIPELINE + ("precision",)})

    def _shared(self) -> tuple[str, ...]:
        return SHARED if self.seed is not None else tuple(n for n in SHARED if n != "seed")

    def lift_config(self) -> LiftConfig:
        """Stage 1 config; its token cache defaults to the probes' (``<out>/cache``), so an image both need at one
        input size runs through the backbone once."""
        lc = inherit(self, self.lift, self._shared() + ("precision",))
        return lc if lc.cache_dir else dataclasses.replace(lc, cache_dir=str(Path(self.out) / "cache"))

    def finetune_config(self) -> FinetuneConfig:
        """Stage 2 config; its resolution defaults to the probe's, so the backbone is trained at the
        resolution it is evaluated at."""
        ft = inherit(self, self.finetune, self._shared() + ("precision",))
        return ft if ft.resolution else dataclasses.replace(ft, resolution=list(self.probe.resolution))

    def probe_config(self, task: str, data: str, finetuned: str | None, out: Path) -> ProbeConfig:
        """The ProbeConfig for ``task`` (original, and fine-tuned + concat when given)."""
        return dataclasses.replace(
            inherit(self, self.probe, self._shared() + ("precision",)), task=task, data=data, eval_data=self.eval_data,
            finetuned=finetuned, features=list(SOURCES) if finetuned else ["original"], out=str(out / task),
            cache_dir=str(Path(self.out) / "cache"), val_frames=self.probe.val_frames if task == "depth" else None)


def run_pipeline(scenes: list[str], cfg: PipelineConfig, *, verbose: bool = True, clock: Clock | None = None) -> dict:
    """Run Stage 1 on every scene, Stage 2 on all of them, then the probes. Returns ``results.json``'s dict.
    ``clock``: the caller's, recording into ``<out>/seconds.json`` (default: a new one)."""
    out = Path(cfg.out)
    lift_cfg, finetune_cfg = cfg.lift_config(), cfg.finetune_config()
    finished = validate_pipeline(scenes, cfg, lift_cfg, finetune_cfg)
    clean_stale_temps(out)  # results.json / results.md temporaries a kill left
    clock = clock or Clock(record=out / SECONDS_FILE)

    def say(msg):
        if verbose:
            print(f"[fit3d pipeline] {msg}", flush=True)

    # Stage 1 ---------------------------------------------------------------------------------------
    lifted_dirs, lift_reports = [], {}
    for i, s in enumerate(scenes):
        name = Path(s).name
        d = out / "lifted" / name
        with clock.unit("lift", f"lift/{name}", reused=finished[name] is not None):
            if finished[name] is not None:
                say(f"lift {i + 1}/{len(scenes)} {name}: done already with these settings, skipped")
                lift_reports[name] = finished[name]
            else:
                say(f"lift {i + 1}/{len(scenes)} {name} -> {d}")
                lift_reports[name] = lift_scene(s, lift_cfg, d, name=name)
        lifted_dirs.append(str(d))

    # Stage 2 ---------------------------------------------------------------------------------------
    ft_dir = out / "finetuned"
    say(f"fine-tune {cfg.backbone} on {len(lifted_dirs)} lifted scene(s) -> {ft_dir}")
    with clock.unit("finetune", "finetune", reused=is_finished(ft_dir)):  # a finished run is returned as is
        manifest = finetune(lifted_dirs, None, ft_dir, finetune_cfg,
                            how=f"use another --out, or delete {ft_dir} to fine-tune again")

    # probes ----------------------------------------------------------------------------------------
    probe_data = cfg.probe_data or scenes[0]
    probes = {}
    for task in cfg.tasks:
        say(f"probe {task}: original / fine-tuned / concat")
        with clock.stage(f"probe_{task}"):
            probes[task] = run_probe(cfg.probe_config(task, probe_data, str(ft_dir), out / "probe"),
                                     command=None, verbose=verbose)

    results = summarize(cfg, lift_reports, manifest, probes, clock)
    write_json(out / "results.json", results)
    write_text(out / "results.md", results_markdown(results))
    if verbose:
        print(results_markdown(results))
    return results


def validate_pipeline(scenes: list[str], cfg: PipelineConfig, lift_cfg: LiftConfig, finetune_cfg: FinetuneConfig) -> dict:
    """Check every option, scene and probe setting before any work; returns {scene name: lift.json of a
    finished lift with the same settings, or None}. A finished lift made with other settings is a
    ``SettingsMismatch`` naming the differing fields."""
    if not scenes:
        raise Fit3DError("pipeline: no scenes given")
    if not cfg.tasks:
        raise Fit3DError(f"--tasks: expected one or more of {', '.join(HEADLINE)}")
    check_choices(cfg)
    check_device(cfg.device)
    cfg.probe.validate("probe.")  # each stage's errors name the pipeline's option: --lift.solve.cg-ridge
    lift_cfg.validate("lift.")
    finetune_cfg.validate("finetune.")
    if finetune_cfg.target_views == "others" and lift_cfg.method != "backprojected":
        raise Fit3DError(f"--finetune.target-views others leaves each view's own Gaussians out of its target, which "
                         f"only a back-projected lift records (--lift.method backprojected); --lift.method "
                         f"{lift_cfg.method} fuses every view into each Gaussian")
    for s in scenes:
        detect_layout(s)  # SceneError naming a missing folder or one no reader knows
    for opt, path in (("--probe-data", cfg.probe_data), ("--eval-data", cfg.eval_data)):
        if path is not None and not Path(path).exists():
            raise Fit3DError(f"{opt} {path}: does not exist")
    if cfg.probe_data is None:
        check_probe_scene(scenes[0], cfg.tasks)
    names = [Path(s).name for s in scenes]
    if len(set(names)) != len(names):
        raise Fit3DError(f"pipeline: scene folder names must be unique (lifts go to <out>/lifted/<name>): {names}")
    out = Path(cfg.out)
    how = f"use another --out, or delete {out / 'lifted'}/<scene> to lift it again"
    return {n: reuse_finished(out / "lifted" / n, lift_settings(lift_cfg, Path(s).resolve()), how)
            for s, n in zip(scenes, names)}


def check_probe_scene(scene: str, tasks: list[str]) -> None:
    """The probes train on the first scene unless ``--probe-data`` is given: stop before any work when its
    views lack what a task needs (depth for depth / corr, labels for seg), e.g. a ``fit3d prepare`` scene."""
    from fit3d.data.readers import read_scene

    seen: list[str] = []
    view = read_scene(scene, resolution=(8, 8), names=lambda n: not seen and not seen.append(n)).views[0]
    need = {"depth": view.depth is None, "corr": view.depth is None, "seg": view.labels is None}
    missing = [t for t in tasks if need.get(t)]
    if missing:
        what = "labels" if missing == ["seg"] else "depth"
        raise Fit3DError(f"pipeline: the probes ({', '.join(missing)}) train on the first scene {scene}, which has no "
                         f"{what} (a scene from photos or video, e.g. fit3d prepare); pass --probe-data a scene or "
                         f"dataset with {what} (and --eval-data), or run fit3d lift and fit3d finetune alone")


def summarize(cfg: PipelineConfig, lift_reports: dict, manifest: dict, probes: dict, clock: Clock) -> dict:
    """Flat numbers: ``depth_rmse`` -> {original, finetuned, concat}, ... plus wall and CPU seconds per stage and in
    all, each stage's from the run that computed it (``Clock.results``)."""
    res: dict = {"config": dataclasses.asdict(cfg), **clock.results(total=True)}
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
             "", *stage_table(results)]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenes", nargs="+", help="scene folders (any layout fit3d reads)")
    add_recipe_arguments(parser, PipelineConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(PipelineConfig, args)
    guard_output(cfg.out, [*args.scenes, cfg.probe_data, cfg.eval_data, *model_inputs(cfg.model_path)],
                 command="pipeline")
    run_pipeline(args.scenes, cfg)
    return 0
