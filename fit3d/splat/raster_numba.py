"""CPU compositing with numba: one thread per tile.

The same contract and tile lists as :mod:`fit3d.splat.raster_torch` (which it replaces on CPU
when numba imports; the lists themselves come from a counting sort here, :func:`build_tile_lists`).
Hand-written because a loop evaluates a Gaussian only where it can reach a pixel that has not
saturated and touches channel data only for Gaussians that contribute, whereas the vectorised torch
path computes every (pixel, list entry) pair of a block in several passes over memory; on 2 cores
this is 4-8x faster (``bench/rasterize.py --backend torch`` vs ``numba``). The forward is
Gaussian-major (each Gaussian of a tile's depth-sorted list visits its box's unsaturated pixels: every
pixel still sees the same Gaussians in the same order); the backward and the compositing weights loop
per pixel over the Gaussians whose ellipse reaches that tile row. Kernels are compiled per dtype and
compute in it (float32 like gsplat; float64 for the reference tests). :func:`composite_rows` is the
forward alone, for renders that need no gradient (it reads each Gaussian's channels in place).

Backward: per pixel, front to back again (recomputing alpha and transmittance); the colour behind
a Gaussian is ``final . g - prefix``, as in the torch path. The image gradient reaches the geometry
only through the dot products ``final . g`` and ``colour . g``; summing them over the leading
``n_geo`` channels only gives the gradients of those channels rendered through live geometry and
the rest through detached geometry, in one pass (``rasterize(..., geometry_channels=)``).
Gradients are written to one slot per (tile, Gaussian) intersection, so threads never share a
slot, and summed per Gaussian in torch.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch
from torch import Tensor

from fit3d.splat.raster_torch import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, TileLists

_SIGMA_MAX = 40.0  # beyond this alpha < 1/255 for any opacity; avoids denormal exp
_FASTMATH = {"contract", "reassoc"}  # lets the channel dot products vectorise


@nb.njit(cache=True)
def _row_list(packed, start, cnt, fy, rows):
    """Entries k of a tile list whose ellipse {sigma <= threshold} reaches row centre fy -> count."""
    n = 0
    for k in range(cnt):
        j = start + k
        if abs(packed[j, 1] - fy) <= packed[j, 8]:
            rows[n] = k
            n += 1
    return n


@nb.njit(cache=True, inline="always")
def _span(centre, extent, lo, hi):
    """Pixels [a, b) of [lo, hi) whose centre (p + 0.5) may lie within ``extent`` of ``centre``: a superset (one pixel
    of slack each side) that the exact test inside the loops trims; empty for a non-finite extent or centre."""
    a, b = centre - extent - 1.0, centre + extent + 1.0
    if not (a < hi and b > lo):  # also False for NaN
        return lo, lo
    return max(lo, int(math.floor(a))), min(hi, int(math.ceil(b)))


@nb.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward_kernel(offsets, counts, gids, packed, colors, rows, extra, tiles_x, width, height, out, Tfin, last,
                    consts, centres):
    """Gaussian-major: per tile, each Gaussian of the depth-sorted list visits only the pixels of its box (the
    extents in ``packed``) and updates their running transmittance and sums. Every pixel sees the same
    Gaussians in the same order with the same tests as a per-pixel front-to-back loop (the backward's), so
    ``out`` / ``Tfin`` / ``last`` (the list position where the pixel saturated, else the list length) are
    that loop's; a pixel loop would test every Gaussian of its row, most of which miss it. ``packed``: per
    Gaussian (:func:`_pack_gaussians`), rows ``gids``. Gaussian g's channels: ``colors[rows[g]]`` then ``extra[g]``
    (out [H, W, C + E])."""
    C, E = colors.shape[1], extra.shape[1]
    HALF, ONE, AMAX, AMIN, TMIN, ZERO = consts[0], consts[1], consts[2], consts[3], consts[4], consts[5]
    for t in nb.prange(offsets.shape[0]):
        start, cnt = offsets[t], counts[t]
        x0, y0 = (t % tiles_x) * TILE, (t // tiles_x) * TILE
        x1, y1 = min(x0 + TILE, width), min(y0 + TILE, height)
        # unsaturated pixels of each row lie in [lo, hi) (saturated ones move the ends inward): the boxes of the
        # Gaussians behind a saturated surface cost nothing
        lo, hi = np.full(TILE, x0, np.int64), np.full(TILE, x1, np.int64)
        for py in range(y0, y1):
            for px in range(x0, x1):
                last[py, px] = cnt
        alive = (x1 - x0) * (y1 - y0)
        for k in range(cnt):
            if alive == 0:
                break
            g = gids[start + k]
            mx, my, ex, ey = packed[g, 0], packed[g, 1], packed[g, 7], packed[g, 8]
            ya, yb = _span(my, ey, y0, y1)
            xa, xb = _span(mx, ex, x0, x1)
            if ya >= yb or xa >= xb:
                continue
            ca, cb, cc, op, thr = packed[g, 2], packed[g, 3], packed[g, 4], packed[g, 5], packed[g, 6]
            for py in range(ya, yb):
                r = py - y0
                xs, xe = max(xa, lo[r]), min(xb, hi[r])
                if xs >= xe:
                    continue
                dy = my - centres[py]
                if abs(dy) > ey:
                    continue
                qy, by = HALF * cc * dy * dy, cb * dy  # sigma's terms of this row
                for px in range(xs, xe):
                    if last[py, px] != cnt:  # saturated at an earlier Gaussian
                        continue
                    dx = mx - centres[px]  # |dx| <= ex +- a pixel: beyond ex the sigma test rejects it (margins)
                    sig = HALF * ca * dx * dx + qy + by * dx
                    if sig < ZERO or sig > thr:
                        continue
                    raw = op * math.exp(-sig)
                    alpha = raw if raw < AMAX else AMAX
                    if alpha < AMIN:
                        continue
                    T = Tfin[py, px]
                    nT = T * (ONE - alpha)
                    if nT <= TMIN:
                        last[py, px] = k
                        alive -= 1
                        while lo[r] < hi[r] and last[py, lo[r]] != cnt:
                            lo[r] += 1
                        while hi[r] > lo[r] and last[py, hi[r] - 1] != cnt:
                            hi[r] -= 1
                        continue
                    w = alpha * T
                    cg = rows[g]
                    for c in range(C):
                        out[py, px, c] += w * colors[cg, c]
                    for e in range(E):
                        out[py, px, C + e] += w * extra[g, e]
                    Tfin[py, px] = nT


@nb.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward_kernel(offsets, counts, gids, packed, colors, tiles_x, width, height, out, Tfin, last, g_img, gA,
                     v_m, v_con, v_op, v_col, consts, centres, n_geo):
    C = colors.shape[1]
    HALF, ONE, AMAX, AMIN, ZERO = consts[0], consts[1], consts[2], consts[3], consts[5]
    for t in nb.prange(offsets.shape[0]):
        start, cnt = offsets[t], counts[t]
        x0, y0 = (t % tiles_x) * TILE, (t // tiles_x) * TILE
        rows = np.empty(cnt, dtype=np.int64)
        for py in range(y0, min(y0 + TILE, height)):
            fy = centres[py]
            n_row = _row_list(packed, start, cnt, fy, rows)
            for px in range(x0, min(x0 + TILE, width)):
                k_end = last[py, px]
                if k_end == 0:
                    continue
                fx = centres[px]
                total = ZERO
                for c in range(n_geo):  # geometry sees only the leading n_geo channels
                    total += out[py, px, c] * g_img[py, px, c]
                tail = gA[py, px] * Tfin[py, px]
                T = ONE
                prefix = ZERO
                for r in range(n_row):
                    k = rows[r]
                    if k >= k_end:
                        break
                    j = start + k
                    dx = packed[j, 0] - fx
                    if abs(dx) > packed[j, 7]:
                        continue
                    dy = packed[j, 1] - fy
                    ca, cb, cc = packed[j, 2], packed[j, 3], packed[j, 4]
                    sig = HALF * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sig < ZERO or sig > packed[j, 6]:
                        continue
                    g = gids[j]
                    G = math.exp(-sig)
                    raw = packed[j, 5] * G
                    alpha = raw if raw < AMAX else AMAX
                    if alpha < AMIN:
                        continue
                    dot = ZERO
                    for c in range(n_geo):
                        dot += colors[g, c] * g_img[py, px, c]
                    w = alpha * T
                    prefix += w * dot
                    v_alpha = T * dot + (tail - (total - prefix)) / (ONE - alpha)
                    for c in range(C):
                        v_col[j, c] += w * g_img[py, px, c]
                    if raw <= AMAX:
                        v_op[j] += v_alpha * G
                        vs = -v_alpha * raw
                        v_m[j, 0] += vs * (ca * dx + cb * dy)
                        v_m[j, 1] += vs * (cb * dx + cc * dy)
                        v_con[j, 0] += HALF * vs * dx * dx
                        v_con[j, 1] += vs * dx * dy
                        v_con[j, 2] += HALF * vs * dy * dy
                    T *= ONE - alpha


@nb.njit(cache=True)
def _bin_kernel(m, r, order, tiles_x, tiles_y, offsets, counts, gids):
    """Counting sort of the (tile, Gaussian) intersections: ``counts`` / ``offsets`` per tile, then ``gids`` filled
    in depth order (``order``: a stable argsort of the depths). ``gids`` None: counts only."""
    n = m.shape[0]
    pos = offsets.copy()
    for o in range(n):
        i = order[o]
        mx, my, rx, ry = np.float64(m[i, 0]), np.float64(m[i, 1]), np.float64(r[i, 0]), np.float64(r[i, 1])
        # raster_torch.build_tile_lists' bounds, in float64 as there
        x0 = int(min(max(math.floor((mx - rx) / TILE), 0.0), tiles_x))
        x1 = int(min(max(math.ceil((mx + rx) / TILE), 0.0), tiles_x))
        y0 = int(min(max(math.floor((my - ry) / TILE), 0.0), tiles_y))
        y1 = int(min(max(math.ceil((my + ry) / TILE), 0.0), tiles_y))
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                t = ty * tiles_x + tx
                if gids.shape[0]:
                    gids[pos[t]] = i
                    pos[t] += 1
                else:
                    counts[t] += 1


def build_tile_lists(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int) -> TileLists:
    """:func:`fit3d.splat.raster_torch.build_tile_lists` on CPU tensors (the same lists, equal element for
    element): two counting passes instead of a sort of all intersections."""
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    counts = np.zeros(tiles_x * tiles_y, dtype=np.int64)
    offsets = np.zeros_like(counts)
    m, r = _np(means2d), np.ascontiguousarray(_np(radii), dtype=np.int64)
    if m.shape[0] == 0 or counts.shape[0] == 0:
        return TileLists(torch.zeros(0, dtype=torch.long), torch.from_numpy(offsets), torch.from_numpy(counts),
                         tiles_x, tiles_y)
    order = torch.sort(depths.detach(), stable=True).indices.numpy()
    _bin_kernel(m, r, order, tiles_x, tiles_y, offsets, counts, np.zeros(0, dtype=np.int64))
    np.cumsum(counts[:-1], out=offsets[1:])
    gids = np.empty(int(counts.sum()), dtype=np.int64)
    if gids.shape[0]:
        _bin_kernel(m, r, order, tiles_x, tiles_y, offsets, counts, gids)
    return TileLists(torch.from_numpy(gids), torch.from_numpy(offsets), torch.from_numpy(counts), tiles_x, tiles_y)


def _pack_gaussians(means2d, conics, opac) -> np.ndarray:
    """Per Gaussian [M, 9]: mean x, y, conic a, b, c, opacity, sigma threshold, x and y extent.

    alpha < 1/255 <=> sigma > log(255 opacity) =: thr, and sigma <= thr only within
    |dx| <= sqrt(2 thr cov_xx), |dy| <= sqrt(2 thr cov_yy). These cheap tests skip most exp calls
    and most pixel/Gaussian pairs; their margins leave the exact test (after exp) the one that
    decides near the boundary, so results do not change.
    """
    o, cn = opac.detach().double(), conics.detach().double()
    thr = torch.log(o * 255.0).clamp(max=_SIGMA_MAX) + 1e-3
    det = (cn[:, 0] * cn[:, 2] - cn[:, 1] ** 2).clamp_min(1e-300)
    ex = torch.sqrt(2 * thr.clamp_min(0) * cn[:, 2] / det) * 1.001 + 1e-3
    ey = torch.sqrt(2 * thr.clamp_min(0) * cn[:, 0] / det) * 1.001 + 1e-3
    per_g = torch.cat([means2d.detach().double(), cn, o[:, None], thr[:, None], ex[:, None], ey[:, None]], 1)
    return per_g.to(means2d.dtype).contiguous().numpy()


def _pack(lists: TileLists, means2d, conics, opac) -> np.ndarray:
    """Per intersection [I, 9]: :func:`_pack_gaussians`' rows in the tile lists' order (the backward's layout)."""
    return np.ascontiguousarray(_pack_gaussians(means2d, conics, opac)[_np(lists.gids)])


def _consts(dtype, width, height):
    """Constants and pixel centres typed like the data, so float32 kernels compute in float32
    (expf, packed SIMD) as gsplat does, and float64 kernels in float64."""
    consts = np.array([0.5, 1.0, ALPHA_MAX, ALPHA_MIN, T_MIN, 0.0], dtype=dtype)
    return consts, np.arange(max(width, height), dtype=dtype) + dtype.type(0.5)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _set_threads():
    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))


