"""The batched trainer equals separate training (same seed: same initial weights, same batches)."""

import numpy as np
import pytest
import torch

from fit3d.probe import batched
from fit3d.probe.batched import interp_matrix, resize, train_depth_batched, train_seg_batched
from fit3d.probe.depth import DepthSettings, depth_metrics, predict_depth, train_depth
from fit3d.probe.seg import SegSettings, predict_seg, train_seg
from fit3d.probe.train import batch_order

SEEDS = (0, 3)


def sources(dtype, n=12, seed=0):
    """Three feature sources of two widths (6, 10, 6) with [CLS], and depth / labels at 20 x 26."""
    g = torch.Generator().manual_seed(seed)
    P = [torch.randn(n, c, 3, 4, generator=g, dtype=dtype) for c in (6, 10, 6)]
    C = [torch.randn(n, c, generator=g, dtype=dtype) for c in (6, 10, 6)]
    D = torch.rand(n, 20, 26, generator=g, dtype=dtype) * 3 + 0.5
    D[:, :2] = 0  # invalid rows
    L = torch.randint(0, 4, (n, 20, 26), generator=g)
    L[:, :3] = 255
    return P, C, D, L


@pytest.mark.parametrize("dtype,fused,tol,stride", [(torch.float64, None, 1e-10, 2), (torch.float64, False, 1e-10, 2),
                                                    (torch.float64, None, 1e-10, 1), (torch.float32, None, 1e-4, 2)])
def test_batched_depth_equals_separate(monkeypatch, dtype, fused, tol, stride):
    monkeypatch.setattr(batched._StackedDepth, "fused", fused)  # numba tail (CPU default) and tensor ops
    P, C, D, _ = sources(dtype)
    ss = [DepthSettings(iterations=25, batch_size=5, lr=1e-2, n_bins=16, max_depth=5.0, seed=s, label_stride=stride)
          for s in SEEDS]
    val = ([p[:4] for p in P], [c[:4] for c in C], D[:4])
    out = train_depth_batched(P, C, D, ss, val=val, val_every=6)
    assert len(out) == len(SEEDS) * 3
    for si, s in enumerate(ss):
        for f in range(3):
            head, log = train_depth(P[f], C[f], D, s, val=(P[f][:4], C[f][:4], D[:4]), val_every=6)
            hb, lb = out[si * 3 + f]
            torch.testing.assert_close(hb.conv.weight, head.conv.weight, atol=tol, rtol=0)
            torch.testing.assert_close(hb.conv.bias, head.conv.bias, atol=tol, rtol=0)
            np.testing.assert_allclose(lb["losses"], log["losses"], atol=tol * 10)
            assert lb["best_iteration"] == log["best_iteration"]
            assert lb["best_val"] == pytest.approx(log["best_val"], abs=tol * 10)
            r = depth_metrics(predict_depth(head, P[f], C[f], (20, 26)), D, s.min_depth, s.max_depth)["rmse"]
            rb = depth_metrics(predict_depth(hb, P[f], C[f], (20, 26)), D, s.min_depth, s.max_depth)["rmse"]
            assert rb == pytest.approx(r, abs=tol * 10)
    # different seeds really differ (init and batches)
    assert not torch.allclose(out[0][0].conv.weight, out[3][0].conv.weight)


@pytest.mark.parametrize("dtype,tol,stride", [(torch.float64, 1e-12, 1), (torch.float64, 1e-12, 3),
                                              (torch.float32, 1e-5, 4)])
def test_batched_seg_equals_separate(dtype, tol, stride):
    P, _, _, L = sources(dtype, seed=1)
    ss = [SegSettings(iterations=20, batch_size=5, lr=1e-2, seed=s, label_stride=stride) for s in SEEDS]
    out = train_seg_batched(P, L, 4, ss)
    for si, s in enumerate(ss):
        for f in range(3):
            head, log = train_seg(P[f], L, 4, s)
            hb, lb = out[si * 3 + f]
            for k, v in head.state_dict().items():  # BN running stats included
                torch.testing.assert_close(hb.state_dict()[k].to(v.dtype), v, atol=tol, rtol=0)
            np.testing.assert_allclose(lb["losses"], log["losses"], atol=tol * 10)
            same = predict_seg(hb, P[f], (20, 26)) == predict_seg(head, P[f], (20, 26))
            # float64: identical; float32: weights agree to 1e-5, so only near-tie pixels may flip
            assert bool(same.all()) if dtype == torch.float64 else float(same.float().mean()) > 0.99


