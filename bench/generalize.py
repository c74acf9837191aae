"""Proof across scenes: lift many scenes, fine-tune one model on all of them, probe scenes and images it never saw.

    python bench/generalize.py --out runs/generalize --json runs/generalize.json [--recipe default]
    python bench/generalize.py --quick --out runs/generalize_quick       # smoke run (minutes)

Stages (each kept under ``--out``; rerunning reuses finished ones):

1. generate ``--rooms`` synthetic rooms to lift, plus ``--probe-rooms`` + ``--test-rooms`` held-out rooms
   (never lifted or fine-tuned on) for the rooms probes (``fit3d.data.synthetic``);
2. lift RedKitchen frames 0-398, icl-livingroom1, ``--extra-scenes`` and the rooms with the Stage 1 method
   ``--lift-method`` (``backprojected``, a depth back-projection without optimisation, ``optimize`` or ``solve``;
   a scene without depth by ``solve``) on the same views (``--lift-max-views``, every 8th held out) whatever the
   method, from the backbone's features of each view at ``--lift-feature-size`` (224: the Stage 2 input);
3. fine-tune one DINOv2-S on all lifted scenes with ``--recipe`` (``fit3d.finetune.recipes``) -> ``OUT/finetuned``;
4. evaluate original / finetuned / concat on:

   - ``sun3d_depth_from_redkitchen``: depth head trained on RedKitchen 0-398, tested on every sun3d-office frame;
   - ``sun3d_depth_in_scene``: head trained on sun3d frames 935-984, tested on 3160-3209;
   - ``sun3d_corr``: correspondence recall@1 / @2 patches on sun3d pairs at ``--gaps`` (no head);
   - ``camvid_seg``: seg head trained on CamVid train, tested on val (out of domain);
   - ``rooms_seg`` / ``rooms_depth``: heads trained on the probe rooms, tested on the test rooms;
   - ``flowers_cls``: image classification on the [CLS] token (``fit3d.probe.cls``), flowers train -> val:
     DINO's k-NN (k 20, T 0.07) and a linear head, top-1 (concat = both [CLS] tokens).

   Depth is reported metric (``rmse``, ``abs_rel``, ``delta1``) and scale-aligned (``*_aligned``: each
   prediction multiplied by median(gt) / median(pred) per image, as probe3d does): across scenes the
   metric numbers are dominated by the scene's scale. Heads follow ``fit3d probe``'s plain protocol
   (fixed iterations, last checkpoint) at ``--probe-resolution``; each is trained with ``--seeds`` seeds
   (mean and std of the metric over seeds). The interval is a paired bootstrap over test images (per-image
   values averaged over seeds; confusion matrices / pair hit counts summed) of (concat - original) and
   (finetuned - original); a gain is claimed only where it excludes 0.

Writes ``OUT/generalize.json`` (and ``--json PATH``) in the schema
``{"evals": {EVAL: {SOURCE: {METRIC: {"mean", "std"}}, "ci": {"concat-original": {METRIC: [lo, hi]},
"finetuned-original": {...}}}}, "seconds": {...}, "model_dir": ...}`` (plus ``settings``, ``claims`` and
``targets`` beside them) and ``OUT/generalize.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fit3d.clock import Clock, machine, stage_table
from fit3d.config import add_arguments, from_args
from fit3d.device import PRECISIONS, resolve_precision
from fit3d.finetune.recipes import RECIPES
from fit3d.io import write_json, write_text
from fit3d.data.synthetic import generated_with
from fit3d.lift.methods import METHODS
from fit3d.paths import REPO_ROOT, shared_7scenes_dir, shared_dir, shared_model_dir
from fit3d.probe.sources import KINDS as SOURCES
from fit3d.probe.summary import (CONTROL, Feats, SummaryConfig, baselines_markdown, claims, depth_baselines,
                                 eval_depth, eval_seg, seg_baselines, summarise, summary_markdown)
from fit3d.run import as_recorded

EVALS = ("sun3d_depth_from_redkitchen", "sun3d_depth_in_scene", "sun3d_corr", "camvid_seg", "rooms_seg",
         "rooms_depth", "flowers_cls")


@dataclass
class GeneralizeConfig:
    out: str = field(default=str(REPO_ROOT / "runs" / "generalize"), metadata={"help": "output folder (every stage)"})
    json: str | None = field(default=None, metadata={"help": "also write the JSON result here"})
    md: str | None = field(default=None, metadata={"help": "also write the markdown table here"})
    model_path: str = field(default=str(shared_model_dir()), metadata={"help": "DINOv2-S weights folder"})
    redkitchen: str = field(default=str(shared_7scenes_dir()), metadata={"help": "7-Scenes RedKitchen folder"})
    icl: str = field(default=str(shared_dir() / "data" / "icl-livingroom1"), metadata={
        "help": "icl-livingroom1 folder ('' = not lifted)"})
    lift_redkitchen: bool = field(default=True, metadata={
        "help": "lift and fine-tune on RedKitchen 0-398 (off: its frames only train the RedKitchen heads, so Stage 2 "
                "sees no real scene: the held-out-real protocol's Stage 2, docs/generalize.md sitting 25)"})
    extra_scenes: list[str] = field(default_factory=list, metadata={
        "help": "more posed scenes to lift and fine-tune on (any layout fit3d reads, e.g. a `fit3d prepare` folder of a "
                "photo capture); one without depth is lifted by solve from its points (docs/generalize.md, sitting 26)"})
    sun3d: str = field(default=str(shared_dir() / "data" / "sun3d-office"), metadata={
        "help": "sun3d-office folder (evaluation only: never lifted or fine-tuned on)"})
    camvid: str = field(default=str(shared_dir() / "data" / "camvid"), metadata={"help": "CamVid (SegNet layout)"})
    flowers: str = field(default=str(shared_dir() / "data" / "flowers"), metadata={
        "help": "image-folder classification set (train/<class>/, val/<class>/) of flowers_cls"})
    rooms: int = field(default=30, metadata={
        "help": "generated rooms lifted and fine-tuned on (60 for one epoch gained on every validation eval but transferred "
                "less to the test office in three seeds: docs/generalize.md, sitting 24)"})
    probe_rooms: int = field(default=4, metadata={"help": "held-out generated rooms the rooms heads train on"})
    test_rooms: int = field(default=4, metadata={"help": "held-out generated rooms the rooms heads are tested on"})
    room_views: int = field(default=24, metadata={"help": "views per generated room"})
    room_size: list[int] = field(default_factory=lambda: [224, 168], metadata={"help": "generated rooms' W H"})
    lift_method: str = field(default="backprojected", metadata={
        "choices": tuple(METHODS), "help": "Stage 1 method (fit3d.lift.methods): backprojected (no optimisation), "
                                           "optimize or solve"})
    lift_iterations: int = field(default=500, metadata={"help": "iterations of an optimising lift method"})
    lift_width: int = field(default=96, metadata={"help": "lift render width (height keeps the aspect)"})
    lift_feature_size: int = field(default=224, metadata={
        "help": "backbone input long side for the lifted features (0: backprojected at the lift resolution itself, "
                "a 7 x 5 token grid at width 96, issue 14's runs; fit3d.lift methods at their feature_size, 448; "
                "224: the Stage 2 / probe input, as FiT3D lifts and fine-tunes at one resolution)"})
    lift_feature_dim: int = field(default=64, metadata={
        "help": "per-Gaussian feature size f (FiT3D: 64; 0 = the backbone's width D: no bottleneck)"})
    lift_max_views: int = field(default=0, metadata={"help": "cap views per lifted scene (evenly spaced; 0 = all)"})
    recipe: str = field(default="default", metadata={"choices": tuple(RECIPES),
                                                     "help": "fine-tuning preset (fit3d.finetune.recipes)"})
    epochs: int = field(default=0, metadata={
        "help": "Stage 2 passes over the lifted views (0: the recipe's own, `default`'s 2: the proof measures the recipe "
                "users get)"})
    finetune_steps: int | None = field(default=None, metadata={"help": "Stage 2 steps (default: the epochs')"})
    set: list[str] = field(default_factory=list, metadata={
        "help": "FinetuneConfig overrides FIELD=VALUE (fit3d.config.set_fields), e.g. lr=1e-4 freeze_blocks=6"})
    from_finetuned: str = field(default="", metadata={
        "help": "a finished Stage 2 folder of the same settings to evaluate instead of fine-tuning (its weights "
                "interpolated toward the original by --set interpolate=A: WiSE-FT without retraining; or with a [CLS] "
                "map fitted by --set cls_align=ridge / shift)"})
    probe_resolution: list[int] = field(default_factory=lambda: [224, 168], metadata={"help": "probe W H"})
    probe_iterations: int = field(default=1000, metadata={"help": "head iterations (depth and seg)"})
    seeds: int = field(default=3, metadata={"help": "probe seeds per head"})
    max_items: int = field(default=0, metadata={"help": "cap images per probe split (evenly spaced; 0 = all)"})
    gaps: list[int] = field(default_factory=lambda: [3, 10, 20], metadata={"help": "sun3d correspondence frame gaps"})
    evals: list[str] = field(default_factory=lambda: list(EVALS), metadata={
        "choices": EVALS, "help": "the evaluations to run (default: all); e.g. sun3d_corr camvid_seg for a quick look at one lever"})
    bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "feature cache (default OUT/cache; share one between runs: original features are reused)"})
    scenes_dir: str | None = field(default=None, metadata={
        "help": "where generated rooms and lifted scenes go (default OUT; share one between recipe runs)"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: default)"})
    precision: str = field(default="fp32", metadata={
        "choices": PRECISIONS,
        "help": "dtype of the frozen features (lift targets, Stage 2's reference forward of the original, probe "
                "features). fp32: the proof's protocol, every run in docs/generalize.md; auto = bf16 autocast on a CPU "
                "with bf16 hardware (AMX / AVX-512 BF16), 0.80-0.87x the CPU seconds at full scale, within the seed spread "
                "but not the same numbers (docs/speed.md sections 10 and 13); Stage 2 trains in float32 either way"})
    quick: bool = field(default=False, metadata={
        "help": "smoke run: 3 rooms (+1+1 held out), 12 views, 40 views per lifted scene, 10 Stage 2 steps, "
                "60 head iterations, 1 seed, 24 images per probe split"})

    def features_precision(self) -> str:
        """``precision`` resolved on this bench's device, the CPU: fp32 / bf16 (the cache keys' and records' value)."""
        return resolve_precision(self.precision, "cpu")


