"""bench/target_depth.py: per-token log depth, and a ridge that learns a linear depth signal (metric and per-view
aligned) where the trivial predictors do not."""

import math

import numpy as np
import torch

from bench_kit import load_bench


def test_token_log_depth_averages_valid_pixels_and_masks_mostly_invalid_cells():
    tld = load_bench("target_depth").token_log_depth
    d = np.full((28, 28), 2.0, np.float32)
    d[:14, :7] = 4.0  # left half of the top-left cell deeper
    d[14:, 14:] = 0.0  # bottom-right cell invalid
    d[:14, 14:21] = 0.0  # top-right cell half invalid: the valid half's mean, still kept
    ld, ok = tld(d, 2, 2)
    assert ld.shape == ok.shape == (2, 2)
    assert math.isclose(float(ld[0, 0]), math.log(3.0), rel_tol=1e-5)
    assert math.isclose(float(ld[0, 1]), math.log(2.0), rel_tol=1e-5)
    assert ok.tolist() == [[True, True], [True, False]]


def test_ridge_learns_metric_and_aligned_depth_the_baselines_do_not():
    tb = load_bench("target_depth")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g)

    def view(offset):  # tokens whose log depth is linear in them, each view at its own mean depth
        x = torch.randn(50, 16, generator=g) + offset
        return x, x @ w + 0.05 * torch.randn(50, generator=g)

    views = [view(0.3 * k) for k in range(8)]
    fit, test = views[0::2], views[1::2]
    metric, aligned = tb.ridge_rmse(fit, test, 0.01)
    base_metric, base_aligned = tb.baseline_rmse(fit, test)
    assert metric < 0.1 * base_metric and aligned < 0.1 * base_aligned
    noise = [(x, torch.randn(50, generator=g)) for x, _ in views]  # nothing to learn: no better than the mean
    m, _ = tb.ridge_rmse(noise[0::2], noise[1::2], 1.0)
    assert m > 0.9 * tb.baseline_rmse(noise[0::2], noise[1::2])[0]