def _forward(lists: TileLists, means2d, conics, opac, colors, width, height, rows=None, extra=None):
    """out [H, W, C + E], T_final, last: :func:`_forward_kernel` with Gaussian g's channels ``colors[rows[g]]``
    (rows None: g) then ``extra[g]`` ([M, E] or None)."""
    M, C = means2d.shape[0], colors.shape[1]
    cols = _np(colors)
    ext = np.zeros((M, 0), dtype=cols.dtype) if extra is None else _np(extra.to(colors.dtype))
    out = np.zeros((height, width, C + ext.shape[1]), dtype=cols.dtype)
    Tfin = np.ones((height, width), dtype=out.dtype)
    last = np.zeros((height, width), dtype=np.int64)
    if lists.gids.numel():
        _set_threads()
        r = np.arange(M, dtype=np.int64) if rows is None else _np(rows)
        _forward_kernel(_np(lists.offsets), _np(lists.counts), _np(lists.gids), _pack_gaussians(means2d, conics, opac),
                        cols, r, ext, lists.tiles_x, width, height, out, Tfin, last, *_consts(out.dtype, width, height))
    return torch.from_numpy(out), torch.from_numpy(Tfin), torch.from_numpy(last)


def _backward(lists: TileLists, means2d, conics, opac, colors, out, Tfin, last, g_img, gA, n_geo):
    M, C = colors.shape
    dt = colors.dtype
    I = lists.gids.shape[0]
    v_m = torch.zeros(I, 2, dtype=dt)
    v_con = torch.zeros(I, 3, dtype=dt)
    v_op = torch.zeros(I, dtype=dt)
    v_col = torch.zeros(I, C, dtype=dt)
    if I:
        _set_threads()
        H, W = out.shape[0], out.shape[1]
        _backward_kernel(_np(lists.offsets), _np(lists.counts), _np(lists.gids), _pack(lists, means2d, conics, opac),
                         _np(colors), lists.tiles_x, W, H, _np(out), _np(Tfin), _np(last), _np(g_img.to(dt)),
                         _np(gA.to(dt)), v_m.numpy(), v_con.numpy(), v_op.numpy(), v_col.numpy(),
                         *_consts(_np(colors).dtype, W, H), n_geo)
    gids = lists.gids
    return (torch.zeros(M, 2, dtype=dt).index_add_(0, gids, v_m),
            torch.zeros(M, 3, dtype=dt).index_add_(0, gids, v_con),
            torch.zeros(M, dtype=dt).index_add_(0, gids, v_op),
            torch.zeros(M, C, dtype=dt).index_add_(0, gids, v_col))


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opac, colors, lists, width, height, n_geo):
        out, Tfin, last = _forward(lists, means2d, conics, opac, colors, width, height)
        ctx.save_for_backward(means2d, conics, opac, colors, out, Tfin, last)
        ctx.lists, ctx.n_geo = lists, n_geo
        return out, Tfin

    @staticmethod
    def backward(ctx, g_out, g_T):
        means2d, conics, opac, colors, out, Tfin, last = ctx.saved_tensors
        g_out = torch.zeros_like(out) if g_out is None else g_out
        gA = torch.zeros_like(Tfin) if g_T is None else -g_T   # alpha = 1 - T_final
        grads = _backward(ctx.lists, means2d, conics, opac, colors, out, Tfin, last, g_out, gA, ctx.n_geo)
        return (*grads, None, None, None, None)