QUICK = dict(rooms=3, probe_rooms=1, test_rooms=1, room_views=12, lift_max_views=40, finetune_steps=10,
             probe_iterations=60, seeds=1, max_items=24, bootstrap=200)


# ----------------------------------------------------------------------------------------- stages 1-3
def _say(msg: str) -> None:
    print(f"[generalize] {msg}", flush=True)


def generate_rooms(cfg: GeneralizeConfig, out: Path, clock: Clock | None = None) -> dict[str, list[Path]]:
    """The generated rooms under ``out/rooms/{lift,probe,test}`` (rooms written already are reused); ``clock``: each
    set is a :meth:`Clock.unit` of stage ``generate``."""
    from fit3d.data.synthetic import SyntheticSceneConfig, generate_scenes
    from fit3d.data.synthetic.scenes import all_generated

    clock = clock or Clock()
    base = SyntheticSceneConfig(num_views=cfg.room_views, width=cfg.room_size[0], height=cfg.room_size[1], seed=0)
    sets = {"lift": (cfg.rooms, 0), "probe": (cfg.probe_rooms, 10000), "test": (cfg.test_rooms, 20000)}
    rooms = {}
    for k, (n, seed) in sets.items():
        if n > 0:
            where, rcfg = out / "rooms" / k, dataclasses.replace(base, seed=seed)
            with clock.unit("generate", f"generate/{k}/{n}", reused=all_generated(where, n, rcfg)):
                rooms[k] = generate_scenes(where, n, rcfg, progress=False)
    return rooms


