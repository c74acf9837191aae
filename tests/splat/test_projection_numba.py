"""The numba projection against the torch one it replaces on CPU: the same kept Gaussians, values and
gradients (float64 to round-off; float32 to float32 round-off), including Gaussians whose Jacobian is
clamped at the widened frustum, culled ones and degenerate quaternion norms."""

from __future__ import annotations

import pytest
import torch

from fit3d.splat.projection import project as project_torch
from fit3d.splat.projection_numba import project as project_numba

W, H = 64, 48


def _scene(dtype, n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([3.0, 2.5, 1.5]) + torch.tensor([0.0, 0.0, 2.5])
    quats = torch.randn(n, 4, generator=g) * torch.rand(n, 1, generator=g) * 5  # any norm
    scales = torch.rand(n, 3, generator=g) * 0.3 + 0.005
    opac = torch.rand(n, generator=g)
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.2, 0.1], [0.2, 0.0, -0.3], [-0.1, 0.3, 0.0]]))
    c2w[:3, 3] = torch.tensor([0.2, -0.1, -0.3])
    K = torch.tensor([[55.0, 0.0, 30.0], [0.0, 52.0, 25.0], [0.0, 0.0, 1.0]])
    return [t.to(dtype) for t in (means, quats, scales, opac)], torch.linalg.inv(c2w).to(dtype), K.to(dtype)


def _run(project, dtype):
    (means, quats, scales, opac), vm, K = _scene(dtype)
    leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac)]
    p = project(*leaves, vm, K, W, H)
    g = torch.Generator().manual_seed(1)
    w = [torch.randn(t.shape, generator=g, dtype=dtype) for t in (p.means2d, p.conics, p.depths, p.opacities)]
    loss = sum((t * wi).sum() for t, wi in zip((p.means2d, p.conics, p.depths, p.opacities), w))
    loss.backward()
    return p, [t.grad for t in leaves], (means, vm)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_numba_projection_matches_the_torch_projection(dtype):
    pt, gt, (means, vm) = _run(project_torch, dtype)
    pn, gn, _ = _run(project_numba, dtype)
    assert torch.equal(pn.ids, pt.ids) and torch.equal(pn.radii, pt.radii)
    assert 0 < len(pt.ids) < len(means)  # some culled, some kept
    mc = means[pt.ids] @ vm[:3, :3].T + vm[:3, 3]
    u = mc[:, 0] / mc[:, 2]
    assert bool(((u > (W - 30.0) / 55 + 0.3 * 0.5 * W / 55) | (u < -(30.0 / 55 + 0.3 * 0.5 * W / 55))).any())  # clamped J
    tol = {} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    for name in ("means2d", "conics", "depths", "opacities"):
        torch.testing.assert_close(getattr(pn, name), getattr(pt, name), **tol)
    for a, b in zip(gn, gt):  # float32: two float32 chains apart, so looser than one op's round-off
        torch.testing.assert_close(a, b, **(tol or {"rtol": 1e-4, "atol": 1e-4 * float(b.abs().max())}))


def test_numba_projection_without_grad_and_with_nothing_visible():
    (means, quats, scales, opac), vm, K = _scene(torch.float32, n=50)
    with torch.no_grad():
        p = project_numba(means, quats, scales, opac, vm, K, W, H)
        assert torch.equal(p.ids, project_torch(means, quats, scales, opac, vm, K, W, H).ids)
    behind = means.clone().requires_grad_(True)
    vm2 = vm.clone()
    vm2[2, 3] -= 100.0  # everything behind the camera
    p = project_numba(behind, quats, scales, opac, vm2, K, W, H)
    assert len(p.ids) == 0 and p.means2d.shape == (0, 2)
    (p.means2d.sum() + p.conics.sum()).backward()
    assert torch.equal(behind.grad, torch.zeros_like(behind))
