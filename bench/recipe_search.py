"""Stage 2 lever search on VALIDATION data: ``bench/generalize.py``'s lifting and fine-tuning, probed on data its
test evals never use, so a recipe is chosen without looking at the test numbers.

    python bench/recipe_search.py --out runs/search/default --recipe default
    python bench/recipe_search.py --out runs/search/residual --recipe default --set target_mode='"residual"'
    python bench/recipe_search.py --compare runs/search/*/search.json      # one table of all levers

Lifting and fine-tuning as ``bench/generalize.py`` (the same options; reduced defaults here: 6 generated rooms
of 16 views + RedKitchen 0-398 + icl-livingroom1, 48 views per lifted scene, 100 Stage 2 steps). Validation
evals (none of them touches a test split of ``bench/generalize.py``):

- ``val_rooms_seg`` / ``val_rooms_depth``: heads on 2 generated rooms of seeds 30000.., tested on 2 rooms of
  seeds 40000.. (the test evals use 10000.. / 20000.., the lift 0..);
- ``val_rooms_corr``: correspondence recall@1 on those 2 test rooms, frame gaps 1 and 2 (22.5 / 45 degrees of orbit);
- ``val_camvid_seg``: CamVid *train* split: sequences 0001TP + 0016E5 -> sequence 0006R0 (the test eval is
  train -> val, whose frames are all 0016E5);
- ``val_flowers_cls``: flowers *train* split: every 4th photo of each class held out (k-NN and linear top-1);
- ``val_redkitchen_depth``: RedKitchen frames 0-199 -> 200-398 (Stage 2 saw these frames; the test eval
  trains on them and tests on sun3d);
- ``val_cross_depth``: a metric depth head on RedKitchen frames 0-199 tested on every frame of another scene
  (``--cross-scene``, icl-livingroom1) that Stage 2 never saw: the structure of the test eval
  ``sun3d_depth_from_redkitchen`` (head on a Stage 2 scene, tested on an unseen one) on validation data. Needs
  the cross scene unlifted (``--icl ''``); not in the default evals, so earlier runs stay comparable.

Writes ``OUT/search.json`` (``bench/generalize.py``'s schema) and ``OUT/search.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalize as G  # noqa: E402

from fit3d.config import add_arguments, check_choices, from_args  # noqa: E402
from fit3d.io import write_json, write_text  # noqa: E402
from fit3d.probe.summary import (baselines_markdown, claims, depth_baselines, eval_depth, eval_seg,  # noqa: E402
                                 seg_baselines, summarise, summary_markdown)

VAL_EVALS = ("val_rooms_seg", "val_rooms_depth", "val_rooms_corr", "val_camvid_seg", "val_flowers_cls",
             "val_redkitchen_depth", "val_cross_depth")
DEFAULT_EVALS = VAL_EVALS[:-1]
HEADLINE = {"val_rooms_seg": "miou", "val_rooms_depth": "rmse", "val_rooms_corr": "recall1",
            "val_camvid_seg": "miou", "val_flowers_cls": "knn_top1", "val_redkitchen_depth": "rmse",
            "val_cross_depth": "rmse"}


@dataclass
class SearchConfig(G.GeneralizeConfig):
    rooms: int = field(default=6, metadata={"help": "generated rooms lifted and fine-tuned on"})
    room_views: int = field(default=16, metadata={"help": "views per generated room"})
    lift_max_views: int = field(default=48, metadata={"help": "cap views per lifted scene (evenly spaced; 0 = all)"})
    epochs: int = field(default=0, metadata={"help": "Stage 2 passes (0: the recipe's own; --finetune-steps 0 uses them)"})
    finetune_steps: int | None = field(default=100, metadata={"help": "Stage 2 steps"})
    probe_iterations: int = field(default=200, metadata={"help": "head iterations (depth, seg, cls linear)"})
    seeds: int = field(default=2, metadata={"help": "probe seeds per head"})
    max_items: int = field(default=48, metadata={"help": "cap images per probe split of rooms / CamVid / RedKitchen"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples"})
    val_rooms: int = field(default=2, metadata={"help": "validation rooms per side (probe / test)"})
    flowers_train: int = field(default=200, metadata={"help": "flowers photos the cls heads train on (of the 3/4)"})
    flowers_test: int = field(default=100, metadata={"help": "flowers photos they are tested on (of the 1/4)"})
    val_gaps: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "val rooms correspondence gaps"})
    cross_scene: str = field(default=str(G.shared_dir() / "data" / "icl-livingroom1"), metadata={
        "help": "val_cross_depth's test scene (every frame); must not be lifted"})
    evals: list[str] = field(default_factory=lambda: list(DEFAULT_EVALS), metadata={
        "choices": VAL_EVALS, "help": "the validation evaluations to run"})
    compare: list[str] = field(default_factory=list, metadata={
        "help": "instead of a run: print one table of these search.json files (finetuned - original per lever)"})


def _sub(data, keep):
    return data.subset([i for i, k in enumerate(keep) if k])


def _even(idx: list[int], n: int) -> list[int]:
    return idx if not n or len(idx) <= n else [idx[i] for i in np.linspace(0, len(idx) - 1, n).round().astype(int)]


def val_data(cfg: SearchConfig, work: Path, res) -> dict:
    """{split name: (ProbeData, need)} of the validation sets that ``cfg.evals`` needs."""
    from fit3d.data.synthetic import CLASS_NAMES, SyntheticSceneConfig, generate_scenes
    from fit3d.probe.datasets import load_probe_data

    want, mi, data = set(cfg.evals), cfg.max_items, {}
    if want & {"val_rooms_seg", "val_rooms_depth", "val_rooms_corr"}:
        base = SyntheticSceneConfig(num_views=cfg.room_views, width=cfg.room_size[0], height=cfg.room_size[1])
        for k, seed in (("probe", 30000), ("test", 40000)):
            paths = generate_scenes(work / "rooms" / f"val-{k}", cfg.val_rooms, dataclasses.replace(base, seed=seed),
                                    progress=False)
            data[f"vrooms_{k}"] = (load_probe_data(work / "rooms" / f"val-{k}", "train", res, dataset="scannet",
                                                   num_classes=len(CLASS_NAMES)), "both")
            data[f"vrooms_{k}"][0].meta["scenes"] = [p.name for p in paths]
    if "val_camvid_seg" in want:
        cv = load_probe_data(cfg.camvid, "train", res, dataset="camvid")
        held = [n.startswith("0006R0") for n in cv.names]
        data["vcamvid_train"] = (_sub(cv, [not h for h in held]), "seg")
        data["vcamvid_test"] = (_sub(cv, held), "seg")
        for k in ("vcamvid_train", "vcamvid_test"):
            d = data[k][0]
            data[k] = (d.subset(_even(list(range(len(d))), mi)), "seg")
    if want & {"val_redkitchen_depth", "val_cross_depth"}:
        for k, frames in (("vrk_train", (0, 199)), ("vrk_test", (200, 398))):
            data[k] = (load_probe_data(cfg.redkitchen, "train", res, train_frames=frames, max_items=mi), "depth")
    if "val_cross_depth" in want:
        data["vcross_test"] = (load_probe_data(cfg.cross_scene, "test", res, test_frames=(0, 10 ** 9), max_items=mi),
                               "depth")
    return data


def flowers_split(cfg: SearchConfig):
    """(train, test) ImageFolders of the flowers *train* split: every 4th photo of each class -> test."""
    from fit3d.probe.cls import read_image_folder

    tr = read_image_folder(cfg.flowers, "train")
    pos = np.zeros(len(tr), dtype=int)
    for c in range(len(tr.class_names)):
        idx = np.flatnonzero(tr.labels == c)
        pos[idx] = np.arange(len(idx))
    test_idx = np.flatnonzero(pos % 4 == 3).tolist()
    train_idx = np.flatnonzero(pos % 4 != 3).tolist()
    return tr.subset(_even(train_idx, cfg.flowers_train)), tr.subset(_even(test_idx, cfg.flowers_test))


def run(cfg: SearchConfig, command: str = "") -> dict:
    from fit3d.data.readers import frame_number
    from fit3d.models import load_backbone
    from fit3d.probe.features import FeatureCache
    from fit3d.probe.sources import FeatureSource

    G.check_stage2(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_all = time.perf_counter()
    out = Path(cfg.out)
    work = Path(cfg.scenes_dir) if cfg.scenes_dir else out
    res = tuple(int(x) for x in cfg.probe_resolution)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    rooms = G.generate_rooms(dataclasses.replace(cfg, probe_rooms=0, test_rooms=0), work)
    backbone = load_backbone("dinov2_small", model_path=cfg.model_path)
    scenes = G.stage2_scenes(cfg, rooms)
    if "val_cross_depth" in cfg.evals and any(p.resolve() == Path(cfg.cross_scene).resolve() for _, p, _ in scenes):
        raise SystemExit("val_cross_depth tests on a scene Stage 2 never saw: pass --icl '' or another --cross-scene")
    lifted = G.lift_all(cfg, scenes, work, backbone)
    del backbone
    seconds["lift"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ft_dir = out / "finetuned"
    fcfg = G.finetune_config(cfg)
    G._say(f"fine-tune on {len(lifted)} lifted scenes, recipe {cfg.recipe} {' '.join(cfg.set)} -> {ft_dir}")
    manifest = G.stage2(cfg, lifted, ft_dir, fcfg)
    seconds["finetune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    data = val_data(cfg, work, res)
    splits = G.materialise_splits(data)
    sources = {"original": FeatureSource("original", "dinov2_small", cfg.model_path),
               "finetuned": FeatureSource("finetuned", "dinov2_small", cfg.model_path, str(ft_dir))}
    cache_root = Path(cfg.cache_dir or out / "cache")
    cache = FeatureCache(cache_root)
    orig_stats = G.OriginalStats(cache_root, cfg, sources["original"].key())
    feats = G.extract(sources, splits, cache, res, cfg.features_precision())
    seconds["features"] = time.perf_counter() - t0

    evals: dict = {}
    baselines: dict = {}  # {depth / seg eval: the trivial predictors' metrics}
    want = set(cfg.evals)
    t0 = time.perf_counter()
    if "vrooms_probe" in splits:
        rp, rt = splits["vrooms_probe"], splits["vrooms_test"]
        if "val_rooms_seg" in want:
            st = orig_stats("val_rooms_seg", rp.data.names, rt.data.names, eval_seg, feats["vrooms_probe"], rp.labels,
                            feats["vrooms_test"], rt.labels, rp.data.num_classes, cfg)
            evals["val_rooms_seg"] = summarise("seg", st, cfg)
            baselines["val_rooms_seg"] = seg_baselines(rp.labels, rt.labels, rp.data.num_classes)
        if "val_rooms_depth" in want:
            st = orig_stats("val_rooms_depth", rp.data.names, rt.data.names, eval_depth, feats["vrooms_probe"],
                            rp.depth, feats["vrooms_test"], rt.depth, cfg)
            evals["val_rooms_depth"] = summarise("depth", st, cfg)
            baselines["val_rooms_depth"] = depth_baselines(rp.depth, rt.depth)
        if "val_rooms_corr" in want:  # pairs within each test room (frame gaps), pooled over rooms
            per_room: dict = {}
            for room in rt.data.meta["scenes"]:
                idx = [i for i, n in enumerate(rt.data.names) if n.startswith(room + "/")]
                sub = {k: v.subset(idx) for k, v in feats["vrooms_test"].items()}
                st, _ = G.eval_corr(sub, [rt.views[i] for i in idx], [frame_number(rt.data.names[i]) for i in idx],
                                    cfg.val_gaps)
                for k, v in st.items():
                    per_room.setdefault(k, []).append(v)
            st = {k: np.concatenate(v, axis=1) for k, v in per_room.items()}
            evals["val_rooms_corr"] = summarise("corr", st, cfg, G.corr_metric_names(cfg.val_gaps))
    seconds["probe_rooms"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "val_camvid_seg" in want:
        a, b = splits["vcamvid_train"], splits["vcamvid_test"]
        st = orig_stats("val_camvid_seg", a.data.names, b.data.names, eval_seg, feats["vcamvid_train"], a.labels,
                        feats["vcamvid_test"], b.labels, a.data.num_classes, cfg)
        evals["val_camvid_seg"] = summarise("seg", st, cfg)
        baselines["val_camvid_seg"] = seg_baselines(a.labels, b.labels, a.data.num_classes)
    if "val_redkitchen_depth" in want:
        a, b = splits["vrk_train"], splits["vrk_test"]
        st = orig_stats("val_redkitchen_depth", a.data.names, b.data.names, eval_depth, feats["vrk_train"], a.depth,
                        feats["vrk_test"], b.depth, cfg)
        evals["val_redkitchen_depth"] = summarise("depth", st, cfg)
        baselines["val_redkitchen_depth"] = depth_baselines(a.depth, b.depth)
    if "val_cross_depth" in want:
        a, b = splits["vrk_train"], splits["vcross_test"]
        st = orig_stats("val_cross_depth", a.data.names, b.data.names, eval_depth, feats["vrk_train"], a.depth,
                        feats["vcross_test"], b.depth, cfg)
        evals["val_cross_depth"] = summarise("depth", st, cfg)
        baselines["val_cross_depth"] = depth_baselines(a.depth, b.depth)
    seconds["probe_camvid_redkitchen"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "val_flowers_cls" in want:
        tr, te = flowers_split(cfg)
        evals["val_flowers_cls"] = G.cls_eval("val_flowers_cls", tr, te, sources, cache, orig_stats, cfg, "val-",
                                              precision=cfg.features_precision())
    seconds["probe_flowers"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_all

    controls = {ev: e.pop("_control") for ev, e in evals.items() if "_control" in e}
    result = {"evals": evals, "controls": controls, "baselines": baselines, "seconds": {k: round(v, 1) for k, v in seconds.items()},
              "claims": claims(evals), "model_dir": str((ft_dir / "model").resolve()),
              "settings": {**dataclasses.asdict(cfg), "command": command, "finetune": dataclasses.asdict(fcfg),
                           "finetune_steps_run": manifest.get("steps"),
                           "finetune_heldout": manifest.get("metrics", {}).get("heldout"),
                           "trainable_parameters": manifest.get("trainable_parameters")}}
    table = summary_markdown(evals, controls)
    if baselines:
        table += "\nThe trivial predictors of the depth and seg evals (what a head must beat):\n\n" + baselines_markdown(baselines)
    table += "\n| stage | seconds |\n|---|---|\n" + "".join(f"| {k} | {v:.0f} |\n" for k, v in result["seconds"].items())
    write_json(out / "search.json", result)
    write_text(out / "search.md", "\n".join(["# bench/recipe_search.py", "", "```", command, "```", "", table]))
    print(table)
    return result


LEVER_FIELDS = ("freeze_blocks", "adapter", "lr", "anchor_weight", "anchor_at", "anchor_teacher", "target_mode",
                "anchor_cls", "interpolate", "target_mean",
                "freeze_last_blocks")


def lever_name(r: dict) -> str:
    """The run's Stage 2 settings that differ from FiT3D's (``FinetuneConfig()``), its lift and its steps (recipe
    names are not used: a preset's content can change between runs)."""
    from fit3d.finetune import FinetuneConfig

    s, ft, base = r["settings"], r["settings"]["finetune"], FinetuneConfig()
    diff = [f"{k}={ft[k]}" for k in LEVER_FIELDS if k in ft and ft[k] != getattr(base, k)
            and not (k in ("anchor_at", "anchor_teacher") and not ft.get("anchor_weight"))]
    lift = f"lift {s.get('lift_method')}" + (f" f={s.get('lift_feature_dim') or 'D'}" if s.get("lift_feature_dim", 64)
                                            != 64 else "") + (f" {s['lift_feature_size']} px" if s.get("lift_feature_size") else "")
    scenes = "".join([", icl not lifted" if not s.get("icl") else "",
                      ", redkitchen not lifted" if s.get("lift_redkitchen") is False else "",
                      "".join(f", + {Path(p).name}" for p in s.get("extra_scenes") or [])])
    return f"{' '.join(diff) or 'fit3d'}, {lift}{scenes}, {s.get('finetune_steps_run')} steps"


def compare_table(paths: list[str]) -> str:
    """One row per run: the fine-tuned model's headline validation metrics, each as finetuned - original with
    its 95% interval (**gain** / *loss* where it excludes 0), and the target fit (held-out cosine distance)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    evs = [e for e in VAL_EVALS if any(e in r["evals"] for r in runs)]
    head = ["lever"] + [f"{e} {HEADLINE[e]}" for e in evs] + ["held-out cos dist to targets"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    orig = {e: next(r for r in runs if e in r["evals"])["evals"][e]["original"][HEADLINE[e]]["mean"] for e in evs}
    lines.append("| original | " + " | ".join(f"{orig[e]:.4f}" for e in evs) + " | - |")
    for p, r in zip(paths, runs):
        cells = []
        for e in evs:
            if e not in r["evals"]:
                cells.append("-")
                continue
            m = HEADLINE[e]
            lo, hi = r["evals"][e]["ci"]["finetuned-original"][m]
            d = r["evals"][e]["finetuned"][m]["mean"] - r["evals"][e]["original"][m]["mean"]
            mark = {"gain": " **gain**", "loss": " *loss*", "n.s.": ""}[r["claims"][e]["finetuned-original"][m]]
            cells.append(f"{d:+.4f} [{lo:+.3f}, {hi:+.3f}]{mark}")
        held = (r["settings"].get("finetune_heldout") or {}).get("finetuned", {}).get("cosine_distance")
        cells.append(f"{held:.3f}" if held is not None else "-")
        lines.append(f"| {lever_name(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, SearchConfig)
    cfg = from_args(SearchConfig, ap.parse_args(argv))
    check_choices(cfg)
    if cfg.compare:
        print(compare_table(cfg.compare))
        return 0
    command = "python bench/recipe_search.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    run(cfg, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