def _lift_views(path, max_frame: int | None, max_views: int, heldout_every: int = 8) -> tuple[list, list]:
    """(train, held-out) view names of a scene: frames <= max_frame, evenly capped, every k-th held out."""
    from fit3d.data import read_scene
    from fit3d.data.readers import frame_number

    names = [v.name for v in read_scene(path, resolution=(32, 24), load_depth=False,
                                        names=(lambda n: frame_number(n) <= max_frame) if max_frame else None).views]
    if max_views and len(names) > max_views:
        names = [names[i] for i in np.linspace(0, len(names) - 1, max_views).round().astype(int)]
    held = names[::heldout_every]
    return [n for n in names if n not in held], held


def stage2_scenes(cfg: GeneralizeConfig, rooms: dict) -> list[tuple[str, Path, int | None]]:
    """(name, folder, last frame or None) of every scene Stage 2 trains on: RedKitchen 0-398, ICL, ``--extra-scenes``
    and the generated rooms; a scene named twice, or the evaluation-only sun3d office, is a plain error."""
    scenes = [("redkitchen", Path(cfg.redkitchen), 398)] if cfg.lift_redkitchen else []
    if cfg.icl:
        scenes.append(("icl-livingroom1", Path(cfg.icl), None))
    for p in map(Path, cfg.extra_scenes):
        if not p.is_dir():
            raise SystemExit(f"--extra-scenes {p}: no such folder")
        if cfg.sun3d and p.resolve() == Path(cfg.sun3d).resolve():
            raise SystemExit(f"--extra-scenes {p}: the sun3d office is evaluation only, never lifted or fine-tuned on")
        scenes.append((p.name, p, None))
    scenes += [(p.name, p, None) for p in rooms.get("lift", [])]
    names = [n for n, _, _ in scenes]
    if len(set(names)) < len(names):
        raise SystemExit(f"two Stage 2 scenes share a name ({sorted({n for n in names if names.count(n) > 1})}): "
                         "their lifts would share a folder; rename one")
    return scenes


def _has_depth(path) -> bool:
    """Whether a scene's first view has any valid depth (the back-projected lift needs it)."""
    from fit3d.data import read_scene

    seen: list[str] = []
    view = read_scene(path, resolution=(32, 24), names=lambda n: not seen and not seen.append(n)).views[0]
    return view.depth is not None and bool((view.depth > 0).any())


def lift_all(cfg: GeneralizeConfig, scenes: list[tuple[str, Path, int | None]], out: Path, backbone,
             clock: Clock | None = None) -> list[Path]:
    """Lift every scene into ``out/lifted*/<name>`` (a finished lift with this run's settings is reused). ``clock``:
    each lift is a :meth:`Clock.unit` of stage ``lift`` (a reused one counts the seconds of the run that made it)."""
    from fit3d.lift import is_lifted

    clock = clock or Clock()
    dirs = []
    needs_own = cfg.lift_method == "backprojected" and finetune_config(cfg).target_views == "others"
    # other lift kinds go to their own folders, so runs sharing --scenes-dir do not lift over each other
    fs = cfg.lift_feature_size
    kind = "" if (cfg.lift_method, cfg.lift_feature_dim, fs) == ("backprojected", 64, 0) else (
        f"-{cfg.lift_method}" + (f"-f{cfg.lift_feature_dim or 'D'}" if cfg.lift_feature_dim != 64 else "")
        + (f"-fs{fs}" if fs else ""))
    for i, (name, path, max_frame) in enumerate(scenes):
        d = out / f"lifted{kind}" / name
        dirs.append(d)
        train, held = _lift_views(path, max_frame, cfg.lift_max_views)
        method = cfg.lift_method
        if method == "backprojected" and not _has_depth(path):
            method = "solve"  # fit3d lift's default: fused from the scene's points (a photo capture's SfM)
        want = as_recorded({"method": method, "width": cfg.lift_width, "iterations": cfg.lift_iterations,
                            **({"feature_dim": cfg.lift_feature_dim} if cfg.lift_feature_dim != 64 else {}),
                            **({"feature_size": fs} if fs else {}),
                            "max_frame": max_frame, "train_views": train, "heldout_views": held,
                            "precision": cfg.features_precision(),
                            "scene": str(Path(path).resolve()), "source": generated_with(path)})
        record = d / "generalize.json"  # what this bench lifted the folder with (the lift's own settings vary by method)
        if is_lifted(d):
            had = json.loads(record.read_text()) if record.exists() else None
            own = not needs_own or "view_gaussians" in (json.loads((d / "lift.json").read_text()).get(
                "backprojected") or {})  # target_views=others reads which Gaussians each view made
            if had == want and own:
                with clock.unit("lift", f"lift/{d.relative_to(out)}", reused=True):
                    continue
            why = ("no per-view Gaussians (lifted before)" if had == want
                   else "no record of its settings" if had is None
                   else "settings differ: " + ", ".join(k for k in want if had.get(k) != want[k]))
            _say(f"lift {name}: the finished lift in {d} is stale ({why}); lifting again")
            shutil.rmtree(d)
        _say(f"lift {i + 1}/{len(scenes)} {name} ({method})")
        with clock.unit("lift", f"lift/{d.relative_to(out)}", reused=False):
            _lift_one(cfg, backbone, path, d, name, method, max_frame, (train, held))
        write_json(record, want)
    return dirs