PARTS = [(0,), (1,), (0, 1), (0, 0)]  # original, fine-tuned, concat, the width control


def composed(P):
    """The PARTS sources' tensors, concatenated."""
    return [torch.cat([P[b] for b in p], 1) for p in PARTS]


@pytest.mark.parametrize("fused", [None, False])
def test_batched_depth_of_composed_sources_equals_the_concatenated_tensors(monkeypatch, fused):
    """Sources given as parts of base tensors train the heads of their concatenations (never built), gathering each
    base once: the same heads, losses and validation checkpoints as the concatenated tensors (float64)."""
    monkeypatch.setattr(batched._StackedDepth, "fused", fused)
    P, C, D, _ = sources(torch.float64)
    P = P[:2]
    Cs = [C[0], C[1], C[0], C[0]]  # concat and the control read the original's [CLS]
    ss = [DepthSettings(iterations=25, batch_size=5, lr=1e-2, n_bins=16, max_depth=5.0, seed=s) for s in SEEDS]
    full, alone = composed(P), [(f,) for f in range(len(PARTS))]  # each concatenation its own tensor
    want = train_depth_batched(full, Cs, D, ss, val=([p[:4] for p in full], [c[:4] for c in Cs], D[:4]), val_every=6,
                               parts=alone)
    got = train_depth_batched(P, Cs, D, ss, val=([p[:4] for p in P], [c[:4] for c in Cs], D[:4]), val_every=6,
                              parts=PARTS)
    found = train_depth_batched(full, Cs, D, ss, val=([p[:4] for p in full], [c[:4] for c in Cs], D[:4]),
                                val_every=6)  # the concatenations found among the sources
    assert len(got) == len(want) == len(found) == len(SEEDS) * len(PARTS)
    for (hg, _), (hf, _) in zip(got, found):
        assert torch.equal(hg.conv.weight, hf.conv.weight)
    for (hg, lg), (hw, lw) in zip(got, want):
        assert hg.conv.weight.shape == hw.conv.weight.shape
        torch.testing.assert_close(hg.conv.weight, hw.conv.weight, atol=1e-10, rtol=0)
        torch.testing.assert_close(hg.conv.bias, hw.conv.bias, atol=1e-10, rtol=0)
        np.testing.assert_allclose(lg["losses"], lw["losses"], atol=1e-9)
        assert lg["best_iteration"] == lw["best_iteration"]
    # the control's two blocks stay separate parameters (different initial weights), not one summed block
    w = got[3][0].conv.weight[:, :12, 0, 0]
    assert not torch.allclose(w[:, :6], w[:, 6:])


def test_batched_seg_of_composed_sources_equals_the_concatenated_tensors():
    P, _, _, L = sources(torch.float64, seed=1)
    P = P[:2]
    ss = [SegSettings(iterations=20, batch_size=5, lr=1e-2, seed=s, label_stride=2) for s in SEEDS]
    want = train_seg_batched(composed(P), L, 4, ss, parts=[(f,) for f in range(len(PARTS))])
    got = train_seg_batched(composed(P), L, 4, ss)  # the concatenations found among the sources
    for (hg, lg), (hw, lw) in zip(got, want):
        for k, v in hw.state_dict().items():  # BN running stats included
            torch.testing.assert_close(hg.state_dict()[k].to(v.dtype), v, atol=1e-12, rtol=0)
        np.testing.assert_allclose(lg["losses"], lw["losses"], atol=1e-11)


def test_concatenations_are_found_element_for_element():
    P, _, _, _ = sources(torch.float64)
    full = composed(P[:2])
    assert batched.concatenations(full) == PARTS
    assert batched.concatenations(P) == [(0,), (1,), (2,)]  # equal widths, no concatenation
    off = [t.clone() for t in full]
    off[2][-1, -1, -1, -1] += 1e-9  # one element of one image differs: its own tensor
    assert batched.concatenations(off) == [(0,), (1,), (2,), (0, 0)]
    swapped = [full[0], full[1], torch.cat([P[1], P[0]], 1)]
    assert batched.concatenations(swapped) == [(0,), (1,), (1, 0)]


def test_parts_name_existing_bases():
    P, C, D, L = sources(torch.float64)
    ss = [SegSettings(iterations=2, batch_size=5)]
    with pytest.raises(ValueError, match="base"):
        train_seg_batched(P[:2], L, 4, ss, parts=[(0,), (2,)])
    with pytest.raises(ValueError, match="at least one"):
        train_seg_batched(P[:2], L, 4, ss, parts=[(0,), ()])
    with pytest.raises(ValueError, match="CLS"):
        train_depth_batched(P[:2], C[:2], D, [DepthSettings(iterations=2, batch_size=5)], parts=PARTS)


