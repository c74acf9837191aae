"""``fit3d probe``: linear seg / depth probes and cross-view correspondence on frozen features.

    fit3d probe --task depth --data ../shared/data/7scenes-redkitchen --backbone dinov2_small \\
        --features original --out runs/probe-7scenes
    fit3d probe --task seg --data NYU --dataset nyuv2 --finetuned runs/ft --features original finetuned concat \\
        --out runs/probe-nyu

Several feature sources in one call are evaluated on the same data with the same seed and printed side
by side. Trained heads are kept as ``<out>/heads/<source label>.pt`` (``fit3d.probe.heads.load_depth_head``,
``fit3d compare --depth-probe``). Features are computed once per (source, image set, resolution) and cached under
``--cache-dir`` (default ``<out>/cache``); the head trains on the cache (no augmentation).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from fit3d.device import resolve_device
from fit3d.config import add_arguments as add_config_arguments, from_args
from fit3d.data.readers import frame_number
from fit3d.errors import Fit3DError
from fit3d.probe import features as feats_mod
from fit3d.probe.datasets import DATASETS, ProbeData, load_probe_data, parse_range
from fit3d.probe.features import CachedFeatures, FeatureCache, FeatureSource, extract_features


@dataclass
class ProbeConfig:
    task: str = field(default="depth", metadata={"help": "seg | depth | corr"})
    data: str = field(default="", metadata={"help": "dataset folder (train split; also test unless --eval-data)"})
    eval_data: str | None = field(default=None, metadata={"help": "separate dataset folder for the test split"})
    dataset: str = field(default="auto", metadata={"help": "layout: " + " | ".join(DATASETS)})
    backbone: str = field(default="dinov2_small", metadata={"help": "registered backbone name"})
    model_path: str | None = field(default=None, metadata={"help": "local weights of the backbone"})
    finetuned: str | None = field(default=None, metadata={"help": "fit3d fine-tuned folder (finetuned/concat)"})
    features: list[str] = field(default_factory=lambda: ["original"],
                                metadata={"help": "feature sources: original finetuned concat"})
    layers: list[int] | None = field(default=None, metadata={"help": "backbone layers (e.g. 8 9 10 11: linear4)"})
    out: str = field(default="runs/probe", metadata={"help": "output folder (probe.json, probe.md, figure)"})
    cache_dir: str | None = field(default=None, metadata={"help": "feature cache (default <out>/cache; 'none' off)"})
    resolution: list[int] = field(default_factory=lambda: [448, 336],
                                  metadata={"help": "probe resolution W H (a patch multiple; 448x336 = 32x24 /14)"})
    iterations: int = field(default=1500, metadata={"help": "head training iterations"})
    batch_size: int = field(default=8, metadata={"help": "images per iteration"})
    lr: float | None = field(default=None, metadata={"help": "AdamW lr (default seg 1e-3, depth 1e-4)"})
    warmup: int | None = field(default=None, metadata={"help": "warmup iterations (default the protocol's "
                                                               "share: seg 1500/40k, depth 12.8k/38.4k)"})
    seed: int = field(default=0, metadata={"help": "seed (head init, batch order)"})
    num_classes: int = field(default=0, metadata={"help": "seg classes (NYUv2: 13 or 40; 0 = dataset's)"})
    min_depth: float = field(default=1e-3, metadata={"help": "depth bins start"})
    max_depth: float | None = field(default=None, metadata={"help": "depth bins end (default the dataset's: "
                                                                    "10 NYU/ScanNet/7-Scenes, 20 ScanNet++, 80 KITTI)"})
    train_frames: str = field(default="0-398", metadata={"help": "frame-number range of training views (scenes)"})
    test_frames: str = field(default="400-498", metadata={"help": "frame-number range of test views (scenes)"})
    val_frames: str | None = field(default=None, metadata={
        "help": "depth: frame-number range carved out of the training views as a validation split; the head "
                "keeps its checkpoint with the best validation abs rel (the protocol's best checkpoint without "
                "looking at the test views), e.g. 320-398"})
    val_every: int = field(default=100, metadata={"help": "validate the depth head every this many iterations"})
    max_items: int = field(default=0, metadata={"help": "cap images per split (evenly spaced; 0 = all)"})
    gaps: list[int] = field(default_factory=lambda: [2, 10, 20, 40],
                            metadata={"help": "corr: frame-number gaps of the pairs"})
    rot_edges: list[float] = field(default_factory=lambda: [0.0, 10.0, 20.0, 40.0],
                                   metadata={"help": "corr: relative-rotation bin edges (degrees)"})
    depth_tol: float = field(default=0.05, metadata={"help": "corr: relative depth tolerance of the occlusion check"})
    figure: int = field(default=4, metadata={"help": "test images in the figure (0 = none)"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | auto"})
    extract_batch: int = field(default=8, metadata={"help": "images per backbone forward"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ProbeConfig)


def _sources(cfg: ProbeConfig) -> list[FeatureSource]:
    return [FeatureSource(kind=k, backbone=cfg.backbone, model_path=cfg.model_path,
                          finetuned_dir=cfg.finetuned, layers=tuple(cfg.layers) if cfg.layers else None)
            for k in cfg.features]


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


class _Models:
    """Load each source's model at most once, only when a cache misses."""

    def __init__(self, device: str):
        self.device, self.loaded = device, {}

    def get(self, src: FeatureSource):
        if src not in self.loaded:
            self.loaded[src] = feats_mod.resolve_source(src, device=self.device)
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