def composite(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, lists: TileLists,
              width: int, height: int, geometry_channels: int | None = None):
    """CPU tensors only. means2d [M, 2], conics [M, 3], opacities [M], colors [M, C]
    -> image [H, W, C], alpha [H, W]. Only the leading ``geometry_channels`` channels (None: all)
    send gradients to means2d / conics / opacities; every channel gets its colour gradient."""
    dt = colors.dtype
    n_geo = colors.shape[1] if geometry_channels is None else int(geometry_channels)
    out, Tfin = _Composite.apply(means2d.to(dt), conics.to(dt), opacities.to(dt), colors, lists, width, height,
                                 n_geo)
    return out, 1 - Tfin


def composite_rows(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, rows: Tensor, extra: Tensor,
                   lists: TileLists, width: int, height: int):
    """Forward only (no autograd): :func:`composite` of the channels ``[colors[rows], extra]`` without gathering them.
    means2d [M, 2], conics [M, 3], opacities [M], colors [N, C], rows [M] long (rows of colors), extra [M, E]
    -> image [H, W, C + E], alpha [H, W]. Renders that need no gradient (Stage 2 targets) skip the copy."""
    dt = colors.dtype
    out, Tfin, _ = _forward(lists, means2d.detach().to(dt), conics.detach().to(dt), opacities.detach().to(dt),
                            colors.detach(), width, height, rows=rows, extra=extra.detach())
    return out, 1 - Tfin


