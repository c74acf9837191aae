"""The probe protocol: the train / test / validation splits of a ``ProbeConfig`` (``fit3d.probe.config``:
every option and default of ``fit3d probe``), and ``run_probe``, which trains the heads of every feature source x seed (batched,
``fit3d.probe.batched``) on cached features and reports mean, std and per-seed metrics.

    from fit3d.probe.config import ProbeConfig
    from fit3d.probe.protocol import run_probe
    run_probe(ProbeConfig(task="depth", data="../shared/data/7scenes-redkitchen", seeds=[0, 1, 2]))

Head training settings come from the config alone: ``DepthSettings.from_config`` /
``SegSettings.from_config`` (the protocol's lr / weight decay / warmup share per task: ``HEAD_PROTOCOL`` in
``fit3d.probe.config``; ``lr`` / ``warmup`` override them only when given). ``source_features`` and
``Models`` give the cached features of a split for other reports (``fit3d.probe.summary``, benches).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fit3d.data.readers import frame_number
from fit3d.device import resolve_device, resolve_precision
from fit3d.errors import Fit3DError
from fit3d.probe import sources as sources_mod  # module attribute: tests swap resolve_source
from fit3d.probe.config import ProbeConfig, probe_settings
from fit3d.probe.datasets import ProbeData, load_probe_data, parse_range
from fit3d.probe.depth import DEPTH_METRICS, DepthSettings
from fit3d.probe.features import CachedFeatures, FeatureCache, concat_features
from fit3d.probe.report import seed_summary
from fit3d.probe.sources import FeatureSource, check_sources, source_identity
from fit3d.probe.sources import config_sources as sources
from fit3d.probe.seg import SegSettings

TRAIN_FRAMES, TEST_FRAMES = (0, 398), (400, 498)


@dataclass
class Split:
    """A materialised split: images, targets and views at the probe resolution."""

    data: ProbeData
    images: list[np.ndarray]
    views: list
    depth: torch.Tensor | None  # [N, H, W]
    labels: torch.Tensor | None  # [N, H, W] int64


def materialise(data: ProbeData, need: str) -> Split:
    views = [data.view(i) for i in range(len(data))]
    if not views:
        raise Fit3DError(f"{data.meta.get('path')}: the {data.meta.get('split')} split is empty")
    depth = labels = None
    if need in ("depth", "corr"):
        if any(v.depth is None for v in views):
            raise Fit3DError(f"{data.meta.get('path')}: task {need} needs depth for every view")
        depth = torch.from_numpy(np.stack([v.depth for v in views]))
    if need == "seg":
        if any(v.labels is None for v in views) or data.num_classes <= 0:
            raise Fit3DError(f"{data.meta.get('path')}: task seg needs labels for every view")
        labels = torch.from_numpy(np.stack([v.labels for v in views])).long()
    return Split(data, [v.image for v in views], views, depth, labels)


class Models:
    """Load each source's model at most once, only when a cache misses; ``precision``: the dtype features are
    computed in (``fit3d.device.resolve_precision``; None: the models' default), part of the cache key."""

    def __init__(self, device: str, precision: str | None = None):
        self.device, self.precision, self.loaded = device, precision, {}

    def get(self, src: FeatureSource):
        if src not in self.loaded:
            self.loaded[src] = sources_mod.resolve_source(src, device=self.device)
        return self.loaded[src]


def validation_split(names: list[str], frames: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, validation indices) of training views: validation = frame number within ``frames``."""
    lo, hi = frames
    in_val = [lo <= frame_number(n) <= hi for n in names]
    val = [i for i, v in enumerate(in_val) if v]
    fit = [i for i, v in enumerate(in_val) if not v]
    if not val or not fit:
        raise Fit3DError(f"--val-frames {lo}-{hi} leaves {len(fit)} training and {len(val)} validation views; "
                         f"both must be non-empty")
    return torch.tensor(fit), torch.tensor(val)


def source_features(src, split: Split, set_name: str, res, cache: FeatureCache, models: Models,
                    cfg: ProbeConfig) -> CachedFeatures:
    """Source ``src``'s features of ``split`` (its images at ``res`` (W, H)) through ``cache``: computed (models
    loaded) only for images the cache lacks. A concat source's features are composed from the original's and the
    fine-tuned model's cached ones (each computed once per run)."""
    if src.kind == "concat":
        o, f = (source_features(dataclasses.replace(src, kind=k), split, set_name, res, cache, models, cfg)
                for k in ("original", "finetuned"))
        return concat_features(o, f, len(src.layers) if src.layers else 1)
    return cache.features(src, split.images, split.data.names, lambda: models.get(src), batch_size=cfg.extract_batch,
                          device=models.device, desc=f"{src.label} {set_name}", precision=models.precision)


