"""Paired bootstrap intervals over test images: is source B better than source A on the same images?

Every test image is resampled with replacement (the same draw for both sources, so the image-to-image
variation they share cancels), the metric of each source is recomputed on the resample and the
difference B - A collected; the interval is its (2.5%, 97.5%) percentiles (the percentile bootstrap).
A metric is either a mean of per-image values (depth metrics, per-pair recall) or a function of summed
per-image statistics (mIoU / mAcc from per-image confusion matrices, recall from per-pair hit counts).
Resamples are drawn as multinomial counts [n_boot, N] and applied by one matrix product.
Hand-written: scipy.stats.bootstrap resamples one statistic at a time and has no pooled-statistic form.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def resample_counts(n: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot, n] float counts: how often each of the n images is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, metric: Callable[[np.ndarray], np.ndarray] | None = None, *,
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Interval of metric(B) - metric(A) over resamples of the N test images.

    a, b: [N, ...] per-image statistics of the two sources (same images, same order).
    metric: maps the resample-summed statistics [n_boot, ...] (and, called once, the plain sums [1, ...])
        to one value per row [n_boot]; None = the mean of per-image values (a, b [N]).
    Returns {"diff": observed difference, "lo", "hi", "excludes_zero": bool, "n": N, "n_boot"}.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1 or len(a) == 0:
        raise ValueError(f"paired statistics must share a non-empty [N, ...] shape, got {a.shape} and {b.shape}")
    n = len(a)
    if metric is None:
        if a.ndim != 1:
            raise ValueError("the default metric (a mean) takes one value per image")
        metric = lambda s: s / n  # noqa: E731 - summed values / N = the mean of the resample
    w = resample_counts(n, n_boot, seed)
    flat = lambda x: x.reshape(n, -1)  # noqa: E731
    sa = (w @ flat(a)).reshape(n_boot, *a.shape[1:])
    sb = (w @ flat(b)).reshape(n_boot, *b.shape[1:])
    d = np.asarray(metric(sb), dtype=np.float64) - np.asarray(metric(sa), dtype=np.float64)
    obs = float(np.asarray(metric(b.sum(0, keepdims=True)))[0] - np.asarray(metric(a.sum(0, keepdims=True)))[0])
    d = d[np.isfinite(d)]
    q = (1 - level) / 2
    lo, hi = (float(np.quantile(d, q)), float(np.quantile(d, 1 - q))) if len(d) else (float("nan"),) * 2
    return {"diff": obs, "lo": lo, "hi": hi, "excludes_zero": bool(lo > 0 or hi < 0), "n": n, "n_boot": n_boot}


def miou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """mIoU of confusion matrices [..., C, C] (rows truth, cols prediction); classes absent from both are skipped."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    union = conf.sum(-1) + conf.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    return np.nanmean(iou, axis=-1)


def macc_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Mean per-class accuracy of confusion matrices [..., C, C]; classes without truth pixels are skipped."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    gt = conf.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(gt > 0, tp / np.where(gt > 0, gt, 1), np.nan)
    return np.nanmean(acc, axis=-1)


def ratio_metric(stats: np.ndarray) -> np.ndarray:
    """hits / total of summed [..., 2] (hits, total) pairs: pooled recall."""
    return stats[..., 0] / np.maximum(stats[..., 1], 1e-12)
