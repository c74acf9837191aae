"""The depth head's costly tail fused: x``u`` bilinear upsample of bin logits, ReLU, and the sums
``sum_k relu(l_k) * bin_k`` and ``sum_k relu(l_k)`` at every upsampled pixel, forward and backward.

Hand-written (numba) because this tail is most of a depth-probe step: done with tensor ops it writes
and re-reads a [B, 256, 4h, 4w] tensor several times per step (upsample, relu, normalise, multiply,
sum, and as many passes backward); here each output pixel recomputes its 256 logits from 4 corner
cells in registers and only two numbers per pixel are written. Weights and corner indices are taken
from ``F.interpolate``'s own interpolation matrices, so the result is PyTorch's up to float rounding.

    num, den = bin_sums(logits [N, h, w, K], bins [K], u)   # [N, u*h, u*w] each
    depth = (num + 0.1 * bins.sum()) / (den + 0.1 * K)     # = LinearDepthHead's expectation
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
import torch.nn.functional as F


@nb.njit(parallel=True, cache=True, fastmath=True)
def _forward(L, i0, i1, a0, a1, j0, j1, b0, b1, bins, num, den):  # pragma: no cover - numba
    N, _, _, K = L.shape
    for n in nb.prange(N):
        for Y in range(i0.shape[0]):
            for X in range(j0.shape[0]):
                w00, w01, w10, w11 = a0[Y] * b0[X], a0[Y] * b1[X], a1[Y] * b0[X], a1[Y] * b1[X]
                p00, p01, p10, p11 = L[n, i0[Y], j0[X]], L[n, i0[Y], j1[X]], L[n, i1[Y], j0[X]], L[n, i1[Y], j1[X]]
                sn = 0.0
                sd = 0.0
                for k in range(K):
                    r = max(w00 * p00[k] + w01 * p01[k] + w10 * p10[k] + w11 * p11[k], 0.0)
                    sn += r * bins[k]
                    sd += r
                num[n, Y, X] = sn
                den[n, Y, X] = sd


@nb.njit(parallel=True, cache=True, fastmath=True)
def _backward(L, i0, i1, a0, a1, j0, j1, b0, b1, bins, gnum, gden, gL):  # pragma: no cover - numba
    N, _, _, K = L.shape
    for n in nb.prange(N):  # one image per thread: the corner scatter-adds never race
        g = np.empty(K, L.dtype)
        for Y in range(i0.shape[0]):
            for X in range(j0.shape[0]):
                w00, w01, w10, w11 = a0[Y] * b0[X], a0[Y] * b1[X], a1[Y] * b0[X], a1[Y] * b1[X]
                p00, p01, p10, p11 = L[n, i0[Y], j0[X]], L[n, i0[Y], j1[X]], L[n, i1[Y], j0[X]], L[n, i1[Y], j1[X]]
                gn, gd = gnum[n, Y, X], gden[n, Y, X]
                for k in range(K):  # d(num, den)/d(logit) at this pixel, then 4 separate axpys (vectorised)
                    l = w00 * p00[k] + w01 * p01[k] + w10 * p10[k] + w11 * p11[k]
                    g[k] = (gn * bins[k] + gd) if l > 0 else 0.0
                q = gL[n, i0[Y], j0[X]]
                for k in range(K):
                    q[k] += w00 * g[k]
                q = gL[n, i0[Y], j1[X]]
                for k in range(K):
                    q[k] += w01 * g[k]
                q = gL[n, i1[Y], j0[X]]
                for k in range(K):
                    q[k] += w10 * g[k]
                q = gL[n, i1[Y], j1[X]]
                for k in range(K):
                    q[k] += w11 * g[k]


def corners(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """(first index, second index, first weight, second weight) per output sample of a 1-D bilinear
    (align_corners=False) resize, read off ``F.interpolate`` applied to the identity."""
    m = F.interpolate(torch.eye(n_in, dtype=torch.float64)[None], size=n_out, mode="linear",
                      align_corners=False)[0].T.numpy()  # [n_out, n_in], at most 2 non-zeros per row
    i0 = np.argmax(m > 0, 1)
    i1 = n_in - 1 - np.argmax((m > 0)[:, ::-1], 1)
    w0 = m[np.arange(n_out), i0]
    w1 = np.where(i1 != i0, m[np.arange(n_out), i1], 0.0)
    return i0.astype(np.int64), i1.astype(np.int64), w0, w1


class _BinSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, L, bins, upsample):
        N, h, w, _ = L.shape
        rows, cols = corners(h, upsample * h), corners(w, upsample * w)
        dt = np.float32 if L.dtype == torch.float32 else np.float64
        rows = rows[:2] + tuple(x.astype(dt) for x in rows[2:])
        cols = cols[:2] + tuple(x.astype(dt) for x in cols[2:])
        Ln, bn = L.detach().cpu().contiguous().numpy(), bins.detach().cpu().numpy().astype(dt)
        num = np.empty((N, upsample * h, upsample * w), dt)
        den = np.empty_like(num)
        _threads()
        _forward(Ln, *rows, *cols, bn, num, den)
        ctx.save_for_backward(L, bins)
        ctx.geom = (rows, cols)
        return torch.from_numpy(num).to(L.device), torch.from_numpy(den).to(L.device)

    @staticmethod
    def backward(ctx, gnum, gden):
        L, bins = ctx.saved_tensors
        rows, cols = ctx.geom
        Ln = L.detach().cpu().contiguous().numpy()
        gL = np.zeros_like(Ln)
        _threads()
        _backward(Ln, *rows, *cols, bins.detach().cpu().numpy().astype(Ln.dtype),
                  gnum.detach().cpu().contiguous().numpy().astype(Ln.dtype),
                  gden.detach().cpu().contiguous().numpy().astype(Ln.dtype), gL)
        return torch.from_numpy(gL).to(L.device), None, None


def _threads() -> None:
    """As many numba threads as torch uses (benchmarks compare against torch code at a thread count)."""
    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))


def bin_sums(logits: torch.Tensor, bins: torch.Tensor, upsample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, h, w, K] (bins last) -> (sum_k relu(up(l))_k * bins_k, sum_k relu(up(l))_k), each
    [N, upsample*h, upsample*w]; differentiable in ``logits``. CPU tensors (other devices: the caller
    uses tensor ops)."""
    return _BinSums.apply(logits, bins, upsample)
