"""bench/seg_classes.py: per-class IoU pooled over images and averaged over head seeds; its mean is the mIoU the
probes report (fit3d.probe.stats.miou_from_confusion on the same confusions)."""

from __future__ import annotations

import numpy as np

from bench_kit import load_bench


def test_class_iou_pools_images_and_averages_seeds():
    sc = load_bench("seg_classes")
    # 2 seeds x 2 images x 3 classes (rows: truth, columns: prediction); class 2 never occurs nor is predicted
    a = np.array([[[4, 1, 0], [0, 3, 0], [0, 0, 0]], [[2, 0, 0], [2, 2, 0], [0, 0, 0]]], np.float64)
    b = np.array([[[5, 0, 0], [1, 2, 0], [0, 0, 0]], [[2, 0, 0], [0, 4, 0], [0, 0, 0]]], np.float64)
    iou = sc.class_iou(np.stack([a, b]))
    # seed a pooled: class 0 tp 6, row 7, column 8 -> 6/9; class 1 tp 5, row 7, column 6 -> 5/8
    # seed b pooled: class 0 tp 7, row 7, column 8 -> 7/8; class 1 tp 6, row 7, column 6 -> 6/7
    np.testing.assert_allclose(iou[:2], [(6 / 9 + 7 / 8) / 2, (5 / 8 + 6 / 7) / 2])
    assert np.isnan(iou[2])
