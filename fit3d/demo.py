"""``fit3d demo``: FiT3D end to end on embedded synthetic indoor scenes, with a picture report.

1. generate many small synthetic rooms (posed RGB, depth, semantic labels; ScanNet layout): training
   rooms and held-out rooms (issue 14's recipe: more, cheaper rooms),
2. lift each training room into feature Gaussians (Stage 1; ``--lift.method solve``: geometry fused from
   depth, features in closed form, seconds per room),
3. fine-tune the backbone on all of them (Stage 2, the ``default`` recipe),
4. probe segmentation and depth on the held-out rooms for original / fine-tuned / concat features, with
   several head seeds (batched heads) and the width control ``concat(original, original)``,
5. write ``<out>/report/report.md``: mean ± std over seeds, paired bootstrap 95% intervals over the test
   images of (fine-tuned - original) and (concat - original) (``fit3d.probe.summary``), time per stage,
   pictures.

Nothing is downloaded but the backbone (the hub's DINOv2-S where reachable); ``--model-path`` or
``FIT3D_MODEL_PATH`` points at a local copy. Every stage resumes when the command is rerun; a rerun with
other room settings in the same ``--out`` is a ``SettingsMismatch`` (the lifts of the old rooms would
otherwise be reused), as are changed lift / fine-tuning settings (``fit3d.pipeline``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fit3d.clock import Clock, machine, stage_table
from fit3d.compare import compare_figure
from fit3d.config import check_counts
from fit3d.data import read_scene
from fit3d.data.synthetic import CLASS_NAMES, SyntheticSceneConfig, all_generated, generate_scenes
from fit3d.device import PRECISIONS, resolve_device, resolve_precision
from fit3d.errors import ModelNotFoundError
from fit3d.finetune.assembled import load_finetuned
from fit3d.finetune.config import FinetuneConfig
from fit3d.io import read_json, write_json, write_text
from fit3d.lift.config import LiftConfig, SolveConfig
from fit3d.models import load_backbone
from fit3d.paths import shared_dir, shared_model_dir
from fit3d.finetune.recipes import DEFAULT_RECIPE, add_recipe_arguments, config_from_args, recipe
from fit3d.pipeline import PROBE_SET_BY_PIPELINE, SECONDS_FILE, SHARED, PipelineConfig, run_pipeline
from fit3d.probe.config import ProbeConfig
from fit3d.probe.corr_figure import correspondence_figure, pick_pair
from fit3d.probe.sources import KINDS as SOURCES
from fit3d.probe.summary import (CONTROL, LOWER_IS_BETTER, SummaryConfig, baselines_markdown, claims,
                                 probe_baselines, probe_stats, summarise, summary_markdown)
from fit3d.run import check_resume
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
    train_scenes: int = field(default=14, metadata={"help": "synthetic rooms lifted and fine-tuned on (the probe heads "
                                                            "train on their views too)"})
    test_scenes: int = field(default=4, metadata={"help": "held-out rooms the probes are tested on (never lifted or "
                                                          "fine-tuned on)"})
    num_views: int = field(default=24, metadata={"help": "views per room"})
    width: int = field(default=224, metadata={"help": "image width"})
    height: int = field(default=168, metadata={"help": "image height"})
    seed: int = field(default=0, metadata={"help": "seed of the rooms and of every stage"})
    device: str = field(default="auto", metadata={"help": "auto / cpu / cuda"})
    precision: str = field(default="auto", metadata={
        "choices": PRECISIONS,
        "help": "dtype of the frozen features (Stage 1's targets, the probes): auto = bf16 autocast on CUDA and on "
                "CPUs with bf16 hardware (AMX / AVX-512 BF16), else float32"})
    control: bool = field(default=True, metadata={
        "help": "also train the probe heads on concat(original, original): the width control of concat"})
    bootstrap: int = field(default=2000, metadata={"help": "paired bootstrap resamples of the test images"})
    lift: LiftConfig = field(default_factory=lambda: LiftConfig(method="solve", solve=SolveConfig(
        geometry_iterations=0, view_stride=1, cg_iterations=24, cg_tol=0.05, cg_ridge=1e-3, ridge_select=False,
        decoder_kernel=5, decoder_stride=1)), metadata={
        "inherit": SHARED + ("precision",), "help": "Stage 1: solve, no colour iterations (they left the held-out feature cosine "
                                   "unchanged), every training view in the least-squares passes (cosine 0.88 vs 0.84 "
                                   "with every 4th; optimize with 500 iterations: 0.89 in 20x the time; "
                                   "docs/demo/lift-choice.md); CG and decoder as when the demo's numbers were "
                                   "measured (before the solve's defaults moved to CG to tol 0.01, a selected ridge "
                                   "and a 7x7 decoder)"})
    finetune: FinetuneConfig = field(default_factory=lambda: recipe(DEFAULT_RECIPE), metadata={
        "inherit": SHARED, "help": "Stage 2, starting from the --recipe preset"})
    probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(iterations=300, resolution=[224, 168],
                                                                   seeds=[0, 1, 2]),
                               metadata={"inherit": PROBE_SET_BY_PIPELINE + ("dataset", "num_classes", "precision")})


# The settings that make the rooms; lifts are reused by folder name, so these must not change under them.
ROOM_FIELDS = ("train_scenes", "test_scenes", "num_views", "width", "height", "seed")


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


def check_rooms(out: Path, cfg: DemoConfig) -> bool:
    """Record the room settings in ``<out>/rooms.json``; ``SettingsMismatch`` when ``out`` holds a run made
    with other ones (or by a demo that recorded none): its lifted rooms would be silently reused. True when
    ``out`` held an earlier run of these settings (its finished stages are reused)."""
    current = {k: getattr(cfg, k) for k in ROOM_FIELDS}
    rec = out / "rooms.json"
    how = f"use another --out, or delete {out} to start again"
    resumed = rec.is_file()
    if resumed:
        check_resume(read_json(rec, "demo room settings").get("settings"), current, "demo", out, how)
    elif any((out / d).exists() for d in ("scenes", "lifted", "finetuned")):
        check_resume(None, current, "demo", out, how)
    write_json(rec, {"settings": current})
    return resumed


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    clock = Clock(record=out / SECONDS_FILE)
    check_counts(cfg, {"train_scenes": 1, "test_scenes": 1, "num_views": 2, "width": 14, "height": 14, "bootstrap": 1})
    scfg = SyntheticSceneConfig(num_views=cfg.num_views, width=cfg.width, height=cfg.height, seed=cfg.seed)
    scfg.validate()  # the rooms' size is bounded by this machine's memory
    model_path = resolve_model_path(cfg.backbone, cfg.model_path)
    resumed = check_rooms(out, cfg)
    print(f"[fit3d demo] generating {cfg.train_scenes} training + {cfg.test_scenes} held-out rooms "
          f"({cfg.num_views} views, {cfg.width}x{cfg.height})", flush=True)
    rooms = {}
    for split, n, seed in (("train", cfg.train_scenes, cfg.seed), ("test", cfg.test_scenes, cfg.seed + 1000)):
        where, rcfg = out / "scenes" / split, dataclasses.replace(scfg, seed=seed)
        with clock.unit("generate", f"generate/{split}", reused=all_generated(where, n, rcfg)):
            rooms[split] = generate_scenes(where, n, rcfg)
    train, test = rooms["train"], rooms["test"]
    pcfg = PipelineConfig(out=str(out), backbone=cfg.backbone, model_path=model_path, device=cfg.device,
                          precision=cfg.precision,
                          seed=cfg.seed, tasks=["seg", "depth", "corr"], probe_data=str(out / "scenes" / "train"),
                          eval_data=str(out / "scenes" / "test"), lift=cfg.lift, finetune=cfg.finetune,
                          probe=dataclasses.replace(cfg.probe, dataset="scannet", num_classes=len(CLASS_NAMES)))
    results = run_pipeline([str(p) for p in train], pcfg, clock=clock)
    print("[fit3d demo] per-image statistics, width control, bootstrap intervals", flush=True)
    with clock.stage("intervals"):
        results["heldout"] = heldout_summary(pcfg, out, cfg)
    results.update(clock.results(total=True))
    device = resolve_device(cfg.device)
    results["machine"] = {**machine(), "device": str(device), "precision": resolve_precision(cfg.precision, device),
                          "load_at_end": round(os.getloadavg()[0], 2), "cpu_seconds": results["cpu_seconds"]["total"],
                          "resumed": resumed}
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


def heldout_summary(pcfg: PipelineConfig, out: Path, cfg: DemoConfig) -> dict:
    """{"evals": {rooms_seg|rooms_depth: summarise entry}, "controls": {...}, "claims": {...}, "n_test": N}
    from the pipeline's probes (their saved heads on the cached held-out features) plus the width control."""
    evals, controls, baselines = {}, {}, {}
    for task in ("seg", "depth"):
        pc = pcfg.probe_config(task, pcfg.probe_data, str(out / "finetuned"), out / "probe")  # as run_pipeline
        splits: dict = {}  # each split read once for both
        stats = probe_stats(pc, control=cfg.control, splits=splits)
        baselines[f"rooms_{task}"] = probe_baselines(pc, splits)
        e = summarise(task, stats, SummaryConfig(bootstrap=cfg.bootstrap))
        if "_control" in e:
            controls[f"rooms_{task}"] = e.pop("_control")
        evals[f"rooms_{task}"] = e
        n_test = int(stats["original"].shape[1])
    return {"evals": evals, "controls": controls, "baselines": baselines, "claims": claims(evals), "n_test": n_test,
            "seeds": pcfg.probe.head_seeds, "bootstrap": cfg.bootstrap}