# ------------------------------------------------------------------ compositing weights
@nb.njit(parallel=True, cache=True, fastmath=_FASTMATH)  # the forward's flags: the same arithmetic
def _weights_kernel(offsets, counts, gids, packed, tiles_x, width, height, consts, centres, starts, out_g, out_w,
                    write):
    """Per pixel, front to back with the forward kernel's tests: the entries (Gaussian, alpha x T) that the
    forward sums. The tests are written out again rather than shared through an inlined helper: that helper
    made the forward ~20% slower at 10k Gaussians, 64x64 (``bench/rasterize.py --quick``). ``write`` False: counts into ``starts[pixel]``; True: fills ``out_g`` / ``out_w`` from
    ``starts[pixel]`` on."""
    ONE, AMAX, AMIN, TMIN, ZERO, HALF = consts[1], consts[2], consts[3], consts[4], consts[5], consts[0]
    for t in nb.prange(offsets.shape[0]):
        start, cnt = offsets[t], counts[t]
        x0, y0 = (t % tiles_x) * TILE, (t // tiles_x) * TILE
        rows = np.empty(cnt, dtype=np.int64)
        for py in range(y0, min(y0 + TILE, height)):
            fy = centres[py]
            n_row = _row_list(packed, start, cnt, fy, rows)
            for px in range(x0, min(x0 + TILE, width)):
                fx = centres[px]
                pix = py * width + px
                pos = starts[pix] if write else 0
                T = ONE
                for r in range(n_row):
                    j = start + rows[r]
                    dx = packed[j, 0] - fx
                    if abs(dx) > packed[j, 7]:
                        continue
                    dy = packed[j, 1] - fy
                    sig = HALF * (packed[j, 2] * dx * dx + packed[j, 4] * dy * dy) + packed[j, 3] * dx * dy
                    if sig < ZERO or sig > packed[j, 6]:
                        continue
                    raw = packed[j, 5] * math.exp(-sig)
                    alpha = raw if raw < AMAX else AMAX
                    if alpha < AMIN:
                        continue
                    nT = T * (ONE - alpha)
                    if nT <= TMIN:
                        break
                    if write:
                        out_g[pos] = gids[j]
                        out_w[pos] = alpha * T
                    pos += 1
                    T = nT
                if not write:
                    starts[pix] = pos


def composite_weights(means2d: Tensor, conics: Tensor, opacities: Tensor, lists: TileLists, width: int,
                      height: int) -> tuple[Tensor, Tensor, Tensor]:
    """The forward's compositing weights as a CSR matrix [H*W, M]: (indptr [H*W + 1] long, gids [nnz] long
    (rows of means2d), weights [nnz] in means2d's dtype), each pixel's entries front to back, so that
    ``composite(..., colors)[y, x] = sum over row y*W + x of weight * colors[gid]``. With fixed geometry every
    render of any channels is then a sparse product (the solve's CG passes). Two passes of the forward's loop
    (count, fill); no colours are read."""
    n_pix = width * height
    counts = np.zeros(n_pix, dtype=np.int64)
    out_g, out_w = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_np(means2d).dtype)
    if not lists.gids.numel():
        return torch.zeros(n_pix + 1, dtype=torch.long), torch.from_numpy(out_g), torch.from_numpy(out_w)
    _set_threads()
    args = (_np(lists.offsets), _np(lists.counts), _np(lists.gids), _pack(lists, means2d, conics, opacities),
            lists.tiles_x, width, height, *_consts(out_w.dtype, width, height))
    _weights_kernel(*args, counts, out_g, out_w, False)
    indptr = np.zeros(n_pix + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    out_g = np.empty(int(indptr[-1]), dtype=np.int64)
    out_w = np.empty(int(indptr[-1]), dtype=out_w.dtype)
    starts = indptr[:-1].copy()
    _weights_kernel(*args, starts, out_g, out_w, True)
    return torch.from_numpy(indptr), torch.from_numpy(out_g), torch.from_numpy(out_w)
