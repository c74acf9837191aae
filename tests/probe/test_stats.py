"""Paired bootstrap intervals: a real paired difference is found, no difference is not claimed."""

import numpy as np
import pytest

from fit3d.probe.stats import macc_from_confusion, miou_from_confusion, paired_bootstrap, ratio_metric


def test_paired_shift_is_detected_even_when_images_vary_a_lot():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.5, 60)  # image difficulty varies far more than the effect ...
    b = a - 0.05 + rng.normal(0, 0.01, 60)  # ... but the paired difference is consistent
    r = paired_bootstrap(a, b, n_boot=1000, seed=1)
    assert r["diff"] == pytest.approx(float(b.mean() - a.mean()))
    assert r["hi"] < 0 and r["excludes_zero"] and r["lo"] < r["diff"] < r["hi"]


def test_no_difference_is_not_claimed():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.5, 60)
    b = a + rng.normal(0, 0.05, 60)  # noise only
    r = paired_bootstrap(a, b, n_boot=1000, seed=1)
    assert r["lo"] < 0 < r["hi"] and not r["excludes_zero"]


def test_pooled_metrics_from_confusions_and_counts():
    conf = np.array([[[8, 2], [0, 0]], [[0, 0], [1, 9]]], dtype=float)  # two images, 2 classes
    tot = conf.sum(0)
    assert miou_from_confusion(tot) == pytest.approx((8 / 11 + 9 / 12) / 2)
    assert macc_from_confusion(tot) == pytest.approx((8 / 10 + 9 / 10) / 2)
    better = conf.copy()
    better[:, 0, 0] += better[:, 0, 1]
    better[:, 0, 1] = 0
    r = paired_bootstrap(conf, better, miou_from_confusion, n_boot=200)
    assert r["diff"] == pytest.approx(miou_from_confusion(better.sum(0)) - miou_from_confusion(tot))
    assert r["diff"] > 0
    hits = np.array([[3, 4], [1, 4], [4, 4]], dtype=float)
    assert ratio_metric(hits.sum(0)) == pytest.approx(8 / 12)


def test_shapes_must_match():
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))