def _fmt_diff(e: dict, key: str, m: str) -> str:
    lo, hi = e["ci"][key][m]
    d = e[key.split("-")[0]][m]["mean"] - e["original"][m]["mean"]
    return f"{m} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _better_worse(m: str, lo: float, hi: float) -> tuple[bool, bool]:
    """(better, worse) of an interval of (B - A) of metric ``m``: whether it excludes 0 on either side."""
    if m in LOWER_IS_BETTER:
        return hi < 0, lo > 0
    return lo > 0, hi < 0


def in_short(held: dict) -> str:
    """One sentence counting, over every held-out metric, where an interval excludes 0 and which way."""
    count = {k: [0, 0] for k in ("finetuned-original", "concat-original", "control")}
    n = n_ctl = 0
    for ev, e in held["evals"].items():
        for key in ("finetuned-original", "concat-original"):
            for m, (lo, hi) in e["ci"][key].items():
                b, w = _better_worse(m, lo, hi)
                count[key][0] += b
                count[key][1] += w
                n += key == "finetuned-original"
        for m, (lo, hi) in (held["controls"].get(ev, {}).get("ci", {}).get(f"concat-{CONTROL}") or {}).items():
            b, w = _better_worse(m, lo, hi)
            count["control"][0] += b
            count["control"][1] += w
            n_ctl += 1
    (fg, fl), (cg, cl), (kg, kl) = count.values()
    text = (f"**In short:** of the {n} held-out metrics, the fine-tuned model alone is better than the original on "
            f"{fg} and worse on {fl}; concat is better than the original on {cg} and worse on {cl}")
    if n_ctl:
        text += f"; against the width control concat is better on {kg} and worse on {kl} of {n_ctl}"
    text += " (every other interval includes 0)."
    if fl > fg:
        text += " On these rooms the fine-tuning does not improve the features on their own."
    if n_ctl and cg and not kg:
        text += (" Concat's gain over the original is matched by the control, so it comes from the wider head, not "
                 "from what the fine-tuned tokens add.")
    return text


