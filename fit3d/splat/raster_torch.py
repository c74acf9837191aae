"""Tiled front-to-back compositing in torch with a hand-written backward (any device, CPU first).

Hand-written because autograd through per-pixel compositing keeps N x pixels intermediates alive.
Layout (the gsplat recipe, vectorised over tiles instead of CUDA blocks):

* the image is cut into 16x16 tiles; every projected Gaussian is listed in the tiles its
  bounding box touches, each list sorted by depth (``TileLists``);
* all unfinished tiles are composited together, ``block`` Gaussians of their lists at a time:
  ``alpha [tiles, 256, block]``, transmittance by a cumulative product carried across blocks,
  colours by a batched matmul; a tile leaves the batch when its list is used up or all its pixels
  reached transmittance <= 1e-4 (early exit). Memory is O(tiles x 256 x block), never N x pixels;
* the backward recomputes the same blocks front to back. The colour of everything behind a
  Gaussian is ``final - prefix`` (the forward output minus the running sum), so no per-pair state
  is stored between passes. The image gradient reaches the geometry only through ``final . g`` and
  ``colour . g``; taking them over the leading ``n_geo`` channels renders the other channels as if
  through detached geometry, in the same pass (``rasterize(..., geometry_channels=)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TILE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
_SIGMA_MAX = 40.0  # exp(-40) * opacity << 1/255: skipped anyway


@dataclass
class TileLists:
    """Depth-sorted Gaussian lists per tile.

    gids    [I]  long, Gaussian index of each intersection, grouped by tile, sorted by depth
    offsets [T]  long, start of each tile's run in ``gids``
    counts  [T]  long, length of each tile's run
    tiles_x, tiles_y: tile grid size (T = tiles_x * tiles_y)
    """

    gids: Tensor
    offsets: Tensor
    counts: Tensor
    tiles_x: int
    tiles_y: int


@torch.no_grad()
def build_tile_lists(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int) -> TileLists:
    """means2d [M, 2], radii [M, 2] (pixels), depths [M] -> per-tile lists sorted by depth."""
    dev = means2d.device
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    T = tiles_x * tiles_y
    M = means2d.shape[0]
    if M == 0:
        z = torch.zeros(T, dtype=torch.long, device=dev)
        return TileLists(torch.zeros(0, dtype=torch.long, device=dev), z, z.clone(), tiles_x, tiles_y)
    m = means2d.double()
    r = radii.double()
    x0 = torch.floor((m[:, 0] - r[:, 0]) / TILE).clamp(0, tiles_x).long()
    x1 = torch.ceil((m[:, 0] + r[:, 0]) / TILE).clamp(0, tiles_x).long()
    y0 = torch.floor((m[:, 1] - r[:, 1]) / TILE).clamp(0, tiles_y).long()
    y1 = torch.ceil((m[:, 1] + r[:, 1]) / TILE).clamp(0, tiles_y).long()
    nx = (x1 - x0).clamp_min(0)
    n = nx * (y1 - y0).clamp_min(0)
    gid = torch.repeat_interleave(torch.arange(M, device=dev), n)
    start = torch.cumsum(n, 0) - n
    k = torch.arange(gid.shape[0], device=dev) - start[gid]
    tid = (y0[gid] + k // nx[gid]) * tiles_x + x0[gid] + k % nx[gid]
    rank = torch.empty(M, dtype=torch.long, device=dev)
    rank[torch.sort(depths.detach(), stable=True).indices] = torch.arange(M, device=dev)
    order = torch.argsort(tid * M + rank[gid])
    gids = gid[order]
    counts = torch.bincount(tid, minlength=T)
    offsets = torch.cumsum(counts, 0) - counts
    return TileLists(gids, offsets, counts, tiles_x, tiles_y)


def _pixel_offsets(dtype, device):
    """Pixel centres of a tile relative to its corner: px, py [256]."""
    r = torch.arange(TILE, dtype=dtype, device=device) + 0.5
    return r.repeat(TILE), r.repeat_interleave(TILE)


def _outside_image(tiles: Tensor, lists: TileLists, width: int, height: int) -> Tensor:
    """[A, 256] True for padding pixels of partial edge tiles: they count as finished for early exit."""
    r = torch.arange(TILE, device=tiles.device)
    px = (tiles % lists.tiles_x)[:, None] * TILE + r.repeat(TILE)[None]
    py = (tiles // lists.tiles_x)[:, None] * TILE + r.repeat_interleave(TILE)[None]
    return (px >= width) | (py >= height)


def _choose_block(max_count: int) -> int:
    return int(min(max(max_count, 1), 64))


class _Blocks:
    """Iterates the batch of unfinished tiles block by block (shared by forward and backward)."""

    def __init__(self, lists: TileLists, means2d, conics, opac, block):
        self.l = lists
        self.means2d, self.conics, self.opac = means2d, conics, opac
        self.block = block
        dev, dt = means2d.device, means2d.dtype
        self.px, self.py = _pixel_offsets(dt, dev)
        T = lists.tiles_x * lists.tiles_y
        tix = torch.arange(T, device=dev)
        self.corner_x = ((tix % lists.tiles_x) * TILE).to(dt)
        self.corner_y = ((tix // lists.tiles_x) * TILE).to(dt)
        self.ar = torch.arange(block, device=dev)

    def gather(self, tiles: Tensor, b: int):
        """Gaussians of block ``b`` for ``tiles`` [A]: gid [A, L] (M where padding), valid [A, L]."""
        pos = b * self.block + self.ar                                  # [L]
        inside = pos[None, :] < self.l.counts[tiles][:, None]           # [A, L]
        idx = (self.l.offsets[tiles][:, None] + pos[None, :]).clamp(max=max(self.l.gids.shape[0] - 1, 0))
        gid = torch.where(inside, self.l.gids[idx], torch.full_like(idx, self.means2d.shape[0]))
        return gid, inside

    def alphas(self, tiles: Tensor, gid: Tensor, inside: Tensor):
        """alpha [A, 256, L] (0 where skipped), plus dx, dy, G=exp(-sigma), unclamped mask."""
        gsafe = torch.where(inside, gid, torch.zeros_like(gid))
        m = self.means2d[gsafe]                                         # [A, L, 2]
        cn = self.conics[gsafe]                                         # [A, L, 3]
        o = torch.where(inside, self.opac[gsafe], torch.zeros_like(self.opac[gsafe]))
        mx = (m[..., 0] - self.corner_x[tiles][:, None])[:, None, :]    # [A, 1, L]
        my = (m[..., 1] - self.corner_y[tiles][:, None])[:, None, :]
        dx = mx - self.px[None, :, None]                                # [A, 256, L]
        dy = my - self.py[None, :, None]
        a, bb, c = (cn[..., i][:, None, :] for i in range(3))
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + bb * dx * dy
        # clamp before exp: exp(-sigma) of far pixels would be denormal, which is ~100x slower on CPU
        G = torch.exp(-sigma.clamp(max=_SIGMA_MAX))
        raw = o[:, None, :] * G
        alpha = raw.clamp(max=ALPHA_MAX)
        keep = (sigma >= 0) & (alpha >= ALPHA_MIN)
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        G = torch.where(keep, G, torch.zeros_like(G))
        return alpha, dx, dy, G, keep & (raw <= ALPHA_MAX), o


def _composite_forward(lists: TileLists, means2d, conics, opac, colors, width, height):
    """-> image [Hp, Wp, C] (padded to whole tiles), T_final [Hp, Wp]."""
    dev, dt = means2d.device, means2d.dtype
    C = colors.shape[1]
    T = lists.tiles_x * lists.tiles_y
    out = torch.zeros(T, TILE * TILE, C, dtype=dt, device=dev)
    Tfin = torch.ones(T, TILE * TILE, dtype=dt, device=dev)
    max_count = int(lists.counts.max()) if T else 0
    if max_count > 0:
        block = _choose_block(max_count)
        it = _Blocks(lists, means2d, conics, opac, block)
        colors_pad = torch.cat([colors, colors.new_zeros(1, C)], 0)
        tiles = torch.nonzero(lists.counts > 0).squeeze(-1)
        Tc = torch.ones(tiles.shape[0], TILE * TILE, dtype=dt, device=dev)
        done = _outside_image(tiles, lists, width, height)
        acc = torch.zeros(tiles.shape[0], TILE * TILE, C, dtype=dt, device=dev)
        b = 0
        while tiles.numel():
            gid, inside = it.gather(tiles, b)
            alpha, *_ = it.alphas(tiles, gid, inside)
            one_m = 1 - alpha
            Tincl = Tc[:, :, None] * torch.cumprod(one_m, -1)            # T after each Gaussian
            valid = (Tincl > T_MIN) & ~done[:, :, None]
            Texcl = torch.cat([Tc[:, :, None], Tincl[:, :, :-1]], -1)    # T before each Gaussian
            w = torch.where(valid, alpha * Texcl, torch.zeros_like(alpha))
            acc += torch.bmm(w, colors_pad[gid])
            Tc = Tc * torch.where(valid, one_m, torch.ones_like(one_m)).prod(-1)
            done = done | (Tincl[:, :, -1] <= T_MIN)
            b += 1
            live = (lists.counts[tiles] > b * block) & ~done.all(1)
            if not bool(live.all()):
                fin = ~live
                out[tiles[fin]] = acc[fin]
                Tfin[tiles[fin]] = Tc[fin]
                tiles, Tc, done, acc = tiles[live], Tc[live], done[live], acc[live]
    return _untile(out, lists, C), _untile(Tfin[..., None], lists, 1)[..., 0]


def _untile(x: Tensor, lists: TileLists, C: int) -> Tensor:
    """[T, 256, C] -> [Hp, Wp, C]."""
    ty, tx = lists.tiles_y, lists.tiles_x
    return x.reshape(ty, tx, TILE, TILE, C).permute(0, 2, 1, 3, 4).reshape(ty * TILE, tx * TILE, C)


def _tile(x: Tensor, lists: TileLists) -> Tensor:
    """[Hp, Wp, C] -> [T, 256, C]."""
    ty, tx = lists.tiles_y, lists.tiles_x
    C = x.shape[-1]
    return x.reshape(ty, TILE, tx, TILE, C).permute(0, 2, 1, 3, 4).reshape(ty * tx, TILE * TILE, C)


def _composite_backward(lists: TileLists, means2d, conics, opac, colors, out_img, Tfin_img, g_img, gA_img,
                        width, height, n_geo):
    """Gradients of image [Hp, Wp, C] and alpha; only channels [:n_geo] reach means2d / conics / opac."""
    dev, dt = means2d.device, means2d.dtype
    M, C = colors.shape
    v_means2d = torch.zeros(M + 1, 2, dtype=dt, device=dev)
    v_conics = torch.zeros(M + 1, 3, dtype=dt, device=dev)
    v_opac = torch.zeros(M + 1, dtype=dt, device=dev)
    v_colors = torch.zeros(M + 1, C, dtype=dt, device=dev)
    max_count = int(lists.counts.max()) if lists.counts.numel() else 0
    if max_count == 0:
        return v_means2d[:M], v_conics[:M], v_opac[:M], v_colors[:M]
    block = _choose_block(max_count)
    it = _Blocks(lists, means2d, conics, opac, block)
    colors_pad = torch.cat([colors, colors.new_zeros(1, C)], 0)
    g_t = _tile(g_img, lists)                                         # [T, 256, C]
    gA_t = _tile(gA_img[..., None], lists)[..., 0]                    # [T, 256]
    # geometry sees the image gradient only through these dot products: restricted to [:n_geo]
    total_t = (_tile(out_img[..., :n_geo], lists) * g_t[..., :n_geo]).sum(-1)  # [T, 256]  sum_j w_j c_j . g
    tail_t = gA_t * _tile(Tfin_img[..., None], lists)[..., 0]         # [T, 256]  dA/dalpha numerator
    tiles = torch.nonzero(lists.counts > 0).squeeze(-1)
    Tc = torch.ones(tiles.shape[0], TILE * TILE, dtype=dt, device=dev)
    done = _outside_image(tiles, lists, width, height)
    prefix = torch.zeros(tiles.shape[0], TILE * TILE, dtype=dt, device=dev)
    g, rest, tail = g_t[tiles], total_t[tiles], tail_t[tiles]
    b = 0
    while tiles.numel():
        gid, inside = it.gather(tiles, b)
        alpha, dx, dy, G, grad_ok, o = it.alphas(tiles, gid, inside)
        one_m = 1 - alpha
        Tincl = Tc[:, :, None] * torch.cumprod(one_m, -1)
        valid = (Tincl > T_MIN) & ~done[:, :, None]
        Texcl = torch.cat([Tc[:, :, None], Tincl[:, :, :-1]], -1)
        w = torch.where(valid, alpha * Texcl, torch.zeros_like(alpha))
        col = colors_pad[gid]                                         # [A, L, C]
        dot = torch.bmm(g[..., :n_geo], col[..., :n_geo].transpose(1, 2))  # [A, 256, L]  c_i . g
        v_colors.index_add_(0, gid.reshape(-1), torch.bmm(w.transpose(1, 2), g).reshape(-1, C))
        wd = w * dot
        after = rest[:, :, None] - (prefix[:, :, None] + torch.cumsum(wd, -1))  # sum_{j>i} w_j c_j.g
        v_alpha = Texcl * dot + (tail[:, :, None] - after) / one_m
        v_alpha = torch.where(valid & grad_ok, v_alpha, torch.zeros_like(v_alpha))
        v_o = (v_alpha * G).sum(1)                                    # [A, L]
        v_sigma = -v_alpha * o[:, None, :] * G
        sdx, sdy = v_sigma * dx, v_sigma * dy
        Sx, Sy = sdx.sum(1), sdy.sum(1)
        Sxx, Sxy, Syy = (sdx * dx).sum(1), (sdx * dy).sum(1), (sdy * dy).sum(1)
        cn = it.conics[torch.where(inside, gid, torch.zeros_like(gid))]
        a, bb, c = cn.unbind(-1)
        flat = gid.reshape(-1)
        v_means2d.index_add_(0, flat, torch.stack([a * Sx + bb * Sy, bb * Sx + c * Sy], -1).reshape(-1, 2))
        v_conics.index_add_(0, flat, torch.stack([0.5 * Sxx, Sxy, 0.5 * Syy], -1).reshape(-1, 3))
        v_opac.index_add_(0, flat, v_o.reshape(-1))
        prefix = prefix + wd.sum(-1)
        Tc = Tc * torch.where(valid, one_m, torch.ones_like(one_m)).prod(-1)
        done = done | (Tincl[:, :, -1] <= T_MIN)
        b += 1
        live = (lists.counts[tiles] > b * block) & ~done.all(1)
        if not bool(live.all()):
            tiles, Tc, done, prefix = tiles[live], Tc[live], done[live], prefix[live]
            g, rest, tail = g[live], rest[live], tail[live]
    return v_means2d[:M], v_conics[:M], v_opac[:M], v_colors[:M]


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opac, colors, lists, width, height, n_geo):
        out, Tfin = _composite_forward(lists, means2d, conics, opac, colors, width, height)
        ctx.save_for_backward(means2d, conics, opac, colors, out, Tfin)
        ctx.lists, ctx.size, ctx.n_geo = lists, (width, height), n_geo
        return out, Tfin

    @staticmethod
    def backward(ctx, g_out, g_T):
        means2d, conics, opac, colors, out, Tfin = ctx.saved_tensors
        if g_out is None:
            g_out = torch.zeros_like(out)
        # gradients arrive for the accumulated alpha = 1 - T_final
        gA = -g_T if g_T is not None else torch.zeros_like(Tfin)
        grads = _composite_backward(ctx.lists, means2d.detach(), conics.detach(), opac.detach(),
                                    colors.detach(), out, Tfin, g_out.contiguous(), gA.contiguous(), *ctx.size,
                                    ctx.n_geo)
        return (*grads, None, None, None, None)


def composite(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, lists: TileLists,
              width: int, height: int, geometry_channels: int | None = None):
    """Front-to-back composite. means2d [M, 2], conics [M, 3], opacities [M], colors [M, C]
    -> image [H, W, C], alpha [H, W] (accumulated opacity). Only the leading ``geometry_channels``
    channels (None: all) send gradients to means2d / conics / opacities; all get colour gradients."""
    n_geo = colors.shape[1] if geometry_channels is None else int(geometry_channels)
    out, Tfin = _Composite.apply(means2d, conics, opacities, colors, lists, width, height, n_geo)
    return out[:height, :width], 1 - Tfin[:height, :width]
