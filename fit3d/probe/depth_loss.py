"""The depth probe's loss fused per head: SigLoss + ``grad_weight`` x the multi-scale gradient loss, forward and
backward, for the batched trainer's [heads, batch, H, W] depth maps.

Hand-written (numba) because the tensor-op version (``batched._depth_losses``, kept as the reference and the path
on other devices) makes ~60 passes over the [12 heads, 8 images, 84, 112] maps a step, forward and backward
(log, mask, mean, variance, and per scale two shifted differences, abs, mask products and sums), a fifth of a
depth-head step; here one head is one thread's two passes forward and one backward. Same formula and the same
masked sums (the reference's value and gradient up to float rounding, ``tests/probe/test_depth_loss.py``):

    d = (log(pred + eps) - log(gt + eps)) * m,  n = sum m,  mu = sum d / n
    sig = sqrt(sum ((d - mu) m)^2 / (n - 1) + lam mu^2)                       (0 where n < 2)
    grad = sum_scales sum_pairs |d_a - d_b| m_a m_b / max(1, sum m on the scale's lattice)
    loss = sig + grad_weight * grad                                             (one per head)
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from fit3d.probe.depth import gradient_pairs
from fit3d.probe.depth_bins import _threads


@nb.njit(parallel=True, cache=True, fastmath=True)
def _forward(LP, LG, M, F, steps, offs, lam, gw, D, out, stats):  # pragma: no cover - numba
    G, N, H, W = LP.shape
    for g in nb.prange(G):
        s = g // F
        n = 0.0
        tot = 0.0
        for i in range(N):
            for y in range(H):
                for x in range(W):  # branch-free inner loops: they vectorise
                    d = (LP[g, i, y, x] - LG[s, i, y, x]) * M[s, i, y, x]
                    D[g, i, y, x] = d
                    n += M[s, i, y, x]
                    tot += d
        mu = tot / max(n, 1.0)
        v = 0.0
        for i in range(N):
            for y in range(H):
                for x in range(W):
                    r = (D[g, i, y, x] - mu) * M[s, i, y, x]
                    v += r * r
        sig = np.sqrt(v / max(n - 1.0, 1.0) + lam * mu * mu) if n >= 2 else 0.0
        grad = 0.0
        for k in range(steps.shape[0]):
            st, o = steps[k], offs[k] * steps[k]  # lattice step and pair offset in pixels
            cnt = 0.0
            acc = 0.0
            for i in range(N):
                for y in range(0, H, st):
                    for x in range(0, W, st):
                        cnt += M[s, i, y, x]
                    if y + o < H:  # pairs down
                        for x in range(0, W, st):
                            acc += abs(D[g, i, y, x] - D[g, i, y + o, x]) * M[s, i, y, x] * M[s, i, y + o, x]
                    for x in range(0, W - o, st):  # pairs right
                        acc += abs(D[g, i, y, x] - D[g, i, y, x + o]) * M[s, i, y, x] * M[s, i, y, x + o]
            grad += acc / max(cnt, 1.0)
            stats[g, 3 + k] = cnt
        out[g] = sig + gw * grad
        stats[g, 0] = n
        stats[g, 1] = mu
        stats[g, 2] = sig


@nb.njit(parallel=True, cache=True, fastmath=True)
def _backward(P, M, F, steps, offs, lam, eps, gw, D, stats, gout, gP):  # pragma: no cover - numba
    G, N, H, W = P.shape
    for g in nb.prange(G):
        s = g // F
        n, mu, sig = stats[g, 0], stats[g, 1], stats[g, 2]
        c = gout[g] / sig if (n >= 2 and sig > 0) else 0.0
        a, b = c / max(n - 1.0, 1.0), c * lam * mu / max(n, 1.0)
        for i in range(N):  # d sig / d d_i (the mean's share of the variance term sums to 0 over the masked pixels)
            for y in range(H):
                for x in range(W):
                    gP[g, i, y, x] = a * (D[g, i, y, x] - mu) * M[s, i, y, x] + b
        for k in range(steps.shape[0]):
            st, o = steps[k], offs[k] * steps[k]
            w = gout[g] * gw / max(stats[g, 3 + k], 1.0)  # the forward's valid count on the scale's lattice
            for i in range(N):  # d |d_a - d_b| m_a m_b = sign(d_a - d_b) m_a m_b (torch's sign: 0 at 0)
                for y in range(0, H, st):
                    if y + o < H:
                        for x in range(0, W, st):
                            e = np.sign(D[g, i, y, x] - D[g, i, y + o, x]) * w * M[s, i, y, x] * M[s, i, y + o, x]
                            gP[g, i, y, x] += e
                            gP[g, i, y + o, x] -= e
                    for x in range(0, W - o, st):
                        e = np.sign(D[g, i, y, x] - D[g, i, y, x + o]) * w * M[s, i, y, x] * M[s, i, y, x + o]
                        gP[g, i, y, x] += e
                        gP[g, i, y, x + o] -= e
        for i in range(N):  # d d / d pred = m / (pred + eps)
            for y in range(H):
                for x in range(W):
                    gP[g, i, y, x] *= M[s, i, y, x] / (P[g, i, y, x] + eps)


class _DepthLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, gt, valid, sources, grad_weight, lam, eps, grid, scales):
        work = torch.float64 if pred.dtype == torch.float64 else torch.float32  # bf16 (autocast) in float32
        dt = np.float64 if work == torch.float64 else np.float32
        ctx.dtype = pred.dtype
        p = pred.detach().to(work)
        P = p.contiguous().numpy()
        LP = torch.log(p + eps).contiguous().numpy()  # torch's vectorised log, here and for gt
        LG = torch.log(gt.detach().to(work) + eps).contiguous().numpy()
        M = valid.to(work).contiguous().numpy()
        pairs = [gradient_pairs(s, grid) for s in range(scales)]
        steps = np.array([p[0] for p in pairs], np.int64)
        offs = np.array([p[1] for p in pairs], np.int64)
        D = np.empty_like(P)
        out = np.empty(P.shape[0], dt)
        stats = np.empty((P.shape[0], 3 + scales), dt)  # n, mean, sig, each scale's valid count
        _threads()
        _forward(LP, LG, M, sources, steps, offs, dt(lam), dt(grad_weight), D, out, stats)
        ctx.keep = (P, M, sources, steps, offs, dt(lam), dt(eps), dt(grad_weight), D, stats)
        return torch.from_numpy(out).to(pred.dtype)

    @staticmethod
    def backward(ctx, gout):
        P, M, sources, steps, offs, lam, eps, gw, D, stats = ctx.keep
        gP = np.empty_like(P)
        _threads()
        _backward(P, M, sources, steps, offs, lam, eps, gw, D, stats, gout.detach().double().numpy().astype(P.dtype),
                  gP)
        return torch.from_numpy(gP).to(ctx.dtype), None, None, None, None, None, None, None, None


def depth_losses(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, sources: int, grad_weight: float,
                 lam: float = 0.15, eps: float = 1e-3, grid: int = 1, scales: int = 4) -> torch.Tensor:
    """pred [G, B, H, W] (head g = seed * sources + source; differentiable), gt and valid [S, B, H, W] of each
    seed's batch -> loss [G]: ``batched._depth_losses`` per head (``grid``: the maps hold every grid-th label
    pixel). CPU tensors."""
    if pred.shape[0] != gt.shape[0] * sources or pred.shape[1:] != gt.shape[1:] or gt.shape != valid.shape:
        raise ValueError(f"depth_losses: pred {tuple(pred.shape)} is not {sources} heads per seed of gt "
                         f"{tuple(gt.shape)} / valid {tuple(valid.shape)}")
    return _DepthLoss.apply(pred, gt, valid, int(sources), float(grad_weight), float(lam), float(eps), int(grid),
                            int(scales))
