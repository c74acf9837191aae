"""The depth head's costly tail fused: x``u`` bilinear upsample of bin logits, ReLU, and the sums
``sum_k relu(l_k) * bin_k`` and ``sum_k relu(l_k)`` at every upsampled pixel, forward and backward.

Hand-written (numba) because this tail is most of a depth-probe step: done with tensor ops it writes
and re-reads a [B, 256, 4h, 4w] tensor several times per step (upsample, relu, normalise, multiply,
sum, and as many passes backward); here the upsample is separable, a row at a time (each upsampled
row's logits interpolated along y once into a [w, 256] buffer, each pixel's 256 logits then from its
2 neighbours in that row, in registers), and only two numbers per pixel are written. Weights and
corner indices are taken from ``F.interpolate``'s own interpolation matrices, so the result is
PyTorch's up to float rounding.

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
    N, _, w, K = L.shape
    for n in nb.prange(N):
        R = np.empty((w, K), L.dtype)  # one upsampled row, interpolated along y only: [w, K]
        zero = np.zeros(1, L.dtype)[0]  # typed: a float64 literal would widen the sums (half the vector lanes)
        for Y in range(i0.shape[0]):
            p0, p1, c0, c1 = L[n, i0[Y]], L[n, i1[Y]], a0[Y], a1[Y]
            for x in range(w):
                for k in range(K):
                    R[x, k] = c0 * p0[x, k] + c1 * p1[x, k]
            for X in range(j0.shape[0]):
                q0, q1, d0, d1 = R[j0[X]], R[j1[X]], b0[X], b1[X]
                sn = zero
                sd = zero
                for k in range(K):
                    r = max(d0 * q0[k] + d1 * q1[k], zero)
                    sn += r * bins[k]
                    sd += r
                num[n, Y, X] = sn
                den[n, Y, X] = sd


@nb.njit(parallel=True, cache=True, fastmath=True)
def _backward(L, i0, i1, a0, a1, j0, j1, b0, b1, bins, gnum, gden, gL):  # pragma: no cover - numba
    N, _, w, K = L.shape
    for n in nb.prange(N):  # one image per thread: the scatter-adds never race
        R = np.empty((w, K), L.dtype)
        gR = np.empty((w, K), L.dtype)  # the gradient of R, gathered along x first
        g = np.empty(K, L.dtype)
        zero = np.zeros(1, L.dtype)[0]
        gL[n] = zero  # filled here, per thread, rather than by a serial np.zeros_like of all N images
        for Y in range(i0.shape[0]):
            p0, p1, c0, c1 = L[n, i0[Y]], L[n, i1[Y]], a0[Y], a1[Y]
            for x in range(w):
                for k in range(K):
                    R[x, k] = c0 * p0[x, k] + c1 * p1[x, k]
                    gR[x, k] = zero
            for X in range(j0.shape[0]):
                q0, q1, d0, d1 = R[j0[X]], R[j1[X]], b0[X], b1[X]
                g0, g1 = gR[j0[X]], gR[j1[X]]
                gn, gd = gnum[n, Y, X], gden[n, Y, X]
                for k in range(K):  # d(num, den)/d(logit) at this pixel, then separate axpys (they vectorise)
                    l = d0 * q0[k] + d1 * q1[k]
                    g[k] = (gn * bins[k] + gd) if l > zero else zero
                for k in range(K):
                    g0[k] += d0 * g[k]
                for k in range(K):
                    g1[k] += d1 * g[k]
            o0, o1 = gL[n, i0[Y]], gL[n, i1[Y]]
            for x in range(w):
                for k in range(K):
                    o0[x, k] += c0 * gR[x, k]
                    o1[x, k] += c1 * gR[x, k]


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
        gL = np.empty_like(Ln)  # zeroed by the kernel
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
