"""On a small synthetic case the probes learn: loss falls and the metric beats the trivial baseline."""

import numpy as np
import pytest
import torch

from fit3d.probe.depth import DepthSettings, depth_metrics, mean_depth_baseline, predict_depth, train_depth
from fit3d.probe.features import extract_features
from fit3d.probe.seg import SegSettings, confusion_matrix, majority_baseline, predict_seg, seg_metrics, train_seg
from probe_testkit import PoolBackbone


def scenes(n, seed, H=32, W=32):
    """Images whose colour encodes depth (3 levels) and class (= depth level) in random boxes."""
    rng = np.random.default_rng(seed)
    imgs, depths, labels = [], [], []
    for _ in range(n):
        lab = np.zeros((H, W), np.int64)
        for c in (1, 2):
            y, x = rng.integers(0, H - 12, 2)
            lab[y:y + rng.integers(8, 16), x:x + rng.integers(8, 16)] = c
        depth = np.array([4.0, 2.5, 1.2], np.float32)[lab]
        colours = np.array([[0.2, 0.3, 0.8], [0.8, 0.6, 0.2], [0.9, 0.1, 0.1]], np.float32)
        img = np.clip(colours[lab] + rng.normal(0, 0.03, (H, W, 3)), 0, 1).astype(np.float32)
        imgs.append(img)
        depths.append(depth)
        labels.append(lab)
    return imgs, torch.from_numpy(np.stack(depths)), torch.from_numpy(np.stack(labels))


def depth_sets(other_seed: int):
    """(patch, cls, depth) of 24 training images and of 8 others (test or validation)."""
    bb = PoolBackbone()
    sets = []
    for n, seed in ((24, 0), (8, other_seed)):
        imgs, depth, _ = scenes(n, seed)
        sets.append((*extract_features(bb, imgs), depth))
    return sets


def test_depth_probe_learns():
    (P, C, tr_d), (Pt, Ct, te_d) = depth_sets(1)
    s = DepthSettings(iterations=100, batch_size=8, lr=3e-3, warmup=10, max_depth=5.0, n_bins=64)
    head, log = train_depth(P, C, tr_d, s)
    assert np.mean(log["losses"][-10:]) < 0.7 * np.mean(log["losses"][:10])
    m = depth_metrics(predict_depth(head, Pt, Ct, (32, 32)), te_d, s.min_depth, s.max_depth)
    base = mean_depth_baseline(tr_d, te_d, s.min_depth, s.max_depth)
    assert m["abs_rel"] < 0.7 * base["abs_rel"] and m["rmse"] < base["rmse"]
    assert m["delta1"] > base["delta1"]


def test_seg_probe_learns():
    bb = PoolBackbone()
    tr_i, _, tr_l = scenes(24, 2)
    te_i, _, te_l = scenes(8, 3)
    tr_l[:, :2] = 255  # some ignored pixels
    P, _ = extract_features(bb, tr_i)
    Pt, _ = extract_features(bb, te_i)
    head, log = train_seg(P, tr_l, 3, SegSettings(iterations=100, warmup=5, lr=5e-3))
    assert np.mean(log["losses"][-10:]) < 0.6 * np.mean(log["losses"][:10])
    m = seg_metrics(confusion_matrix(predict_seg(head, Pt, (32, 32)), te_l, 3))
    base = majority_baseline(tr_l, te_l, 3)
    assert m["miou"] > base["miou"] + 0.3 and m["macc"] > base["macc"] + 0.3


def test_depth_probe_keeps_the_best_validation_checkpoint():
    (P, C, tr_d), (Pv, Cv, va_d) = depth_sets(2)
    s = DepthSettings(iterations=60, batch_size=8, lr=3e-3, warmup=5, max_depth=5.0, n_bins=64)
    head, log = train_depth(P, C, tr_d, s, val=(Pv, Cv, va_d), val_every=7)
    its = [it for it, _ in log["val"]]
    assert its == list(range(7, 60, 7)) + [60]
    best_it, best = min(log["val"], key=lambda t: t[1])
    assert log["best_iteration"] == best_it and log["best_val"] == best
    # the returned head is that checkpoint: it reproduces the best validation score, not the last one
    again = depth_metrics(predict_depth(head, Pv, Cv, (32, 32)), va_d, s.min_depth, s.max_depth)["abs_rel"]
    assert again == pytest.approx(best, rel=1e-6)
    assert best <= log["val"][-1][1] and best < log["val"][0][1]  # it learned before it was chosen