def findings(held: dict) -> list[str]:
    """Plain-language lines read off the intervals: per eval and comparison, which metrics gain, lose, or
    show no difference the interval can tell apart from 0."""
    lines = [in_short(held), ""]
    names = {"finetuned-original": "Fine-tuned alone vs original", "concat-original": "Concat vs original"}
    for ev, e in held["evals"].items():
        for key, title in names.items():
            by = {"gain": [], "loss": [], "n.s.": []}
            for m, verdict in held["claims"][ev][key].items():
                by[verdict].append(_fmt_diff(e, key, m))
            parts = [f"**gains** on {', '.join(by['gain'])}" if by["gain"] else "no gain",
                     f"*losses* on {', '.join(by['loss'])}" if by["loss"] else "no loss"]
            if by["n.s."]:
                parts.append(f"no difference the interval can separate from 0 on {', '.join(m.split()[0] for m in by['n.s.'])}")
            lines.append(f"- {title}, `{ev}`: " + "; ".join(parts) + ".")
        ctl = held["controls"].get(ev)
        if ctl:
            above, below, same = [], [], []
            for m, (lo, hi) in ctl["ci"][f"concat-{CONTROL}"].items():
                better, worse = _better_worse(m, lo, hi)
                (above if better else below if worse else same).append(m)
            lines.append(f"- Concat vs the width control `{CONTROL}`, `{ev}`: better on {', '.join(above) or 'none'}; "
                         f"worse on {', '.join(below) or 'none'}; not separable on {', '.join(same) or 'none'}. "
                         f"Where concat is not better than the control, its gain over the original is what a head "
                         f"of twice the width gets from the original's tokens alone, not the fine-tuning.")
    return lines


