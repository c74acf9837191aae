"""Metric functions and losses against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fit3d.probe.depth import LinearDepthHead, depth_metrics, gradient_loss, sig_loss, valid_mask
from fit3d.probe.seg import confusion_matrix, majority_baseline, seg_metrics
from fit3d.probe.train import lr_factor


def test_confusion_and_miou_by_hand():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    conf = confusion_matrix(pred, gt, 3)
    # rows gt, cols pred: gt0 -> {0,1}; gt1 -> {1,1,2}; gt2 -> {2,0}; the 255 pixel is ignored
    assert_close(conf, torch.tensor([[1, 1, 0], [0, 2, 1], [1, 0, 1]]))
    m = seg_metrics(conf)
    iou = [1 / (2 + 2 - 1), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)]  # tp / (gt + pred - tp)
    acc = [1 / 2, 2 / 3, 1 / 2]
    assert m["miou"] == pytest.approx(sum(iou) / 3)
    assert m["macc"] == pytest.approx(sum(acc) / 3)
    assert m["aacc"] == pytest.approx(4 / 7)


def test_absent_class_is_skipped_in_mean():
    gt = torch.tensor([0, 0, 1])
    m = seg_metrics(confusion_matrix(gt.clone(), gt, 4))  # classes 2, 3 never appear
    assert m["miou"] == pytest.approx(1.0) and m["macc"] == pytest.approx(1.0)
    assert math.isnan(m["iou_per_class"][3])


def test_majority_baseline():
    train = torch.tensor([[1, 1, 1, 0]])
    test = torch.tensor([[1, 0, 255, 1]])
    m = majority_baseline(train, test, 2)  # predicts 1 everywhere: IoU1 = 2/3, IoU0 = 0
    assert m["miou"] == pytest.approx((2 / 3 + 0) / 2)


def test_depth_metrics_by_hand():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # last pixel invalid
    pred = torch.tensor([[[2.0, 2.0], [2.0, 7.0]]])
    m = depth_metrics(pred, gt, 1e-3, 10.0)
    p, g = torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 4.0])
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert m["abs_rel"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["sq_rel"] == pytest.approx((1 / 1 + 0 + 4 / 4) / 3)
    assert m["log10"] == pytest.approx(float((p.log10() - g.log10()).abs().mean()))
    assert m["rmse_log"] == pytest.approx(math.sqrt(2 * math.log(2) ** 2 / 3))
    assert m["delta1"] == pytest.approx(1 / 3)  # ratios 2, 1, 2
    assert m["delta3"] == pytest.approx(1 / 3)  # 1.25^3 = 1.953 < 2: the ratio-2 pixels still fail

def test_depth_metrics_average_over_images_and_clamp():
    gt = torch.tensor([[[2.0]], [[4.0]]])
    pred = torch.tensor([[[2.0]], [[20.0]]])  # clamped to max depth 10
    m = depth_metrics(pred, gt, 1e-3, 10.0)
    assert m["abs_rel"] == pytest.approx((0 + 6 / 4) / 2)


def test_eigen_and_garg_crops():
    gt = torch.ones(480, 640)
    m = valid_mask(gt, 0.1, 10, "eigen")
    assert m.sum() == (471 - 45) * (601 - 41) and m[45, 41] and not m[44, 41]
    g = valid_mask(torch.ones(375, 1242), 0.1, 80, "garg")
    assert not g[0, 600] and g[200, 600] and not g[200, 10]


def test_sig_loss_by_hand():
    pred = torch.tensor([2.0, 4.0])
    gt = torch.tensor([1.0, 1.0])
    valid = torch.ones(2, dtype=torch.bool)
    g = torch.log(pred + 1e-3) - torch.log(gt + 1e-3)
    expect = torch.sqrt(torch.var(g) + 0.15 * g.mean() ** 2)
    assert_close(sig_loss(pred, gt, valid), expect)


def test_gradient_loss_invariant_to_scale():
    gt = torch.rand(1, 1, 16, 16) * 3 + 1
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert float(gradient_loss(gt * 2.0, gt, valid, eps=0.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(gradient_loss(gt.flip(-1), gt, valid)) > 0.1


def test_depth_head_conv_then_upsample_equals_protocol_order():
    torch.manual_seed(0)
    head = LinearDepthHead(6, 4, n_bins=8, max_depth=5.0)
    patch, cls = torch.randn(2, 6, 3, 5), torch.randn(2, 4)
    x = torch.cat([patch, cls[:, :, None, None].expand(-1, -1, 3, 5)], 1)
    x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)  # DINOv2's order
    prob = torch.relu(head.conv(x)) + 0.1
    prob = prob / prob.sum(1, keepdim=True)
    ref = (prob * head.bins[None, :, None, None]).sum(1, keepdim=True)
    assert_close(head(patch, cls, (12, 20)), ref, rtol=1e-5, atol=1e-5)
    assert (ref >= 1e-3).all() and (ref <= 5.0).all()


def test_lr_schedules():
    assert lr_factor(0, 100, 10, "poly") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "poly") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "poly") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
