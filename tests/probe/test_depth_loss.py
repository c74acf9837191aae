"""The fused depth loss equals the tensor-op reference (``batched._depth_losses``), value and gradient."""

import numpy as np
import pytest
import torch

from fit3d.probe.batched import _depth_losses
from fit3d.probe.depth import valid_mask
from fit3d.probe.depth_loss import depth_losses


def problem(dtype, S=2, F=3, B=3, H=17, W=22, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(S * F, B, H, W, generator=g, dtype=dtype) * 4 + 0.2).requires_grad_()
    gt = torch.rand(S, B, H, W, generator=g, dtype=dtype) * 5
    gt[torch.rand(S, B, H, W, generator=g) < 0.25] = 0  # invalid pixels scattered
    gt[-1, :, :4] = 0  # and whole rows
    return pred, gt, valid_mask(gt, 1e-3, 4.5)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("grid", [1, 2])
def test_fused_depth_loss_matches_the_reference(dtype, tol, grid):
    pred, gt, valid = problem(dtype)
    w = torch.rand(pred.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(3))  # a gradient per head
    got = depth_losses(pred, gt, valid, 3, 0.5, grid=grid)
    (gp,) = torch.autograd.grad((got * w).sum(), pred)
    want = _depth_losses(pred, gt, valid, 3, 0.5, grid=grid)
    (wp,) = torch.autograd.grad((want * w).sum(), pred)
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    torch.testing.assert_close(gp, wp, atol=tol * float(wp.abs().max()), rtol=0)
    assert float(gp.abs().sum()) > 0


def test_heads_with_under_two_valid_pixels_have_no_sig_term():
    pred, gt, valid = problem(torch.float64, S=1, F=2)
    valid[:] = False
    valid[0, 0, 3, 5] = True  # one valid pixel: SigLoss is 0 there, as the reference's
    got = depth_losses(pred, gt, valid, 2, 0.5)
    torch.testing.assert_close(got, _depth_losses(pred, gt, valid, 2, 0.5), atol=1e-12, rtol=0)
    (gp,) = torch.autograd.grad(got.sum(), pred)
    assert np.count_nonzero(gp.numpy()) == 0


def test_shapes_are_checked():
    pred, gt, valid = problem(torch.float64)
    with pytest.raises(ValueError, match="heads per seed"):
        depth_losses(pred, gt, valid, 2, 0.5)


def test_bf16_depth_maps_are_taken_in_float32():
    """Under autocast the maps can be bf16: the loss is the float32 one of those values, its gradient in bf16."""
    pred, gt, valid = problem(torch.float32)
    p16 = pred.detach().bfloat16().requires_grad_()
    got = depth_losses(p16, gt, valid, 3, 0.5)
    (g16,) = torch.autograd.grad(got.sum(), p16)
    assert got.dtype == g16.dtype == torch.bfloat16
    want = depth_losses(p16.detach().float().requires_grad_(), gt, valid, 3, 0.5)
    torch.testing.assert_close(got.float(), want.detach(), atol=0.02, rtol=0.01)