def _lift_one(cfg: GeneralizeConfig, backbone, path, d: Path, name: str, method: str, max_frame, split) -> None:
    """``fit3d lift`` of one scene into ``d`` with the bench's settings (``split``: train and held-out view names)."""
    from fit3d.lift import LiftConfig, lift_scene
    from fit3d.lift.config import BackprojectedConfig

    fs = cfg.lift_feature_size
    lc = LiftConfig(backbone=backbone.name, model_path=cfg.model_path, method=method,
                    iterations=cfg.lift_iterations, width=cfg.lift_width, max_frame=max_frame, device="cpu",
                    progress=False, feature_dim=cfg.lift_feature_dim or backbone.embed_dim, precision=cfg.precision,
                    **({"feature_size": fs} if fs else {}),
                    backprojected=BackprojectedConfig(feature_input="cache" if fs else "render"),
                    cache_dir=str(cfg.cache_dir or Path(cfg.out) / "cache"))  # the probes' token cache too
    lift_scene(str(path), lc, d, backbone=backbone, name=name, split=split)


def check_stage2(cfg: GeneralizeConfig):
    """The Stage 2 settings (:func:`finetune_config`), checked before any work: a bad ``--epochs`` or ``--set`` value is a
    plain error naming it (``SystemExit``), not a traceback after the lifts."""
    from fit3d.errors import Fit3DError

    try:
        if cfg.epochs < 0:
            raise Fit3DError(f"--epochs {cfg.epochs}: must be >= 0 (0: the recipe's own)")
        fcfg = finetune_config(cfg)
        fcfg.validate()
    except Fit3DError as e:
        raise SystemExit(f"{e}") from None
    return fcfg


def finetune_config(cfg: GeneralizeConfig):
    """``--recipe``'s preset at the probe resolution on CPU, ``--epochs``, ``--finetune-steps`` and the ``--set`` fields
    on top."""
    from fit3d.config import set_fields
    from fit3d.finetune.recipes import recipe

    ft = dataclasses.replace(recipe(cfg.recipe), resolution=list(cfg.probe_resolution), device="cpu", progress=False,
                             precision=cfg.precision)  # Stage 2's reference forward as the features: fp32 by default
    if cfg.epochs:
        ft = dataclasses.replace(ft, epochs=cfg.epochs)
    if cfg.finetune_steps:
        ft = dataclasses.replace(ft, max_steps=cfg.finetune_steps)
    return set_fields(ft, cfg.set)


def stage2(cfg: GeneralizeConfig, lifted: list, ft_dir: Path, fcfg) -> dict:
    """Stage 2 into ``ft_dir`` (returns its manifest): fine-tune on the ``lifted`` scenes, or with
    ``--from-finetuned SRC`` train nothing and write SRC's weights interpolated by ``fcfg.interpolate``
    (``fit3d.finetune.assembled.interpolate_folder``; at 1 with ``cls_align`` none: SRC without its [CLS] map)
    or with a new [CLS] map (``fcfg.cls_align``, ``align_folder``). SRC must be the Stage 2 this run would make at
    interpolate 1 (the trainer's own settings record and resume rule: config, model, scenes and their lifts)."""
    from fit3d.finetune import finetune
    from fit3d.finetune.assembled import align_folder, interpolate_folder, read_manifest
    from fit3d.finetune.trainer import MANIFEST_FILE, recorded_settings, run_settings
    from fit3d.run import SettingsMismatch, check_resume, result_settings

    if not cfg.from_finetuned:
        return finetune([str(d) for d in lifted], "dinov2_small", ft_dir, fcfg, model_path=cfg.model_path)
    if fcfg.interpolate != 1.0 and fcfg.cls_align != "none":
        raise SystemExit("--from-finetuned: interpolate or cls_align, one at a time")
    src = Path(cfg.from_finetuned)
    full = dataclasses.replace(fcfg, backbone="dinov2_small", model_path=cfg.model_path, interpolate=1.0,
                               cls_align="none", cls_align_views=0)
    want = run_settings([str(d) for d in lifted], full, 1)
    recorded = lambda m: recorded_settings({**result_settings(type(fcfg)()), **(m.get("settings") or {})},  # noqa: E731
                                           "cpu")  # newer fields: defaults
    try:
        # SRC's own [CLS] map (cls_align) is fitted after training and leaves its weights as trained: not compared;
        # interpolate_folder drops it, align_folder fits a new one
        check_resume({**recorded(read_manifest(src)), "cls_align": "none", "cls_align_views": 0}, want,
                     "fine-tuning (--from-finetuned)", src, "pass the Stage 2 folder of this run's settings")
        if (ft_dir / MANIFEST_FILE).exists():  # an earlier run of this command: reused when it is this one
            old = read_manifest(ft_dir)
            check_resume(recorded(old), {**want, "interpolate": fcfg.interpolate, "cls_align": fcfg.cls_align,
                                         "cls_align_views": fcfg.cls_align_views if fcfg.cls_align != "none" else 0},
                         "Stage 2 from --from-finetuned", ft_dir, "pass another --out")
            return old
    except SettingsMismatch as e:
        raise SystemExit(str(e)) from None
    if fcfg.cls_align != "none":
        _say(f"Stage 2 from {src}: [CLS] map fitted ({fcfg.cls_align}) -> {ft_dir}")
        return align_folder(src, ft_dir, progress=True, kind=fcfg.cls_align, max_views=fcfg.cls_align_views)
    _say(f"Stage 2 from {src}: weights interpolated at {fcfg.interpolate} -> {ft_dir}")
    return interpolate_folder(src, ft_dir, fcfg.interpolate)