def portable_path(p) -> str:
    """A path as a committed report may show it: relative to the working folder or to ``FIT3D_SHARED`` when
    under them, else only its last component (never the absolute path of the machine it ran on)."""
    path = Path(p)
    if not path.is_absolute():
        return str(p)
    for base, shown in ((Path.cwd(), ""), (shared_dir(), "$FIT3D_SHARED/")):
        try:
            return shown + str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return f".../{path.name}"


def portable_settings(shown: dict) -> dict:
    """``settings_shown`` with every path field made portable (:func:`portable_path`)."""
    return {k: portable_path(v) if k in ("model_path", "out", "report_dir") and isinstance(v, str) else v
            for k, v in shown.items()}


def correspondence_picture(room, room_name: str, original, finetuned, cfg: DemoConfig, within: float = 1.0):
    """A held-out view pair (:func:`fit3d.probe.corr_figure.pick_pair`) with the matches of the original and
    of the fine-tuned backbone, right / wrong against the room's depth and poses."""
    import torch

    views = [v.resized(*cfg.probe.resolution) for v in room.views]
    i, j = pick_pair(views)
    a, b = views[i], views[j]
    x = torch.stack([torch.from_numpy(v.image).permute(2, 0, 1) for v in (a, b)])
    feats = {}
    with torch.inference_mode():
        for name, model in (("original", original), ("fine-tuned", finetuned)):
            patch = model.features(model.prepare(x)).patch.float().cpu()
            feats[name] = (patch[0], patch[1])
    patch_px = a.width / feats["original"][0].shape[-1]
    fig, _ = correspondence_figure(a, b, feats, patch_px, within=within, panel_height=240,
                                   title=f"{room_name}, views {a.name} -> {b.name}: {cfg.backbone} original vs "
                                         f"fine-tuned nearest-patch matches (green within {within:g} patch of the truth)")
    return fig