def _features(src, split: Split, set_name: str, res, cache: FeatureCache, models: _Models, cfg) -> CachedFeatures:
    def compute():
        model = models.get(src)
        t0 = time.perf_counter()
        p, c = extract_features(model, split.images, cfg.extract_batch, src.layers, desc=f"{src.label} {set_name}",
                                device=models.device)
        return CachedFeatures(p, c, list(split.data.names), int(getattr(model, "patch_size", 14)),
                              time.perf_counter() - t0)

    set_id = f"{split.data.meta.get('dataset')}:{split.data.meta.get('path')}:{set_name}"
    return cache.get(src, set_id, split.data.names, tuple(res), compute)


def run_probe(cfg: ProbeConfig, command: str | None = None, verbose: bool = True) -> dict:
    """Run the probe of ``cfg``; writes probe.json / probe.md / figure under ``cfg.out``; returns the json dict."""
    from pathlib import Path

    from fit3d.probe import heads as heads_mod
    from fit3d.probe import report
    from fit3d.probe.corr import evaluate_correspondence
    from fit3d.probe.depth import DepthSettings, depth_metrics, mean_depth_baseline, predict_depth, train_depth
    from fit3d.probe.seg import SegSettings, confusion_matrix, majority_baseline, predict_seg, seg_metrics, train_seg

    if cfg.task not in ("seg", "depth", "corr"):
        raise Fit3DError(f"--task must be seg, depth or corr, got {cfg.task!r}")
    if not cfg.data:
        raise Fit3DError("--data is required")
    if len(cfg.resolution) != 2:
        raise Fit3DError("--resolution takes W H")
    device = str(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    res = (int(cfg.resolution[0]), int(cfg.resolution[1]))
    sources = _sources(cfg)
    out = Path(cfg.out)
    cache = FeatureCache(None if (cfg.cache_dir or "").lower() == "none" else (cfg.cache_dir or out / "cache"))
    frames = dict(train_frames=parse_range(cfg.train_frames, (0, 398)), test_frames=parse_range(cfg.test_frames, (400, 498)))
    kw = dict(dataset=cfg.dataset, num_classes=cfg.num_classes, max_depth=cfg.max_depth, max_items=cfg.max_items, **frames)
    test = materialise(load_probe_data(cfg.eval_data or cfg.data, "test", res, **kw), cfg.task)
    train = None if cfg.task == "corr" else materialise(load_probe_data(cfg.data, "train", res, **kw), cfg.task)
    meta = test.data
    models = _Models(device)
    fit_idx = val_idx = None
    if cfg.val_frames:
        if cfg.task != "depth":
            raise Fit3DError(f"--val-frames picks depth heads' checkpoints; task {cfg.task} does not use it")
        fit_idx, val_idx = validation_split(train.data.names, parse_range(cfg.val_frames, (0, 0)))

    results: dict[str, dict] = {}
    timing: dict[str, dict] = {}
    preds: dict[str, torch.Tensor] = {}
    examples: dict[str, list] = {}
    saved_heads: dict[str, str] = {}  # source label -> <out>/heads/<label>.pt
    for src in sources:
        ft_test = _features(src, test, "test", res, cache, models, cfg)
        t = {"extract_test_s": ft_test.seconds, "test_from_cache": ft_test.from_cache}
        if cfg.task == "corr":
            frames_n = [frame_number(n) for n in test.data.names]
            r, ex = evaluate_correspondence(ft_test.patch, test.views, frames_n, ft_test.patch_size, cfg.gaps,
                                            cfg.rot_edges, depth_tol=cfg.depth_tol, keep_examples=max(cfg.figure, 1))
            for e in ex:
                e["patch"] = r["patch_px"]
            results[src.label], examples[src.label] = r, ex
            timing[src.label] = t
            continue
        ft_train = _features(src, train, "train", res, cache, models, cfg)
        t.update(extract_train_s=ft_train.seconds, train_from_cache=ft_train.from_cache)
        P, C = ft_train.patch.to(device), ft_train.cls.to(device)
        if cfg.task == "depth":
            n = cfg.iterations
            s = DepthSettings(iterations=n, batch_size=cfg.batch_size, lr=cfg.lr or 1e-4, seed=cfg.seed,
                              warmup=cfg.warmup if cfg.warmup is not None else round(n * 12800 / 38400),
                              min_depth=cfg.min_depth, max_depth=meta.max_depth)
            D = train.depth.to(device)
            val = None
            if val_idx is not None:
                val = (P[val_idx], C[val_idx], D[val_idx])
                P, C, D = P[fit_idx], C[fit_idx], D[fit_idx]
            head, log = train_depth(P, C, D, s, val=val, val_every=cfg.val_every)
            head_meta = heads_mod.depth_head_meta(head, P.shape[1], C.shape[1], s.min_depth, s.max_depth)
            pred = predict_depth(head, ft_test.patch.to(device), ft_test.cls.to(device), tuple(test.depth.shape[-2:])).cpu()
            r = depth_metrics(pred, test.depth, s.min_depth, s.max_depth, meta.crop)
        else:
            n = cfg.iterations
            s = SegSettings(iterations=n, batch_size=cfg.batch_size, lr=cfg.lr or 1e-3, seed=cfg.seed,
                            warmup=cfg.warmup if cfg.warmup is not None else round(n * 1500 / 40000),
                            ignore_index=meta.ignore_index)
            head, log = train_seg(P, train.labels.to(device), meta.num_classes, s)
            head_meta = heads_mod.seg_head_meta(head, class_names=meta.class_names, ignore_index=meta.ignore_index)
            pred = predict_seg(head, ft_test.patch.to(device), tuple(test.labels.shape[-2:])).cpu()
            r = seg_metrics(confusion_matrix(pred, test.labels, meta.num_classes, meta.ignore_index))
        preds[src.label] = pred
        head_meta.update(source=heads_mod.source_meta(src), resolution=list(res), patch_size=ft_train.patch_size,
                         dataset=meta.meta.get("dataset"), data=str(cfg.data), seed=cfg.seed, iterations=n)
        saved_heads[src.label] = str(heads_mod.save_head(heads_mod.head_path(out, src.label), head, head_meta))
        losses = log["losses"]
        k = max(1, len(losses) // 20)
        r.update(loss_first=float(np.mean(losses[:k])), loss_last=float(np.mean(losses[-k:])))
        if "best_iteration" in log:
            r.update(best_iteration=log["best_iteration"], val_abs_rel=log["best_val"])
        results[src.label] = r
        # what the same training would cost without the cache: one backbone forward per image drawn
        per_img = (ft_train.seconds / len(train.images)) if not ft_train.from_cache else None
        t.update(head_train_s=log["seconds"], extract_per_image_s=per_img)
        if per_img:
            uncached = log["seconds"] + n * min(cfg.batch_size, len(train.images)) * per_img
            cached = log["seconds"] + ft_train.seconds
            t.update(uncached_estimate_s=uncached, cached_total_s=cached, cache_speedup=uncached / cached)
        timing[src.label] = t

    if cfg.task == "depth":
        results["baseline: train mean depth"] = mean_depth_baseline(train.depth, test.depth, cfg.min_depth,
                                                                    meta.max_depth, meta.crop)
    elif cfg.task == "seg":
        results["baseline: majority class"] = majority_baseline(train.labels, test.labels, meta.num_classes,
                                                                meta.ignore_index)

    settings = asdict(cfg)
    settings.update(device=device, resolved_max_depth=meta.max_depth, crop=meta.crop,
                    n_train=len(train.images) if train else 0, n_test=len(test.images),
                    n_val=len(val_idx) if val_idx is not None else 0,
                    dataset=meta.meta.get("dataset"), num_classes=meta.num_classes,
                    sources=[{"label": s.label, **asdict(s)} for s in sources])
    table = report.write_report(out, cfg.task, results, settings, {"timing": timing, "heads": saved_heads},
                                command)
    if cfg.figure:
        _figure(out / "figure.png", cfg, test, preds, examples, meta)
    if verbose:
        print(table)
        for name, t in timing.items():
            if "cache_speedup" in t:
                print(f"{name}: features {t['extract_train_s']:.1f}s + head {t['head_train_s']:.1f}s; without the "
                      f"cache about {t['uncached_estimate_s']:.0f}s ({t['cache_speedup']:.1f}x slower)")
        print(f"wrote {out / 'probe.json'}")
    return {"metrics": results, "timing": timing, "settings": settings, "table": table, "heads": saved_heads}


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


def run(args: argparse.Namespace) -> int:
    cfg = from_args(ProbeConfig, args)
    argv = sys.argv[1:]
    command = "fit3d " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["probe"] else None
    run_probe(cfg, command=command)
    return 0