# ----------------------------------------------------------------------------------------- evaluation
def extract(sources: dict, splits: dict, cache, res, precision: str | None = None) -> dict:
    """{set name: {"original"|"finetuned"|"concat": Feats}}; concat = the two patch sets, CLS of the original.
    ``precision``: the features' dtype (``fit3d.device.resolve_precision``; None: the models' default, float32)."""
    from fit3d.probe.sources import resolve_source

    models = {}
    out: dict = {}
    for set_name, split in splits.items():
        out[set_name] = {}
        for label, src in sources.items():
            def load(src=src, label=label):
                if label not in models:
                    models[label] = resolve_source(src)
                return models[label]

            f = cache.features(src, split.images, split.data.names, load, desc=f"{label} {set_name}", precision=precision)
            out[set_name][label] = Feats(f.patch, f.cls)
        o, f = out[set_name]["original"], out[set_name]["finetuned"]
        out[set_name]["concat"] = Feats(torch.cat([o.patch, f.patch], 1), o.cls)
        out[set_name][CONTROL] = Feats(torch.cat([o.patch, o.patch], 1), o.cls)
    return out


def eval_corr(feats: dict, views, frames: list[int], gaps: list[int]) -> tuple[dict, list[int]]:
    """({source: [1, P, 2 + 2 * len(gaps)] per-pair (hits@1, n, hits@2, n, ...) per gap slot}, pair gaps).

    Columns: overall recall@1 (hits, n), recall@2 (hits, n); then recall@1 (hits, n) at each gap (zeros for
    pairs of another gap). Matching as ``fit3d.probe.corr.evaluate_correspondence``."""
    from fit3d.probe.corr import gt_matches, make_pairs, match_pair, query_grid

    H, W = views[0].height, views[0].width
    pairs = make_pairs(list(frames), list(gaps))
    out = {}
    for src in SOURCES + (CONTROL,):
        P = feats[src].patch
        patch = W / P.shape[-1]
        queries = query_grid(H, W, patch / 2)
        rows = []
        for i, j, gap in pairs:
            tgt, ok = gt_matches(views[i], views[j], queries)
            row = np.zeros(4 + 2 * len(gaps))
            if ok.any():
                err = np.linalg.norm(match_pair(P[i], P[j], queries[ok], H, W) - tgt[ok], axis=1)
                h1, h2, m = float((err <= patch).sum()), float((err <= 2 * patch).sum()), float(ok.sum())
                g = 4 + 2 * list(gaps).index(gap)
                row[[0, 1, 2, 3, g, g + 1]] = [h1, m, h2, m, h1, m]
            rows.append(row)
        out[src] = np.asarray(rows)[None]
    return out, [g for _, _, g in pairs]


def corr_metric_names(gaps) -> list[str]:
    return ["recall1", "recall2"] + [f"recall1_gap{g}" for g in gaps]


# sun3d_depth_in_scene: heads trained on the first stretch of the recording, tested on the second (3.3 m away)
SUN3D_IN_SCENE = ((935, 984), (3160, 3209))


def in_scene_split(frames: list[int]) -> tuple[list[int], list[int]]:
    """Indices of ``frames`` (sun3d frame numbers) in the in-scene eval's training and test stretches."""
    return tuple([i for i, f in enumerate(frames) if lo <= f <= hi] for lo, hi in SUN3D_IN_SCENE)


HEADLINE = ("rmse", "rmse_aligned", "miou", "recall1", "knn_top1", "linear_top1")  # the metrics "not worse" reads


def targets(evals: dict, gaps, controls: dict | None = None) -> dict:
    """Issue 21's 'done when' checks, each True / False (only for the evals that ran): the fine-tuned model
    alone shows no loss (95% interval excluding 0) on any eval's headline metrics (depth rmse metric and
    scale-aligned, seg miou, correspondence recall@1, classification top-1); it is above the original in
    sun3d recall@1 at every gap and at most 0.90x its sun3d in-scene depth RMSE; concat is at most 0.95x the
    original's sun3d depth RMSE on both protocols (interval excluding 0) and below the width control's."""
    t = {}
    cl = claims(evals)
    for ev, e in evals.items():
        lost = [m for m in HEADLINE if cl[ev]["finetuned-original"].get(m) == "loss"]
        t[f"{ev}: finetuned not worse than original ({', '.join(m for m in HEADLINE if m in e['original'])})"] = \
            not lost
    if "sun3d_corr" in evals:
        e = evals["sun3d_corr"]
        t["sun3d_corr: finetuned recall@1 above original at every gap"] = all(
            e["finetuned"][f"recall1_gap{g}"]["mean"] > e["original"][f"recall1_gap{g}"]["mean"] for g in gaps)
    if "sun3d_depth_in_scene" in evals:
        e = evals["sun3d_depth_in_scene"]
        t["sun3d_depth_in_scene: finetuned rmse <= 0.90 x original"] = bool(
            e["finetuned"]["rmse"]["mean"] <= 0.90 * e["original"]["rmse"]["mean"])
    for ev in ("sun3d_depth_from_redkitchen", "sun3d_depth_in_scene"):
        if ev in evals:
            e = evals[ev]
            o, c = (e[s]["rmse"]["mean"] for s in ("original", "concat"))
            t[f"{ev}: concat rmse <= 0.95 x original, interval excludes 0"] = bool(
                c <= 0.95 * o and e["ci"]["concat-original"]["rmse"][1] < 0)
            ctl = (controls or {}).get(ev)
            if ctl:
                t[f"{ev}: concat rmse below the width control, interval excludes 0"] = bool(
                    ctl["ci"][f"concat-{CONTROL}"]["rmse"][1] < 0)
    return t