def same_patch_baseline(rooms, resolution, patch: int, gaps) -> dict:
    """The trivial correspondence baseline: every point stays at its patch position (one-hot patch features
    under the same protocol), pooled over ``rooms``."""
    import torch

    from fit3d.data.readers.common import frame_number
    from fit3d.probe.corr import RECALL_AT, evaluate_correspondence

    W, H = resolution
    h, w = H // patch, W // patch
    hits, n, pairs = {k: 0.0 for k in RECALL_AT}, 0, 0
    for room in rooms:
        views = read_scene(room, layout="scannet", resolution=(W, H)).views
        onehot = torch.eye(h * w).reshape(h * w, h, w)[None].expand(len(views), -1, -1, -1)
        r = evaluate_correspondence(onehot, views, [frame_number(v.name) for v in views], patch, gaps)
        for k in RECALL_AT:
            hits[k] += r[f"recall@{k}"] * r["matches"] if r["matches"] else 0.0
        n, pairs = n + r["matches"], pairs + r["pairs"]
    return {**{f"recall@{k}": hits[k] / n if n else float("nan") for k in RECALL_AT}, "pairs": pairs, "matches": n}


def corr_section(out: Path, test, patch: int, cfg: DemoConfig) -> list[str]:
    """Report lines: the held-out rooms' correspondence recall per feature source (``fit3d probe --task corr``
    on the test rooms, written by the pipeline), next to a same-position baseline; [] when not run."""
    f = out / "probe" / "corr" / "probe.json"
    if not f.exists():
        return []
    metrics = dict(read_json(f, "correspondence probe").get("metrics", {}))
    metrics["baseline: same patch position"] = same_patch_baseline(test, cfg.probe.resolution, patch, cfg.probe.gaps)
    n_rooms = len(test)
    keys = [k for k in ("recall@1", "recall@2", "recall@4") if any(k in (m or {}) for m in metrics.values())]
    rows = [f"| {src} | " + " | ".join(f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in keys)
            + f" | {m.get('pairs', '-')} | {m.get('matches', '-')} |" for src, m in metrics.items() if isinstance(m, dict)]
    return ["## Correspondence on the held-out rooms", "",
            f"`fit3d probe --task corr` (fit3d protocol) on the views of the {n_rooms} held-out rooms: grid queries of "
            f"frame-gap pairs within a room, ground truth from depth and poses (occlusion-checked), each query "
            f"matched to its nearest patch by cosine; recall@k = share within k patch widths. No head is trained.", "",
            "| features | " + " | ".join(f"{k} ↑" for k in keys) + " | pairs | matches |",
            "|---|" + "---|" * (len(keys) + 2), *rows, ""]


