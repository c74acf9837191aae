"""bench/view_mean_diagnosis.py: its leave-one-out ridge R^2 tells a linear signal from noise."""

import numpy as np

from bench_kit import load_bench


def test_loo_ridge_r2_is_high_for_a_linear_signal_and_not_for_noise():
    r2 = load_bench("view_mean_diagnosis").loo_ridge_r2
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 20))
    y = X @ rng.normal(size=20) + 0.05 * rng.normal(size=60)
    assert r2(X, y, 1.0) > 0.95
    assert r2(X, rng.normal(size=60), 1.0) < 0.1  # held-out predictions of noise explain nothing