def markdown(result: dict) -> str:
    """The table of ``fit3d.probe.summary.summary_markdown``, then seconds per stage and the issue's targets."""
    lines = [summary_markdown(result["evals"], result.get("controls", {})).rstrip("\n")]
    for ev, e in result["evals"].items():
        for label, base in e.get("same_cls", {}).items():
            lines += ["", f"{ev}: the {label} model's [CLS] is the {base}'s own (its [CLS] branch: the same weights, "
                          f"compared), so its features are the {base}'s, not computed again; equal by construction."]
    if result.get("baselines"):
        lines += ["", "The trivial predictors of the depth and seg evals (what a head must beat):", "",
                  baselines_markdown(result["baselines"]).rstrip("\n")]
    m = result.get("machine", {})
    lines += ["", f"Wall and CPU seconds (user + system over all threads and worker processes) on {m.get('cpus')} "
                  f"cores ({m.get('cpu_model') or 'CPU model unknown'}; frozen features in {m.get('precision', 'fp32')}), "
                  f"load average {m.get('load')} at the end:", "",
              *stage_table(result)]
    lines += ["", "| target | met |", "|---|---|"] + [f"| {k} | {'yes' if v else 'no'} |"
                                                     for k, v in result["targets"].items()]
    return "\n".join(lines)


class OriginalStats:
    """The original model's per-image results under a probe setting, kept on disk: they do not depend on
    the fine-tuning, so runs comparing recipes (sharing ``--cache-dir``) train the original's heads once."""

    def __init__(self, root: Path, cfg: GeneralizeConfig, source_key: str):
        self.root, self.source_key = root / "original_stats", source_key
        from fit3d.probe.depth import DepthSettings
        from fit3d.probe.seg import SegSettings

        self.settings = {k: getattr(cfg, k) for k in ("probe_iterations", "seeds", "probe_resolution", "max_items",
                                                      "room_views", "room_size", "gaps")}
        self.settings["seg_label_stride"] = SegSettings.label_stride  # heads trained otherwise are not reused
        self.settings["precision"] = cfg.features_precision()
        self.settings["depth_label_stride"] = DepthSettings.label_stride

    def path(self, name: str, train_names, test_names) -> Path:
        import hashlib

        blob = json.dumps({"eval": name, "settings": self.settings, "source": self.source_key, "version": 1,
                           "train": list(train_names), "test": list(test_names)}, sort_keys=True)
        return self.root / f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}.npy"

    def __call__(self, name: str, train_names, test_names, fn, *args, **kw) -> dict:
        p = self.path(name, train_names, test_names).with_suffix(".npz")
        known = dict(np.load(p)) if p.exists() else {}
        if not known and p.with_suffix(".npy").exists():  # written before the control existed
            known = {"original": np.load(p.with_suffix(".npy"))}
        st = fn(*args, known=known, **kw)
        if set(known) != {"original", CONTROL}:
            from fit3d.io import atomic_path

            p.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(p) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, original=st["original"], **{CONTROL: st[CONTROL]})
        return st


def eval_flowers(cfg: GeneralizeConfig, scfg: SummaryConfig, sources: dict, cache, orig_stats) -> tuple[dict, int]:
    """flowers_cls: k-NN and linear top-1 on the [CLS] token (``fit3d.probe.cls``) at 224 x 224, every train
    image -> every val image (``--max-items`` caps both); returns (summary entry, number of test images)."""
    from fit3d.probe.cls import read_image_folder

    tr = read_image_folder(cfg.flowers, "train", max_items=cfg.max_items)
    te = read_image_folder(cfg.flowers, "test", class_names=tr.class_names, max_items=cfg.max_items)
    return cls_eval("flowers_cls", tr, te, sources, cache, orig_stats, scfg,
                    precision=cfg.features_precision()), len(te)


