"""The numba SH colour kernel against ``FeatureGaussians.colors``'s torch path (``eval_sh``): values and
gradients to the coefficients and the means, every degree, float64 to round-off and float32 to float32's."""

from __future__ import annotations

import pytest
import torch

from fit3d.splat.gaussians import eval_sh
from fit3d.splat.sh_numba import sh_colors


def _colors(fn, degree, sh, means, cam, w):
    s, m = sh.clone().requires_grad_(True), means.clone().requires_grad_(True)
    out = fn(degree, s, m, cam)
    (out * w).sum().backward()
    return out.detach(), s.grad, torch.zeros_like(m) if m.grad is None else m.grad


def _torch(degree, sh, means, cam):
    return torch.clamp_min(eval_sh(degree, sh, torch.nn.functional.normalize(means - cam, dim=-1)) + 0.5, 0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_numba_sh_colours_match_the_torch_path(degree, dtype):
    g = torch.Generator().manual_seed(degree)
    sh = torch.randn(400, 16, 3, generator=g) * 0.4
    sh[:, 0] *= 6  # some colours clamp at 0
    sh = sh.to(dtype)
    means, cam = torch.randn(400, 3, generator=g).to(dtype), torch.randn(3, generator=g).to(dtype)
    w = torch.randn(400, 3, generator=g).to(dtype)
    want = _colors(_torch, degree, sh, means, cam, w)
    got = _colors(sh_colors, degree, sh, means, cam, w)
    assert bool((want[0] == 0).any()) and bool((want[0] > 0).any())
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 2e-6}
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


def test_numba_sh_colours_reject_a_degree_the_coefficients_lack():
    with pytest.raises(ValueError, match="coefficients"):
        sh_colors(2, torch.zeros(3, 4, 3), torch.zeros(3, 3), torch.zeros(3))