def settings_shown(cfg: DemoConfig) -> dict:
    """The demo's own fields, and of each stage config only the fields that differ from its class defaults."""
    shown = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            base = dataclasses.asdict(type(v)())
            v = {k: x for k, x in dataclasses.asdict(v).items() if x != base[k]}
        shown[f.name] = v
    return shown


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
    held_room = read_scene(test[0], layout="scannet")
    idx = np.linspace(0, len(held_room) - 1, 3).round().astype(int)
    rows = [compare_figure(held_room.views[i].image, original, finetuned, panel_height=240,
                           title=f"{Path(test[0]).name} view {held_room.views[i].name}: {cfg.backbone} original vs "
                                 f"fine-tuned, PCA of patch features (one basis)") for i in idx]
    save_png(rep / "compare.png", vstack(rows, pad=6))
    pics.append(("Held-out room: image, PCA of original vs fine-tuned DINOv2 features (one basis)", "compare.png"))
    save_png(rep / "correspondence.png", correspondence_picture(held_room, Path(test[0]).name, original, finetuned, cfg))
    pics.append(("Held-out room: correspondence of a view pair, original vs fine-tuned (green: right against the "
                 "depth and poses, red: wrong)", "correspondence.png"))
    for task in ("seg", "depth"):
        src = out / "probe" / task / "figure.png"
        if src.exists():
            shutil.copy2(src, rep / f"probe_{task}.png")
            pics.append((f"{task} probe on held-out rooms: ground truth and predictions per feature source",
                         f"probe_{task}.png"))
    held, m = results["heldout"], results["machine"]
    p = cfg.probe
    lines = ["# fit3d demo report", "",
             f"Backbone `{cfg.backbone}` ({portable_path(model_path) if model_path else 'hub'}); {len(train)} training rooms (lifted, fine-tuned "
             f"on, probe training) and {len(test)} held-out rooms (probe test only: never lifted or fine-tuned on), "
             f"{cfg.num_views} views each at {cfg.width}x{cfg.height}; Stage 1 `{cfg.lift.method}`, Stage 2 recipe "
             f"`{cfg.finetune.recipe}`. Command: `fit3d demo` with", "", "```json",
             json.dumps(portable_settings(settings_shown(cfg)), indent=2), "```", "",
             "(stage configs: the fields that differ from their class defaults; every field in `results.json`)", "",
             "## Cross-scene results on the held-out rooms", "",
             f"Linear heads (`fit3d probe`'s protocol, {p.iterations} iterations, last checkpoint, {p.resolution[0]}x"
             f"{p.resolution[1]}) trained on the {len(train) * cfg.num_views} views of the training rooms and tested "
             f"on the {held['n_test']} views of the {len(test)} held-out rooms, for each feature source "
             f"({', '.join(SOURCES)}: original + fine-tuned patch tokens, CLS of the original) and each of "
             f"{len(held['seeds'])} head seeds ({', '.join(map(str, held['seeds']))}; all heads of a task in one "
             f"batched pass). Each cell: mean ± std over the seeds. Intervals: paired bootstrap over the test images "
             f"({held['bootstrap']} resamples; per-image depth metrics averaged over seeds, per-image confusion "
             f"matrices summed), 95%; **gain** / *loss* is marked only where the interval excludes 0. The control "
             f"`{CONTROL}` is the same head on the original's tokens twice: a head on concat reads twice the "
             f"channels, which alone moves short-trained heads. Depth `*_aligned`: each prediction scaled by "
             f"median(gt) / median(pred) per image. The test views of one room are correlated; the interval "
             f"resamples images, not rooms, so it speaks for these {len(test)} rooms rather than for rooms in general.",
             "", summary_markdown(held["evals"], held["controls"]),
             *(["The heads' trivial predictors, in the same metrics (they read no image: the probe rooms' majority "
                "class / mean depth everywhere, and per pixel over the probe rooms' views: a position prior):", "",
                baselines_markdown(held["baselines"])] if held.get("baselines") else []),
             "### What the numbers show", "",
             *findings(held), "", *corr_section(out, test, original.patch_size, cfg), "## Time per stage", "",
             f"Wall seconds on {m['cpus']} CPU cores ({m.get('cpu_model') or 'CPU model unknown'}), device "
             f"`{m['device']}`, frozen features in {m.get('precision', 'fp32')}, load average {m['load_at_end']:.1f} "
             f"when the run ended (other jobs on the same cores slow every stage: compare stages within one run), "
             f"and CPU seconds (user + system, over all threads and worker processes: what other jobs do not "
             f"change)" + (f"; {m['cpu_seconds']:.0f} CPU seconds in all (on {m['cpus']} otherwise idle cores: at "
                           f"least {m['cpu_seconds'] / m['cpus']:.0f} s of wall time)." if m.get("cpu_seconds")
                           else "."), *([" **This run resumed an earlier one in the same folder:** each stage it "
                                         "reused shows the seconds of the run that computed it (see the table)."]
                                        if m.get("resumed") else []), "",
             *stage_table(results), ""]
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
    add_recipe_arguments(parser, DemoConfig)


def run(args: argparse.Namespace) -> int:
    from fit3d.guard import guard_output, model_inputs

    cfg = config_from_args(DemoConfig, args)
    guard_output(cfg.out, model_inputs(cfg.model_path), command="demo")
    run_demo(cfg)
    return 0