def cls_eval(name: str, tr, te, sources: dict, cache, orig_stats, scfg, set_prefix: str = "",
             precision: str | None = None) -> dict:
    """An image-folder classification eval (``fit3d.probe.cls``: k-NN and linear top-1 on the [CLS] token at
    224 x 224) of image folders ``tr`` -> ``te`` with the width control; ``scfg``: ``probe_iterations``,
    ``seeds``, ``bootstrap`` (a ``SummaryConfig``). Returns the summary entry."""
    from fit3d.probe.cls import CLS_METRICS, ClsFeatures, ClsSettings, cls_stats, source_features
    from fit3d.probe.sources import resolve_source

    models: dict = {}
    load = lambda src: models.setdefault(src, resolve_source(src))  # noqa: E731
    f = {split: source_features(sources, d, 224, cache, load, set_name=set_prefix + split, precision=precision)
         for split, d in (("train", tr), ("test", te))}
    for d in f.values():
        d[CONTROL] = ClsFeatures(d["original"].cls.repeat(1, 2))
    settings = [ClsSettings(iterations=scfg.probe_iterations, seed=seed) for seed in range(scfg.seeds)]
    x = {split: {k: v.cls for k, v in d.items()} for split, d in f.items()}
    st = orig_stats(name, tr.names, te.names, cls_stats, x["train"], torch.from_numpy(tr.labels),
                    x["test"], torch.from_numpy(te.labels), len(tr.class_names), settings)
    entry = summarise("corr", st, scfg, list(CLS_METRICS))
    same = {k: v.same_as for k, v in f["test"].items() if v.same_as}
    return {**entry, "same_cls": same} if same else entry


def materialise_splits(data: dict) -> dict:
    """{name: Split} of {name: (ProbeData, need)}; need "both": the depth split with its seg labels attached."""
    from fit3d.probe.protocol import materialise

    splits = {}
    for k, (d, need) in data.items():
        s = materialise(d, "depth" if need in ("depth", "both") else "seg")
        if need == "both":
            s.labels = torch.from_numpy(np.stack([v.labels for v in s.views])).long()
        splits[k] = s
    return splits