def _check(cfg: ProbeConfig) -> None:
    """The options a run needs beyond ``ProbeConfig.validate`` (data given, seeds distinct)."""
    cfg.validate()
    if not cfg.data:
        raise Fit3DError("--data is required")
    if len(set(cfg.head_seeds)) != len(cfg.head_seeds):
        raise Fit3DError(f"--seeds {' '.join(map(str, cfg.head_seeds))}: each seed once")
    if cfg.val_frames and cfg.task != "depth":
        raise Fit3DError(f"--val-frames picks depth heads' checkpoints; task {cfg.task} does not use it")
    check_sources(sources(cfg), cfg.layers)  # weights fit their names and records, layers exist: before any load


def run_probe(cfg: ProbeConfig, command: str | None = None, verbose: bool = True) -> dict:
    """Run the probe of ``cfg``; writes probe.json / probe.md / figure under ``cfg.out``; returns the json dict."""
    from fit3d.probe import report

    _check(cfg)
    if cfg.task == "cls":  # image-folder classification: its own data and heads
        raise Fit3DError("task cls runs through fit3d.probe.cls.run_cls_probe (fit3d probe --task cls)")
    device = str(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    res = (int(cfg.resolution[0]), int(cfg.resolution[1]))
    srcs = sources(cfg)
    out = Path(cfg.out)
    cache = FeatureCache(None if (cfg.cache_dir or "").lower() == "none" else (cfg.cache_dir or out / "cache"))
    frames = dict(train_frames=parse_range(cfg.train_frames, TRAIN_FRAMES),
                  test_frames=parse_range(cfg.test_frames, TEST_FRAMES))
    kw = dict(dataset=cfg.dataset, num_classes=cfg.num_classes, max_depth=cfg.max_depth, max_items=cfg.max_items,
              **frames)
    test_data = load_probe_data(cfg.eval_data or cfg.data, "test", res, **kw)
    test = materialise(test_data, cfg.task)
    train = None if cfg.task == "corr" else materialise(load_probe_data(cfg.data, "train", res, **kw), cfg.task)
    meta = test.data
    models = Models(device, resolve_precision(cfg.precision, device))

    timing: dict[str, dict] = {}
    feats_test, feats_train = {}, {}
    for src in srcs:
        feats_test[src.label] = ft = source_features(src, test, "test", res, cache, models, cfg)
        timing[src.label] = {"extract_test_s": ft.seconds, "test_from_cache": ft.from_cache}
        if train is not None:
            feats_train[src.label] = fr = source_features(src, train, "train", res, cache, models, cfg)
            timing[src.label].update(extract_train_s=fr.seconds, train_from_cache=fr.from_cache)

    if cfg.task == "corr":
        results, examples = _corr(cfg, test, test_data, feats_test, res, **kw)
        preds, saved_heads, val_n = {}, {}, 0
    else:
        results, preds, saved_heads, val_n = _heads(cfg, srcs, train, test, feats_train, feats_test, timing,
                                                    device, res, out)
        examples = {}

    settings = asdict(cfg)
    settings.update(device=device, resolved_max_depth=meta.max_depth, crop=meta.crop, head_seeds=cfg.head_seeds,
                    n_train=len(train.images) if train else 0, n_test=len(test.images), n_val=val_n,
                    dataset=meta.meta.get("dataset"), num_classes=meta.num_classes,
                    sources=[{"label": s.label, **asdict(s), "identity": source_identity(s)} for s in srcs])
    table = report.write_report(out, cfg.task, results, settings, {"timing": timing, "heads": saved_heads, "config": probe_settings(cfg)},
                                command, corr_protocol=cfg.protocol)
    if cfg.figure:
        _figure(out / "figure.png", cfg, test, preds, examples, meta)
    if verbose:
        print(table)
        for name, t in timing.items():
            if "cache_speedup" in t:
                print(f"{name}: features {t['extract_train_s']:.1f}s + heads {t['head_train_s']:.1f}s (all sources x "
                      f"seeds together); without the cache about {t['uncached_estimate_s']:.0f}s "
                      f"({t['cache_speedup']:.1f}x slower)")
        print(f"wrote {out / 'probe.json'}")
    return {"metrics": results, "timing": timing, "settings": settings, "table": table, "heads": saved_heads}


def _corr(cfg: ProbeConfig, test: Split, test_data: ProbeData, feats_test: dict, res, **kw):
    """Correspondence of every source on the test split under ``cfg.protocol``."""
    results, examples = {}, {}
    if cfg.protocol == "probe3d":
        from fit3d.probe.corr_probe3d import Probe3DSettings, draw_pairs, evaluate_probe3d, quarter_views

        views = quarter_views(cfg.eval_data or cfg.data, test_data, **kw)
        s = Probe3DSettings(num_corr=cfg.num_corr, rot_edges=tuple(cfg.rot_edges or Probe3DSettings.rot_edges),
                            pairs_per_bin=cfg.pairs_per_bin, min_overlap=cfg.min_overlap, seed=cfg.seed,
                            point_stride=cfg.corr_stride)
        pairs = draw_pairs(views, s)
        for label, ft in feats_test.items():
            results[label], examples[label] = evaluate_probe3d(ft.patch, views, pairs, s,
                                                               keep_examples=max(cfg.figure, 1))
            k = test.views[0].width / views[0].width  # figure: quarter-resolution pixels -> probe images
            for e in examples[label]:
                e["queries"], e["pred"] = e["queries"] * k, e["pred"] * k
        return results, examples
    from fit3d.probe.corr import evaluate_correspondence, scene_of

    frames_n = [frame_number(n) for n in test.data.names]
    for label, ft in feats_test.items():
        r, ex = evaluate_correspondence(ft.patch, test.views, frames_n, ft.patch_size, cfg.gaps,
                                        cfg.rot_edges or [0.0, 10.0, 20.0, 40.0], depth_tol=cfg.depth_tol,
                                        keep_examples=max(cfg.figure, 1),
                                        groups=[scene_of(n) for n in test.data.names])
        for e in ex:
            e["patch"] = r["patch_px"]
        results[label], examples[label] = r, ex
    return results, examples


def _heads(cfg, srcs, train: Split, test: Split, feats_train, feats_test, timing, device, res, out):
    """Train the depth / seg heads of every source x seed in one batched pass; metrics per source."""
    from fit3d.probe import heads as heads_mod
    from fit3d.probe.batched import train_depth_batched, train_seg_batched
    from fit3d.probe.depth import depth_metrics, mean_depth_baseline, mean_depth_image_baseline, predict_depth
    from fit3d.probe.seg import confusion_matrix, majority_baseline, majority_image_baseline, predict_seg, seg_metrics

    meta, seeds, labels = test.data, cfg.head_seeds, [s.label for s in srcs]
    P = [feats_train[k].patch.to(device) for k in labels]
    C = [feats_train[k].cls.to(device) for k in labels]
    val_n = 0
    if cfg.task == "depth":
        settings = [DepthSettings.from_config(cfg, meta.max_depth, s) for s in seeds]
        D, val = train.depth.to(device), None
        if cfg.val_frames:
            fit_idx, val_idx = validation_split(train.data.names, parse_range(cfg.val_frames, (0, 0)))
            val_n = len(val_idx)
            val = ([p[val_idx] for p in P], [c[val_idx] for c in C], D[val_idx])
            P, C, D = [p[fit_idx] for p in P], [c[fit_idx] for c in C], D[fit_idx]
        trained = train_depth_batched(P, C, D, settings, val=val, val_every=cfg.val_every)
    else:
        settings = [SegSettings.from_config(cfg, meta.ignore_index, s) for s in seeds]
        trained = train_seg_batched(P, train.labels.to(device), meta.num_classes, settings)
    keys = DEPTH_METRICS if cfg.task == "depth" else ("miou", "macc", "aacc")
    results, preds, saved = {}, {}, {}
    for f, src in enumerate(srcs):
        fr, ft = feats_train[src.label], feats_test[src.label]
        per_seed = {}
        for si, seed in enumerate(seeds):
            head, log = trained[si * len(srcs) + f]
            s = settings[si]
            if cfg.task == "depth":
                head_meta = heads_mod.depth_head_meta(head, fr.patch.shape[1], fr.cls.shape[1], s.min_depth, s.max_depth)
                pred = predict_depth(head, ft.patch.to(device), ft.cls.to(device), tuple(test.depth.shape[-2:])).cpu()
                r = depth_metrics(pred, test.depth, s.min_depth, s.max_depth, meta.crop)
            else:
                head_meta = heads_mod.seg_head_meta(head, class_names=meta.class_names, ignore_index=meta.ignore_index)
                pred = predict_seg(head, ft.patch.to(device), tuple(test.labels.shape[-2:])).cpu()
                r = seg_metrics(confusion_matrix(pred, test.labels, meta.num_classes, meta.ignore_index))
            if si == 0:
                preds[src.label] = pred
            head_meta.update(source=heads_mod.source_meta(src), resolution=list(res), patch_size=fr.patch_size,
                             dataset=meta.meta.get("dataset"), data=str(cfg.data), seed=seed, iterations=cfg.iterations)
            name = src.label if si == 0 else f"{src.label}_seed{seed}"  # the first seed's head keeps the plain name
            saved[name] = str(heads_mod.save_head(heads_mod.head_path(out, name), head, head_meta))
            losses = log["losses"]
            k = max(1, len(losses) // 20)
            r.update(loss_first=float(np.mean(losses[:k])), loss_last=float(np.mean(losses[-k:])))
            if "best_iteration" in log:
                r.update(best_iteration=log["best_iteration"], val_abs_rel=log["best_val"])
            per_seed[seed] = r
        summary = seed_summary(per_seed, (*keys, "loss_first", "loss_last", "val_abs_rel"))
        if "iou_per_class" in per_seed[seeds[0]]:
            summary["iou_per_class"] = [float(x) for x in np.mean([m["iou_per_class"] for m in per_seed.values()], 0)]
        if "best_iteration" in per_seed[seeds[0]]:
            its = [m["best_iteration"] for m in per_seed.values()]
            summary["best_iteration"] = its[0] if len(its) == 1 else its
        results[src.label] = summary
        # what the same training would cost without the cache: one backbone forward per image drawn
        n_img = len(train.images)
        per_img = (fr.seconds / n_img) if not fr.from_cache else None
        head_s = trained[0][1]["seconds"]
        t = timing[src.label]
        t.update(head_train_s=head_s, heads_in_pass=len(trained), extract_per_image_s=per_img)
        if per_img:
            uncached = head_s + len(seeds) * cfg.iterations * min(cfg.batch_size, n_img) * per_img
            cached = head_s + fr.seconds
            t.update(uncached_estimate_s=uncached, cached_total_s=cached, cache_speedup=uncached / cached)
    if cfg.task == "depth":
        args = (train.depth, test.depth, cfg.min_depth, meta.max_depth, meta.crop)
        results["baseline: train mean depth"] = mean_depth_baseline(*args)
        results["baseline: train mean depth image"] = mean_depth_image_baseline(*args)
    else:
        args = (train.labels, test.labels, meta.num_classes, meta.ignore_index)
        results["baseline: majority class"] = majority_baseline(*args)
        results["baseline: per-pixel majority class"] = majority_image_baseline(*args)
    return results, preds, saved, val_n


def _figure(path, cfg, test: Split, preds, examples, meta) -> None:
    from fit3d.probe import report

    n = min(cfg.figure, len(test.images))
    idx = np.linspace(0, len(test.images) - 1, n).round().astype(int) if n else []
    names = test.data.names
    if cfg.task == "corr":
        if not any(ex[:n] for ex in examples.values()):
            return
        fig = report.corr_figure(test.images, names, examples, n)
    elif not len(idx):
        return
    elif cfg.task == "depth":
        fig = report.depth_figure(test.images, names, test.depth, preds, idx, cfg.min_depth, meta.max_depth, meta.crop)
    else:
        fig = report.seg_figure(test.images, names, test.labels, preds, idx, meta.num_classes, meta.class_names,
                                meta.ignore_index)
    report.write_figure(path, fig)
