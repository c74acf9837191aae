"""Cross-scene probe summaries: per-image statistics of every feature source x head seed, reduced to the
mean ± std over seeds and paired bootstrap 95% intervals over test images (``fit3d.probe.stats``).

Shared by ``bench/generalize.py`` and ``fit3d demo``. Sources are ``original`` / ``finetuned`` /
``concat`` (``fit3d.probe.sources.KINDS``) plus the width control ``original_x2`` (the original's
tokens twice: a head on concat reads twice the channels, and at a few hundred head iterations that alone
changes the numbers, so concat is also compared with a head of the same width on no new information).

Per-image statistics (the ``stats`` dicts, {source: array}):

- depth: [seeds, N, len(DEPTH_METRICS)] metric and median-scaled metrics per image (``depth_per_image``);
- seg: [seeds, N, C, C] per-image confusion matrices;
- corr: [1, P, 2k] per-pair (hits, n) columns.

The functions read a ``SummaryConfig`` (head iterations and seeds where no settings are given, bootstrap
resamples); heads' settings derive from ``ProbeConfig`` (``DepthSettings.from_config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fit3d.probe.config import ProbeConfig
from fit3d.probe.sources import KINDS as SOURCES

# Control: the original's tokens twice. A head on concat reads twice the channels, and at a few hundred
# head iterations that alone changes the numbers (duplicated channels double the head's effective step
# size); concat is also compared with this head of the same width.
CONTROL = "original_x2"
DEPTH_METRICS = ("rmse", "abs_rel", "delta1", "rmse_aligned", "abs_rel_aligned", "delta1_aligned")
SEG_METRICS = ("miou", "macc")
LOWER_IS_BETTER = {"rmse", "abs_rel", "rmse_aligned", "abs_rel_aligned"}


@dataclass(frozen=True)
class SummaryConfig:
    """What the summaries read: heads trained (when no settings are given) for ``probe_iterations`` with seeds
    0 .. ``seeds`` - 1, the rest of their settings the probe protocol's (``ProbeConfig``); ``bootstrap``
    resamples of the paired intervals."""

    probe_iterations: int = 1000
    seeds: int = 3
    bootstrap: int = 2000


@dataclass
class Feats:
    patch: torch.Tensor  # [N, D, h, w]
    cls: torch.Tensor  # [N, Dc]

    def subset(self, idx) -> "Feats":
        return Feats(self.patch[idx], self.cls[idx])


def depth_per_image(pred: torch.Tensor, gt: torch.Tensor, min_d: float, max_d: float) -> np.ndarray:
    """[N, len(DEPTH_METRICS)] metric and median-scaled metrics per image (NaN rows: no valid pixel)."""
    from fit3d.probe.depth import depth_metrics_image, valid_mask

    rows = []
    pred = pred.clamp(min_d, max_d)
    for i in range(len(gt)):
        v = valid_mask(gt[i], min_d, max_d)
        m = depth_metrics_image(pred[i], gt[i], v)
        if m is None:
            rows.append([np.nan] * len(DEPTH_METRICS))
            continue
        s = gt[i][v].median() / pred[i][v].median().clamp_min(1e-6)
        ma = depth_metrics_image((pred[i] * s).clamp(min_d, max_d), gt[i], v)
        rows.append([m["rmse"], m["abs_rel"], m["delta1"], ma["rmse"], ma["abs_rel"], ma["delta1"]])
    return np.asarray(rows, dtype=np.float64)


def depth_baselines(train_depth: torch.Tensor, test_depth: torch.Tensor, max_depth: float = 10.0,
                    min_depth: float = ProbeConfig.min_depth) -> dict:
    """The trivial predictors of a depth eval, in the heads' metrics (``depth_per_image`` averaged over the test
    images, the valid range of ``eval_depth``'s heads): {"train mean depth": one value everywhere (the training
    images' mean valid depth), "train mean depth image": each pixel's mean valid depth over the training images
    (a position prior; the mean depth where no training image has one)} -> {metric: value}. train_depth
    [N, H, W], test_depth [M, H, W] metres."""
    from fit3d.probe.depth import mean_depth_image

    mean, image = mean_depth_image(train_depth, min_depth, max_depth)
    preds = {"train mean depth": torch.full_like(test_depth, mean), "train mean depth image": image.expand_as(test_depth)}
    return {k: dict(zip(DEPTH_METRICS, np.nanmean(depth_per_image(p, test_depth, min_depth, max_depth), axis=0)
                        .tolist())) for k, p in preds.items()}


def seg_baselines(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int, ignore: int = 255) -> dict:
    """The trivial predictors of a seg eval, in the heads' metrics (confusion summed over the test images):
    {"train majority class": the training labels' most frequent class everywhere, "train per-pixel majority class":
    each pixel's most frequent class over the training images (a position prior: sky above, road below; the
    majority class where no training image has a label)} -> {"miou", "macc"}. Labels [N, H, W] / [M, H, W] long."""
    from fit3d.probe.seg import confusion_matrix, majority_image
    from fit3d.probe.stats import macc_from_confusion, miou_from_confusion

    majority, image = majority_image(train_labels, num_classes, ignore)
    preds = {"train majority class": torch.full_like(image, majority), "train per-pixel majority class": image}  # [H, W]
    out = {}
    for k, p in preds.items():
        conf = confusion_matrix(p.expand_as(test_labels), test_labels, num_classes, ignore).numpy().astype(np.float64)
        out[k] = {"miou": float(miou_from_confusion(conf)), "macc": float(macc_from_confusion(conf))}
    return out


def _todo(known: dict | None, sources: list[str] | None = None) -> tuple[dict, list[str]]:
    """(results so far, the sources still to train): heads of ``known`` sources are not retrained. ``sources``:
    the feature sets to train on (default: original, finetuned, concat and the width control)."""
    out = dict(known or {})
    return out, [src for src in (sources or SOURCES + (CONTROL,)) if src not in out]


def _per_seed(heads: list, todo: list[str], n_seeds: int, evaluate) -> dict:
    """{source: np.stack over seeds of ``evaluate(source, head)``} from a batched trainer's seed-major
    [(head, log)] list (index = seed_index * len(todo) + source_index)."""
    return {src: np.stack([evaluate(src, heads[si * len(todo) + k][0]) for si in range(n_seeds)])
            for k, src in enumerate(todo)}


def eval_depth(train_f: dict, train_depth, test_f: dict, test_depth, cfg: SummaryConfig | None,
               max_depth: float = 10.0, known: dict | None = None, settings: list | None = None) -> dict:
    """{source: [seeds, N, M] per-image depth metrics}; sources in ``known`` are taken from it, not retrained.
    The heads of every source x seed train in one batched pass (``fit3d.probe.batched``; equal to
    training them one by one). ``settings``: one ``DepthSettings`` per seed (default: ``cfg.seeds`` seeds
    0.. of ``cfg.probe_iterations`` iterations, the rest the protocol's; ``cfg`` is then unused)."""
    from fit3d.probe.batched import train_depth_batched
    from fit3d.probe.depth import DepthSettings, predict_depth

    out, todo = _todo(known)
    if not todo:
        return out
    if settings is None:
        protocol = ProbeConfig(iterations=cfg.probe_iterations)
        settings = [DepthSettings.from_config(protocol, max_depth, seed) for seed in range(cfg.seeds)]
    heads = train_depth_batched([train_f[s].patch for s in todo], [train_f[s].cls for s in todo], train_depth,
                                settings)
    s = settings[0]  # the seeds' settings differ only in the seed
    out.update(_per_seed(heads, todo, len(settings), lambda src, head: depth_per_image(
        predict_depth(head, test_f[src].patch, test_f[src].cls, tuple(test_depth.shape[-2:])), test_depth,
        s.min_depth, s.max_depth)))
    return out


def eval_seg(train_f: dict, train_labels, test_f: dict, test_labels, num_classes: int, cfg: SummaryConfig | None,
             ignore: int = 255, known: dict | None = None, settings: list | None = None,
             sources: list[str] | None = None) -> dict:
    """{source: [seeds, N, C, C] per-image confusion matrices}; sources in ``known`` are taken from it.
    Heads of every source x seed train in one batched pass. ``settings``: one ``SegSettings`` per seed
    (default as ``eval_depth``'s). ``sources``: the keys of ``train_f`` / ``test_f`` to train on (default: the
    benches' four, original / finetuned / concat / width control)."""
    from fit3d.probe.batched import train_seg_batched
    from fit3d.probe.seg import SegSettings, confusion_matrix, predict_seg

    out, todo = _todo(known, sources)
    if not todo:
        return out
    if settings is None:
        protocol = ProbeConfig(iterations=cfg.probe_iterations)
        settings = [SegSettings.from_config(protocol, ignore, seed) for seed in range(cfg.seeds)]
    heads = train_seg_batched([train_f[s].patch for s in todo], train_labels, num_classes, settings)
    def confusions(src, head):
        pred = predict_seg(head, test_f[src].patch, tuple(test_labels.shape[-2:]))
        return np.stack([confusion_matrix(pred[i], test_labels[i], num_classes, ignore).numpy()
                         for i in range(len(pred))]).astype(np.float64)

    out.update(_per_seed(heads, todo, len(settings), confusions))
    return out




def summarise(kind: str, stats: dict, cfg: SummaryConfig, names: list[str] | None = None) -> dict:
    """One eval's entry of the JSON: {source: {metric: {mean, std}}, "ci": {...}} from per-image stats."""
    from fit3d.probe.stats import macc_from_confusion, miou_from_confusion, paired_bootstrap, ratio_metric

    entry: dict = {}
    if kind == "depth":
        names = list(DEPTH_METRICS)
        keep = ~np.isnan(stats["original"]).any(axis=(0, 2))  # images with valid pixels (same GT for all sources)
        stats = {k: v[:, keep] for k, v in stats.items()}
        value = lambda x, j: np.nanmean(x[..., j], axis=-1)  # noqa: E731 - [seeds] per-seed means
        pooled = {k: v.mean(0) for k, v in stats.items()}  # [N, M] averaged over seeds
        metric_fn = {j: None for j in range(len(names))}
        pick = lambda x, j: x[:, j]  # noqa: E731
    elif kind == "seg":
        names = list(SEG_METRICS)
        fns = [miou_from_confusion, macc_from_confusion]
        value = lambda x, j: fns[j](x.sum(1))  # noqa: E731
        pooled = {k: v.sum(0) for k, v in stats.items()}  # [N, C, C]
        metric_fn = {j: fns[j] for j in range(len(names))}
        pick = lambda x, j: x  # noqa: E731
    else:  # corr: columns (hits, n) per metric
        value = lambda x, j: ratio_metric(x.sum(1)[..., 2 * j:2 * j + 2])  # noqa: E731
        pooled = {k: v.sum(0) for k, v in stats.items()}
        metric_fn = {j: ratio_metric for j in range(len(names))}
        pick = lambda x, j: x[:, 2 * j:2 * j + 2]  # noqa: E731
    for src in SOURCES:
        entry[src] = {}
        for j, m in enumerate(names):
            v = np.asarray(value(stats[src], j), dtype=np.float64)
            entry[src][m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    def ci(base, other):
        return {m: [(r := paired_bootstrap(pick(pooled[base], j), pick(pooled[other], j), metric_fn[j],
                                           n_boot=cfg.bootstrap, seed=0))["lo"], r["hi"]]
                for j, m in enumerate(names)}

    entry["ci"] = {f"{other}-original": ci("original", other) for other in ("concat", "finetuned")}
    if CONTROL in stats:  # kept apart from the schema: control[EVAL] = {CONTROL: ..., "ci": ...}
        ctl = {m: {"mean": float((v := np.asarray(value(stats[CONTROL], j), dtype=np.float64)).mean()),
                   "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0} for j, m in enumerate(names)}
        entry["_control"] = {CONTROL: ctl, "ci": {f"concat-{CONTROL}": ci(CONTROL, "concat")}}
    return entry


def claims(evals: dict) -> dict:
    """{eval: {"concat-original"|"finetuned-original": {metric: "gain" | "loss" | "n.s."}}} from the intervals."""
    out = {}
    for ev, e in evals.items():
        out[ev] = {}
        for key, cis in e["ci"].items():
            out[ev][key] = {}
            for m, (lo, hi) in cis.items():
                better = (hi < 0) if m in LOWER_IS_BETTER else (lo > 0)
                worse = (lo > 0) if m in LOWER_IS_BETTER else (hi < 0)
                out[ev][key][m] = "gain" if better else ("loss" if worse else "n.s.")
    return out


def probe_stats(cfg: ProbeConfig, control: bool = True, splits: dict | None = None) -> dict:
    """Per-image statistics {source: array} of a finished ``run_probe(cfg)`` of task seg or depth with the
    sources original / finetuned / concat: each seed's saved head (``<out>/heads``) applied to the cached
    test features (the numbers of its probe.json, per image). With ``control``, the heads of ``CONTROL``
    are trained as ``run_probe`` trained the others (same settings and seeds, one batched pass) and
    added. A head file whose seed or iterations differ from ``cfg``'s is a ``Fit3DError`` (stale run). ``splits``:
    a dict keeping the splits read (:func:`_probe_split`), for :func:`probe_baselines` of the same run."""
    from fit3d.device import resolve_precision
    from fit3d.errors import Fit3DError
    from fit3d.probe import heads as heads_mod
    from fit3d.probe.depth import DepthSettings, predict_depth
    from fit3d.probe.features import FeatureCache
    from fit3d.probe.protocol import Models, source_features, sources
    from fit3d.probe.seg import SegSettings, confusion_matrix, predict_seg

    if cfg.task not in ("depth", "seg"):
        raise Fit3DError(f"per-image probe statistics: task {cfg.task} has no heads (depth or seg)")
    if control and cfg.val_frames:
        raise Fit3DError("the width control trains last-checkpoint heads; the probe used --val-frames")
    srcs = {s.label: s for s in sources(cfg)}
    if set(srcs) != set(SOURCES):
        raise Fit3DError(f"per-image probe statistics need the sources {', '.join(SOURCES)}, got {', '.join(srcs)}")
    res = (int(cfg.resolution[0]), int(cfg.resolution[1]))
    test = _probe_split(cfg, "test", splits)
    meta = test.data
    if cfg.task == "depth" and meta.crop:
        raise Fit3DError(f"{meta.meta.get('path')}: per-image depth statistics take no evaluation crop ({meta.crop})")
    cache = FeatureCache(None if (cfg.cache_dir or "").lower() == "none" else (cfg.cache_dir or Path(cfg.out) / "cache"))
    models = Models("cpu", resolve_precision(cfg.precision, "cpu"))  # the features the probe's heads were trained on
    feats = {k: source_features(s, test, "test", res, cache, models, cfg) for k, s in srcs.items()}
    test_f = {k: Feats(f.patch, f.cls) for k, f in feats.items()}
    seeds = cfg.head_seeds
    if cfg.task == "depth":
        settings = [DepthSettings.from_config(cfg, meta.max_depth, s) for s in seeds]
        size = tuple(test.depth.shape[-2:])
        evaluate = lambda src, head: depth_per_image(  # noqa: E731
            predict_depth(head, test_f[src].patch, test_f[src].cls, size), test.depth, cfg.min_depth, meta.max_depth)
    else:
        settings = [SegSettings.from_config(cfg, meta.ignore_index, s) for s in seeds]
        size = tuple(test.labels.shape[-2:])

        def evaluate(src, head):
            pred = predict_seg(head, test_f[src].patch, size)
            return np.stack([confusion_matrix(pred[i], test.labels[i], meta.num_classes, meta.ignore_index).numpy()
                             for i in range(len(pred))]).astype(np.float64)

    stats = {}
    for src in SOURCES:
        per = []
        for si, seed in enumerate(seeds):
            path = heads_mod.head_path(cfg.out, src if si == 0 else f"{src}_seed{seed}")  # run_probe's names
            if not path.is_file():
                raise Fit3DError(f"{path}: no saved head (run the probe of {cfg.out} first)")
            head, hm = heads_mod.load_head(path)
            if hm.get("seed") != seed or hm.get("iterations") != cfg.iterations:
                raise Fit3DError(f"{path}: head of seed {hm.get('seed')} / {hm.get('iterations')} iterations, expected "
                                 f"seed {seed} / {cfg.iterations} (a stale probe run)")
            per.append(evaluate(src, head))
        stats[src] = np.stack(per)
    if not control:
        return stats
    train = _probe_split(cfg, "train", splits)
    o = source_features(srcs["original"], train, "train", res, cache, models, cfg)
    train_f = {CONTROL: Feats(torch.cat([o.patch, o.patch], 1), o.cls)}
    test_f[CONTROL] = Feats(torch.cat([test_f["original"].patch] * 2, 1), test_f["original"].cls)
    if cfg.task == "depth":
        return eval_depth(train_f, train.depth, test_f, test.depth, None, known=stats, settings=settings)
    return eval_seg(train_f, train.labels, test_f, test.labels, meta.num_classes, None, ignore=meta.ignore_index,
                    known=stats, settings=settings)


def _probe_split(cfg: ProbeConfig, split: str, read: dict | None = None):
    """The materialised ``split`` ("train" / "test") of a probe run's data as ``run_probe`` reads it; ``read``: the
    splits of ``cfg`` read so far ({split: data}, filled here), so that one is read once."""
    from fit3d.probe.datasets import load_probe_data, parse_range
    from fit3d.probe.protocol import TEST_FRAMES, TRAIN_FRAMES, materialise

    if read is not None and split in read:
        return read[split]
    kw = dict(dataset=cfg.dataset, num_classes=cfg.num_classes, max_depth=cfg.max_depth, max_items=cfg.max_items,
              train_frames=parse_range(cfg.train_frames, TRAIN_FRAMES),
              test_frames=parse_range(cfg.test_frames, TEST_FRAMES))
    res = (int(cfg.resolution[0]), int(cfg.resolution[1]))
    data = materialise(load_probe_data((cfg.eval_data or cfg.data) if split == "test" else cfg.data, split, res, **kw),
                       cfg.task)
    if read is not None:
        read[split] = data
    return data


def probe_baselines(cfg: ProbeConfig, splits: dict | None = None) -> dict:
    """The trivial predictors of a depth or seg probe run's data (its train and test splits): ``depth_baselines``
    (its depth range) or ``seg_baselines`` (its classes). ``splits``: those :func:`probe_stats` read already."""
    train, test = _probe_split(cfg, "train", splits), _probe_split(cfg, "test", splits)
    if cfg.task == "depth":
        return depth_baselines(train.depth, test.depth, test.data.max_depth, cfg.min_depth)
    return seg_baselines(train.labels, test.labels, test.data.num_classes, test.data.ignore_index)


def summary_markdown(evals: dict, controls: dict | None = None) -> str:
    """Table of ``summarise`` entries {eval: entry}: mean ± std over seeds per source, the difference to the
    original with its 95% interval (**gain** / *loss* only where the interval excludes 0), and the width
    control with concat - control where ``controls`` ({eval: entry["_control"]}) has it."""
    cl = claims(evals)
    controls = controls or {}
    lines = ["| eval | metric | original | finetuned | concat | finetuned - original (95% CI) | "
             "concat - original (95% CI) | control: original x2 | concat - original x2 (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ev, e in evals.items():
        for m in e["original"]:
            cells = [f"{e[s][m]['mean']:.4f} ± {e[s][m]['std']:.4f}" for s in SOURCES]
            for key in ("finetuned-original", "concat-original"):
                lo, hi = e["ci"][key][m]
                d = e[key.split("-")[0]][m]["mean"] - e["original"][m]["mean"]
                mark = {"gain": " **gain**", "loss": " *loss*", "n.s.": ""}[cl[ev][key][m]]
                cells.append(f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}")
            if ev in controls:
                c = controls[ev][CONTROL][m]
                lo, hi = controls[ev]["ci"][f"concat-{CONTROL}"][m]
                cells += [f"{c['mean']:.4f} ± {c['std']:.4f}", f"{e['concat'][m]['mean'] - c['mean']:+.4f} "
                          f"[{lo:+.4f}, {hi:+.4f}]"]
            else:
                cells += ["-", "-"]
            lines.append(f"| {ev} | {m} {'↓' if m in LOWER_IS_BETTER else '↑'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def baselines_markdown(baselines: dict) -> str:
    """Tables of {eval: ``depth_baselines`` or ``seg_baselines``}: what a head must beat on each eval (the trivial
    predictors, in the heads' metrics); one table per set of metrics (depth, seg)."""
    groups: dict[tuple, list] = {}
    for ev, b in baselines.items():
        groups.setdefault(tuple(next(iter(b.values()))), []).append((ev, b))
    tables = []
    for metrics, evs in groups.items():
        lines = ["| eval | trivial predictor | " + " | ".join(f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}"
                                                             for m in metrics) + " |",
                 "|---|---|" + "---|" * len(metrics)]
        lines += [f"| {ev} | {k} | " + " | ".join(f"{v[m]:.4f}" for m in metrics) + " |"
                  for ev, b in evs for k, v in b.items()]
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)