# ----------------------------------------------------------------------------------------- main
def run(cfg: GeneralizeConfig, command: str = "") -> dict:
    from fit3d.data.readers import frame_number
    from fit3d.data.synthetic import CLASS_NAMES
    from fit3d.models import load_backbone
    from fit3d.probe.datasets import load_probe_data
    from fit3d.probe.features import FeatureCache
    from fit3d.probe.sources import FeatureSource

    if cfg.quick:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in QUICK.items()})
    check_stage2(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    work = Path(cfg.scenes_dir) if cfg.scenes_dir else out
    # a reused room set, lift or Stage 2 counts the seconds of the run that computed it (recorded beside the lifts,
    # which runs sharing --scenes-dir share; two such runs writing at once may drop each other's entries: seconds only)
    clock = Clock(record=work / "seconds.json")
    from fit3d.guard import guard_output
    from fit3d.paths import shared_dir

    guard_output(out, [shared_dir(), cfg.model_path, *cfg.extra_scenes], command="bench/generalize.py")  # before any work, locked
    res = tuple(int(x) for x in cfg.probe_resolution)

    rooms = generate_rooms(cfg, work, clock)

    with clock.stage("lift"):
        backbone = load_backbone("dinov2_small", model_path=cfg.model_path)
        lifted = lift_all(cfg, stage2_scenes(cfg, rooms), work, backbone, clock)
        del backbone

    ft_dir = out / "finetuned"
    fcfg = finetune_config(cfg)
    _say(f"fine-tune on {len(lifted)} lifted scenes, recipe {cfg.recipe} -> {ft_dir}")
    from fit3d.finetune.trainer import is_finished

    with clock.unit("finetune", f"finetune/{ft_dir.resolve()}", reused=not cfg.from_finetuned and is_finished(ft_dir)):
        manifest = stage2(cfg, lifted, ft_dir, fcfg)

    # ---- evaluation sets
    clock.start("features")
    wide = (0, 10 ** 9)
    mi = cfg.max_items
    want = set(cfg.evals)
    data = {}
    if "sun3d_depth_from_redkitchen" in want:
        data["redkitchen_train"] = (load_probe_data(cfg.redkitchen, "train", res, train_frames=(0, 398), max_items=mi),
                                    "depth")
    if want & {"sun3d_depth_from_redkitchen", "sun3d_depth_in_scene", "sun3d_corr"}:
        data["sun3d_all"] = (load_probe_data(cfg.sun3d, "test", res, test_frames=wide), "depth")
    if "camvid_seg" in want:
        data["camvid_train"] = (load_probe_data(cfg.camvid, "train", res, dataset="camvid", max_items=mi), "seg")
        data["camvid_val"] = (load_probe_data(cfg.camvid, "test", res, dataset="camvid", max_items=mi), "seg")
    for k in ("probe", "test"):
        if rooms.get(k) and want & {"rooms_seg", "rooms_depth"}:
            data[f"rooms_{k}"] = (load_probe_data(work / "rooms" / k, "train", res, dataset="scannet",
                                                  num_classes=len(CLASS_NAMES), max_items=mi), "both")
    splits = materialise_splits(data)
    n_test: dict[str, int] = {}
    sources = {"original": FeatureSource("original", "dinov2_small", cfg.model_path),
               "finetuned": FeatureSource("finetuned", "dinov2_small", cfg.model_path, str(ft_dir))}
    cache = FeatureCache(cfg.cache_dir or out / "cache")
    orig_stats = OriginalStats(Path(cfg.cache_dir or out / "cache"), cfg, sources["original"].key())
    scfg = SummaryConfig(probe_iterations=cfg.probe_iterations, seeds=cfg.seeds, bootstrap=cfg.bootstrap)
    feats = extract(sources, splits, cache, res, cfg.features_precision())

    evals: dict = {}
    baselines: dict = {}  # {depth / seg eval: the trivial predictors' metrics}
    sun = splits.get("sun3d_all")
    sun_frames = [frame_number(n) for n in sun.data.names] if sun else []
    in_a, in_b = in_scene_split(sun_frames)
    if mi:
        in_a = [in_a[i] for i in np.linspace(0, len(in_a) - 1, min(mi, len(in_a))).round().astype(int)]
        in_b = [in_b[i] for i in np.linspace(0, len(in_b) - 1, min(mi, len(in_b))).round().astype(int)]
    sub = lambda f, idx: {k: v.subset(idx) for k, v in f.items()}  # noqa: E731

    clock.start("probe_sun3d_depth")
    if "sun3d_depth_from_redkitchen" in want:
        _say("depth probes: redkitchen -> sun3d")
        st = orig_stats("sun3d_depth_from_redkitchen", splits["redkitchen_train"].data.names, sun.data.names,
                        eval_depth, feats["redkitchen_train"], splits["redkitchen_train"].depth, feats["sun3d_all"],
                        sun.depth, scfg)
        evals["sun3d_depth_from_redkitchen"] = summarise("depth", st, scfg)
        baselines["sun3d_depth_from_redkitchen"] = depth_baselines(splits["redkitchen_train"].depth, sun.depth)
    if "sun3d_depth_in_scene" in want:
        _say("depth probes: sun3d 935-984 -> 3160-3209")
        st = orig_stats("sun3d_depth_in_scene", [sun.data.names[i] for i in in_a], [sun.data.names[i] for i in in_b],
                        eval_depth, sub(feats["sun3d_all"], in_a), sun.depth[in_a],
                        sub(feats["sun3d_all"], in_b), sun.depth[in_b], scfg)
        evals["sun3d_depth_in_scene"] = summarise("depth", st, scfg)
        baselines["sun3d_depth_in_scene"] = depth_baselines(sun.depth[in_a], sun.depth[in_b])
    clock.stop()

    with clock.stage("probe_sun3d_corr"):
        if "sun3d_corr" in want:
            st, _ = eval_corr(feats["sun3d_all"], sun.views, sun_frames, cfg.gaps)
            evals["sun3d_corr"] = summarise("corr", st, scfg, corr_metric_names(cfg.gaps))

    cv_te = splits.get("camvid_val")
    with clock.stage("probe_camvid"):
        if "camvid_seg" in want:
            _say("seg probes: camvid")
            cv_tr = splits["camvid_train"]
            st = orig_stats("camvid_seg", cv_tr.data.names, cv_te.data.names, eval_seg, feats["camvid_train"],
                            cv_tr.labels, feats["camvid_val"], cv_te.labels, cv_tr.data.num_classes, scfg)
            evals["camvid_seg"] = summarise("seg", st, scfg)
            baselines["camvid_seg"] = seg_baselines(cv_tr.labels, cv_te.labels, cv_tr.data.num_classes)

    with clock.stage("probe_flowers"):
        if "flowers_cls" in want:
            _say("classification probes: flowers")
            evals["flowers_cls"], n_test["flowers_cls"] = eval_flowers(cfg, scfg, sources, cache, orig_stats)

    if "rooms_probe" in splits and "rooms_test" in splits:
        clock.start("probe_rooms")
        _say("seg + depth probes: held-out rooms")
        rp, rt = splits["rooms_probe"], splits["rooms_test"]
        if "rooms_seg" in want:
            st = orig_stats("rooms_seg", rp.data.names, rt.data.names, eval_seg, feats["rooms_probe"], rp.labels,
                            feats["rooms_test"], rt.labels, len(CLASS_NAMES), scfg)
            evals["rooms_seg"] = summarise("seg", st, scfg)
            baselines["rooms_seg"] = seg_baselines(rp.labels, rt.labels, len(CLASS_NAMES))
        if "rooms_depth" in want:
            st = orig_stats("rooms_depth", rp.data.names, rt.data.names, eval_depth, feats["rooms_probe"], rp.depth,
                            feats["rooms_test"], rt.depth, scfg)
            evals["rooms_depth"] = summarise("depth", st, scfg)
            baselines["rooms_depth"] = depth_baselines(rp.depth, rt.depth)
        clock.stop()
    seconds = clock.results(total=True)

    controls = {ev: e.pop("_control") for ev, e in evals.items() if "_control" in e}
    result = {"evals": evals, "controls": controls, "baselines": baselines, **seconds,
              "machine": {**machine(), "precision": cfg.features_precision()},
              "model_dir": str((ft_dir / "model").resolve())}
    result["claims"] = claims(evals)
    result["targets"] = targets(evals, cfg.gaps, controls)
    result["settings"] = {**dataclasses.asdict(cfg), "command": command, "finetune": dataclasses.asdict(fcfg),
                          "finetune_steps_run": manifest.get("steps"),
                          "num_train_views": manifest.get("num_train_views"),
                          "lifted_scenes": [d.name for d in lifted],
                          "n_test": {"sun3d_depth_from_redkitchen": len(sun.images) if sun else 0,
                                     "sun3d_depth_in_scene": len(in_b), "camvid_seg": len(cv_te.images) if cv_te else 0,
                                     "rooms": len(splits["rooms_test"].images) if "rooms_test" in splits else 0,
                                     **n_test},
                          "finetune_heldout": manifest.get("metrics", {}).get("heldout")}
    table = markdown(result)
    write_json(out / "generalize.json", result)
    md = "\n".join(["# bench/generalize.py", "", "```", command, "```", "", table, ""])
    write_text(out / "generalize.md", md)
    if cfg.json:
        write_json(cfg.json, result)
    if cfg.md:
        write_text(cfg.md, md)
    print(table)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, GeneralizeConfig)
    cfg = from_args(GeneralizeConfig, ap.parse_args(argv))
    from fit3d.config import check_choices

    check_choices(cfg)
    command = "python bench/generalize.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    run(cfg, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