def test_strided_seg_loss_is_the_full_loss_at_those_pixels():
    """The strided cross entropy = the full-resolution one restricted to the pixels of the iteration's phase."""
    P, _, _, L = sources(torch.float64, seed=2)
    head = SegSettings(label_stride=3)
    heads = [batched.LinearSegHead(P[0].shape[1], 4).double()]
    stack = batched._StackedSeg(heads, batched._Layout([(0,)], [P[0].shape[1]]))
    x = batched._seed_batches([P[0]], [torch.arange(5)])
    full = stack.forward(x, (20, 26))
    for phase in ((0, 0), (2, 1)):
        part = stack.forward(x, (20, 26), head.label_stride, phase)
        torch.testing.assert_close(part, full[..., phase[0]::3, phase[1]::3], atol=1e-12, rtol=0)
    assert {batched.label_phase(3, it) for it in range(9)} == {(r, c) for r in range(3) for c in range(3)}


def test_strided_depth_is_the_full_depth_at_those_pixels():
    P, C, _, _ = sources(torch.float64, seed=4)
    heads = [batched.LinearDepthHead(P[0].shape[1], C[0].shape[1], 16, 1e-3, 5.0).double()]
    stack = batched._StackedDepth(heads, batched._Layout([(0,)], [P[0].shape[1]]))
    x, c = batched._seed_batches([P[0]], [torch.arange(5)]), [C[0][None, :5]]
    full = stack.forward(x, c, (20, 26))
    for phase in ((0, 0), (1, 1), (0, 1)):
        torch.testing.assert_close(stack.forward(x, c, (20, 26), 2, phase), full[..., phase[0]::2, phase[1]::2],
                                   atol=1e-12, rtol=0)


def test_gradient_loss_on_a_stride_2_grid_keeps_every_scales_pairs():
    """At phase (0, 0), scales >= 1 of the strided gradient loss are exactly the full-resolution ones (the same
    lattice and pairs); scale 0 is the full-resolution pairs (x, x + 2) whose first pixel is on the grid."""
    from fit3d.probe.depth import gradient_pairs, log_gradient_loss

    g = torch.Generator().manual_seed(5)
    d = torch.randn(2, 1, 24, 30, generator=g, dtype=torch.float64)
    m = (torch.rand(2, 1, 24, 30, generator=g) > 0.2).double()
    d = d * m
    full_rest = log_gradient_loss(d, m, 4) - log_gradient_loss(d, m, 1)
    sub_d, sub_m = d[..., ::2, ::2], m[..., ::2, ::2]
    sub_rest = log_gradient_loss(sub_d, sub_m, 4, grid=2) - log_gradient_loss(sub_d, sub_m, 1, grid=2)
    torch.testing.assert_close(sub_rest, full_rest, atol=1e-12, rtol=0)
    v = (d[..., 0:-2:2, ::2] - d[..., 2::2, ::2]).abs() * m[..., 0:-2:2, ::2] * m[..., 2::2, ::2]
    h = (d[..., ::2, 0:-2:2] - d[..., ::2, 2::2]).abs() * m[..., ::2, 0:-2:2] * m[..., ::2, 2::2]
    torch.testing.assert_close(log_gradient_loss(sub_d, sub_m, 1, grid=2), (v.sum() + h.sum()) / sub_m.sum(),
                               atol=1e-12, rtol=0)
    assert [gradient_pairs(s, 1) for s in range(4)] == [(1, 2), (2, 2), (4, 2), (6, 2)]  # the depth toolbox's
    with pytest.raises(ValueError, match="grid"):
        gradient_pairs(0, 4)
    with pytest.raises(ValueError, match="grid"):  # at construction, not mid-training
        DepthSettings(label_stride=3)


def test_interp_matrices_are_pytorchs_bilinear():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    for size in ((12, 16), (20, 26), (7, 9)):
        ref = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        got = resize(x, interp_matrix(3, size[0], x.dtype), interp_matrix(4, size[1], x.dtype).T)
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_batch_order_is_a_permutation_per_epoch():
    idx = list(batch_order(10, 4, 6, seed=5))
    assert [len(i) for i in idx] == [4, 4, 4, 4, 4, 4]
    assert sorted(torch.cat(idx[:2]).tolist() + []) == sorted(set(torch.cat(idx[:2]).tolist()))  # no repeat in epoch
    assert [i.tolist() for i in idx] == [i.tolist() for i in batch_order(10, 4, 6, seed=5)]
