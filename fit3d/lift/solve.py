"""Stage 1 without feature optimisation (``LiftConfig.method = "solve"``): features in closed form.

With geometry fixed, each Gaussian's feature is the average of the target tokens over the training pixels
it contributes to, weighted by its compositing weight there (alpha x transmittance):
``f_j = sum_p w_pj F(p) / sum_p w_pj`` (learning-free uplifting, LUDVIG). ``sum_p w_pj F(p)`` is the
gradient of ``<render(c), F>`` w.r.t. per-Gaussian channels ``c``, so the rasterizer's backward gives it
(render zeros that require grad, backward ``F``; the denominator is the same with ``F = 1``): no new kernel.
F is taken in the training tokens' top-``feature_dim`` (uncentred) PCA basis, the decoder's centre tap
(``pca_init_decoder``); the average commutes with that linear map, so this equals averaging the full
D-wide tokens and projecting afterwards. CG on the least-squares problem of the rendered features then
starts from that average; finally every tap of the decoder is fitted by least squares to the tokens from
the rendered solution (``fit_decoder``), which replaces the PCA basis the features were solved in.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from fit3d.errors import NonFiniteError, SceneError
from fit3d.lift.context import LiftContext, LiftResult
from fit3d.lift.decoder import FeatureDecoder, pca_init_decoder
from fit3d.lift.fuse import fuse_points, surfel_params
from fit3d.lift.init import as_gaussians, camera_extent, init_params
from fit3d.lift.loss import color_loss, feature_loss
from fit3d.splat.densify import DensifySchedule, DensifyStats, densify_and_prune
from fit3d.splat.rasterize import projection_and_composite, rasterize
from fit3d.splat.render import render


def decoder_projection(decoder) -> Tensor:
    """[f, D] least-squares inverse of the decoder's centre tap ([D, f]): decoded = tap @ f."""
    w = decoder.conv.weight.detach()
    c = w.shape[-1] // 2
    return torch.linalg.pinv(w[:, :, c, c].double()).float()


def view_targets(cache, name: str, proj: Tensor, width: int, height: int, at: str) -> Tensor:
    """[H, W, f] the view's tokens in the decoder's basis at the render size: ``render`` bilinearly
    upsampled (FiT3D's targets), ``grid`` each token repeated over its pixels (the adjoint of the grid
    loss's average pooling, up to the constant pool area)."""
    g = torch.einsum("kd,dhw->khw", proj, cache.grid(cache.index(name)))[None]
    mode = {"render": dict(mode="bilinear", align_corners=False), "grid": dict(mode="nearest")}[at]
    return F.interpolate(g, size=(height, width), **mode)[0].permute(1, 2, 0).contiguous()


def _raster_args(params: dict):
    means = params["means"].detach()
    return (means, params["quats"].detach(), params["log_scales"].detach().exp(),
            torch.sigmoid(params["opacity_logits"].detach()))


def _camera(v, device):
    viewmat = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=device))
    return viewmat, torch.as_tensor(v.K, dtype=torch.float32, device=device)


class FixedViews:
    """Renders of per-Gaussian channels through fixed geometry from a list of views. With the CPU backends
    (numba / torch) each view's projection and tile lists are computed once and reused by every pass (the
    average and each CG iteration: a third of a pass's time); other backends call ``rasterize`` each time.
    Hand-written: the geometry is fixed, which ``rasterize``'s API cannot express; this is its numba / torch
    path with the first half kept."""

    def __init__(self, params: dict, views, width: int, height: int, backend: str = "auto", keep: bool = True):
        from fit3d.splat.rasterize import resolve_backend

        self.geo = _raster_args(params)
        self.views, self.size = list(views), (int(width), int(height))
        self.backend = resolve_backend(backend, self.geo[0].device)
        self.keep = keep  # False for a single pass: nothing to reuse, and ~5 MB a view at 50k Gaussians
        self._cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.views)

    @torch.no_grad()
    def _projected(self, i: int):
        if i in self._cache:
            return self._cache[i]
        from fit3d.splat.raster_torch import build_tile_lists

        project, _ = projection_and_composite(self.backend)
        vm, K = _camera(self.views[i], self.geo[0].device)
        p = project(*self.geo, vm, K, *self.size)
        out = (p, build_tile_lists(p.means2d, p.radii, p.depths, *self.size))
        if self.keep:
            self._cache[i] = out
        return out

    def render(self, i: int, colors: Tensor) -> Tensor:
        """[H, W, C] view ``i``'s composite of ``colors`` [N, C] (differentiable w.r.t. colors only)."""
        W, H = self.size
        if self.backend not in ("numba", "torch"):
            img, _, _ = rasterize(*self.geo, colors, *_camera(self.views[i], self.geo[0].device), W, H,
                                  backend=self.backend, geometry_channels=0)
            return img
        _, composite = projection_and_composite(self.backend)
        p, lists = self._projected(i)
        feats = torch.cat([p.depths[:, None], colors[p.ids]], -1)  # depth: the (unused) geometry channel
        out, _ = composite(p.means2d, p.conics, p.opacities, feats, lists, W, H, geometry_channels=1)
        return out[..., 1:]

    def weights(self, i: int) -> "sp.csr_matrix":
        """[H*W, N] view ``i``'s compositing weights (float32; numba backend only): ``render(i, c)`` equals
        ``(weights(i) @ c).reshape(H, W, C)``."""
        from fit3d.splat.raster_numba import composite_weights

        if self.backend != "numba":
            raise ValueError(f"compositing weights need the numba backend, not {self.backend!r}")
        W, H = self.size
        p, lists = self._projected(i)
        indptr, gids, w = composite_weights(p.means2d, p.conics, p.opacities, lists, W, H)
        cols = p.ids[gids].numpy()  # projected rows -> Gaussians
        return sp.csr_matrix((w.numpy().astype(np.float32, copy=False), cols, indptr.numpy()),
                             shape=(W * H, len(self.geo[0])))


def all_culled(view, i: int, n: int) -> SceneError:
    """The error for a training view that weights none of the ``n`` Gaussians."""
    return SceneError(f"solve: view {view.name or i} sees none of the {n} Gaussians (all culled: check its pose "
                      f"and the scene's depth / points)")


def pool_matrix(height: int, width: int, grid: tuple[int, int] | None) -> "sp.csr_matrix":
    """[h*w, H*W] ``F.adaptive_avg_pool2d`` to ``grid`` (h, w) as a sparse matrix (identity for None)."""
    if grid is None:
        return sp.identity(height * width, dtype=np.float32, format="csr")

    def axis(L: int, l: int) -> np.ndarray:  # [l, L] averaging windows, adaptive_avg_pool's bounds
        m = np.zeros((l, L), np.float32)
        for i in range(l):
            a, b = (i * L) // l, -((-(i + 1) * L) // l)
            m[i, a:b] = 1.0 / (b - a)
        return m
    return sp.csr_matrix(np.kron(axis(height, grid[0]), axis(width, grid[1])))


class ViewWeights:
    """The compositing weights of fixed geometry in a list of views as one sparse matrix M [V*R, N]
    (R rows per view: its pixels, or its tokens when ``grid`` pools the render to the token grid), so every
    pass of the solve is a sparse product instead of a rasterisation: the right-hand side ``M^T t`` and
    ``A X = area * M^T M X``, the normal operator of ``normal_matvec``. Built from ``FixedViews.weights``
    (numba backend); ``den`` [N] holds each Gaussian's total pixel weight sum_p w_pj; ``pixels`` (with
    ``keep_pixels`` = n > 0) every n-th view's own [H*W, N] weights, for renders as sparse products later
    (``fit_decoder``).
    Hand-written: the compositing weights come from our kernel; the products are scipy's."""

    def __init__(self, fv: FixedViews, grid: tuple[int, int] | None, progress=None, keep_pixels: int = 0):
        W, H = fv.size
        pool = pool_matrix(H, W, grid)
        self.rows = pool.shape[0]  # rows of M per view
        self.area = (H * W) / (grid[0] * grid[1]) if grid else 1.0
        blocks, den, self.pixels = [], np.zeros(len(fv.geo[0]), np.float64), [] if keep_pixels else None
        for i in range(len(fv)):
            w = fv.weights(i)
            seen = np.bincount(w.indices, weights=w.data, minlength=w.shape[1])
            if not seen.any():
                raise all_culled(fv.views[i], i, w.shape[1])
            den += seen
            blocks.append(pool @ w)
            if keep_pixels and i % keep_pixels == 0:
                self.pixels.append(w)
            if progress is not None:
                progress.update(1)
        self.M = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(fv.geo[0])), dtype=np.float32)
        self.Mt, self._torch = self.M.T.tocsr(), None
        self.den = torch.from_numpy(den)

    def keep(self, keep: Tensor) -> "ViewWeights":
        """Only the Gaussians ``keep`` [N] bool (columns), in place."""
        k = keep.numpy()
        self.M = self.M[:, k].tocsr()
        self.Mt, self._torch = self.M.T.tocsr(), None
        self.den = self.den[keep]
        if self.pixels is not None:
            self.pixels = [w[:, k].tocsr() for w in self.pixels]
        return self

    def view_rows(self, idx) -> np.ndarray:
        """The rows of M (and of ``stacked_targets``) that belong to the views ``idx`` (positions in the list)."""
        return np.concatenate([np.arange(i * self.rows, (i + 1) * self.rows) for i in idx])

    def views(self, idx) -> "ViewWeights":
        """The views ``idx`` (positions in the list) alone, sharing nothing mutable; ``den`` from their pooled
        rows (area x the column sums: exact for exact pooling blocks, and only a preconditioner)."""
        out = object.__new__(ViewWeights)
        out.rows, out.area, out.pixels, out._torch = self.rows, self.area, None, None
        out.M = self.M[self.view_rows(idx)]
        out.Mt = out.M.T.tocsr()
        out.den = torch.from_numpy(self.area * np.asarray(out.M.sum(0), np.float64).ravel())
        return out

    def rhs(self, targets: Tensor) -> Tensor:
        """[N, C] float64 area * M^T t for the views' stacked targets [V*R, C] (``stacked_targets``)."""
        return torch.from_numpy(self.area * (self.Mt @ targets.numpy().astype(np.float32, copy=False))).double()

    def matvec(self, X: Tensor) -> Tensor:
        """[N, C] float64 area * M^T M X (X [N, C]); torch's CSR product (multi-threaded, scipy's is not)."""
        if self._torch is None:
            self._torch = tuple(_torch_csr(m) for m in (self.M, self.Mt))
        M, Mt = self._torch
        return (self.area * (Mt @ (M @ X.detach().float().contiguous()))).double()


def _torch_csr(m: "sp.csr_matrix") -> Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor (shared data, int32 indices kept; scipy built it valid)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr), torch.from_numpy(m.indices),
                                       torch.from_numpy(m.data), size=m.shape, check_invariants=False)


RIDGE_CANDIDATES = (1e-1, 1e-2, 1e-3, 1e-4)  # solve_ridge_select's grid (relative to each Gaussian's weight)


def select_ridge(vw: ViewWeights, targets: Tensor, candidates, iterations: int, tol: float, every: int = 8
                 ) -> tuple[float, dict, Tensor]:
    """The CG ridge (relative to each Gaussian's weight) that predicts held-back training views best: CG on all
    but every ``every``-th view (offset every // 2) for each candidate, largest first, each warm-started from
    the last; scored by the mean token cosine of the held-back views' pooled renders (in the decoder's
    basis) against their targets [V*R, C] (``stacked_targets``); ``iterations`` of CG at most per candidate.
    Hand-written: a validation split over our own CG, no library's model selection fits.
    Returns (ridge, {ridge: cosine}, that ridge's features [N, C]: a warm start for the solve). Few views
    pose an ill-posed problem that wants a strong ridge (the demo's 21-view rooms: 0.1), many views a weak one
    (RedKitchen's 175: 1e-4); one fixed value loses up to 0.05 cosine on one or the other."""
    V = vw.M.shape[0] // vw.rows
    held = [i for i in range(V) if i % every == every // 2]
    fit_idx = [i for i in range(V) if i % every != every // 2]
    fit, held_rows = vw.views(fit_idx), vw.view_rows(held)
    b = fit.rhs(targets[torch.from_numpy(vw.view_rows(fit_idx))])
    t_val = targets[torch.from_numpy(held_rows)]
    f, _ = weighted_average(b, fit.den)
    pre = fit.den.clamp_min(1e-6)
    Mv = _torch_csr(vw.M[held_rows])  # the held-back views' rows only: no transpose, no weights of their own
    scores, sols = {}, {}
    for r in sorted(candidates, reverse=True):
        f, _ = conjugate_gradient(fit.matvec, b, f, pre, iterations, ridge=r * pre, tol=tol)
        pred = Mv @ f.float()
        seen = pred.norm(dim=1) > 0
        scores[r], sols[r] = float(F.cosine_similarity(pred[seen], t_val[seen].float(), dim=1).mean()), f
    best = max(scores, key=scores.get)
    return best, scores, sols[best]


def accumulate(params: dict | FixedViews, views, targets, width: int, height: int, backend: str = "auto",
               progress=None) -> tuple[Tensor, Tensor]:
    """(numerator [N, C], weight [N]): sum over ``views`` and their pixels p of w_pj * targets(i)[p] and w_pj,
    through the rasterizer's backward. targets: i -> [H, W, C]. ``params`` may be a ``FixedViews`` of
    ``views`` (then its cached projections are used)."""
    fv = params if isinstance(params, FixedViews) else FixedViews(params, views, width, height, backend, keep=False)
    dev = fv.geo[0].device
    N = len(fv.geo[0])
    num, den = None, torch.zeros(N, dtype=torch.float64)
    for i, v in enumerate(fv.views):
        tgt = targets(i).to(dev)  # [H, W, C]
        C = tgt.shape[-1]
        g = torch.cat([tgt, tgt.new_ones(height, width, 1)], -1)
        c = torch.zeros(N, C + 1, device=dev, requires_grad=True)
        (gr,) = torch.autograd.grad((fv.render(i, c) * g).sum(), c)
        gr = gr.detach().cpu().double()
        if not bool(gr[:, C].gt(0).any()):
            raise all_culled(v, i, N)
        num = gr[:, :C] if num is None else num + gr[:, :C]
        den += gr[:, C]
        if progress is not None:
            progress.update(1)
    if num is None:
        raise SceneError("solve: no training views to accumulate features from")
    return num, den


def weighted_average(num: Tensor, den: Tensor, min_weight: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(f [N, C] = num / den where den > min_weight, keep [N] bool). Never NaN: rows without weight are
    marked for dropping."""
    keep = den > min_weight
    f = torch.zeros_like(num)
    f[keep] = num[keep] / den[keep, None]
    return f, keep


def normal_matvec(params: dict | FixedViews, views, X: Tensor, width: int, height: int,
                  grid: tuple[int, int] | None, backend: str = "auto", progress=None) -> Tensor:
    """A X for A = sum_v W_v^T U P W_v (W_v: view v's compositing weights [pixels, N]; P: average pooling to
    the token ``grid`` (h, w), U: its nearest upsampling, both identity when ``grid`` is None). X [N, C].
    ``params`` may be a ``FixedViews`` of ``views``. Per-view products are summed in float32 (at most a few
    hundred views), the result is float64."""
    fv = params if isinstance(params, FixedViews) else FixedViews(params, views, width, height, backend, keep=False)
    area = (height * width) / (grid[0] * grid[1]) if grid else 1.0
    x = X.detach().to(device=fv.geo[0].device, dtype=torch.float32)
    out = torch.zeros(X.shape, dtype=torch.float32, device=x.device)
    for i in range(len(fv)):
        c = x.clone().requires_grad_(True)
        img = fv.render(i, c)
        if grid:
            img = F.adaptive_avg_pool2d(img.permute(2, 0, 1)[None], grid)
        (g,) = torch.autograd.grad(0.5 * area * (img * img).sum(), c)
        out += g
        if progress is not None:
            progress.update(1)
    return out.cpu().double()


def conjugate_gradient(matvec, b: Tensor, x0: Tensor, precond: Tensor, iterations: int,
                       ridge: Tensor | None = None, tol: float = 0.0) -> tuple[Tensor, list[float]]:
    """Preconditioned CG for (A + diag(ridge)) X = b, every column of b [N, C] at once (A is shared; each
    column has its own step sizes). precond [N] > 0: a diagonal approximation of A. Stops after
    ``iterations`` or once the mean relative residual |r| / |b| is below ``tol``. Returns (X, relative
    residual norms per iteration). Hand-written: a few lines, and the matvec is a pass over the views."""
    ridge = torch.zeros_like(precond) if ridge is None else ridge
    A = lambda x: matvec(x) + ridge[:, None] * x  # noqa: E731
    x = x0.clone()
    r = b - A(x)
    z = r / precond[:, None]
    p = z.clone()
    rz = (r * z).sum(0)
    bn = b.norm(dim=0).clamp_min(1e-30)
    hist = [float((r.norm(dim=0) / bn).mean())]
    inv = (1.0 / precond)[:, None]
    for _ in range(iterations):
        if hist[-1] < tol:
            break
        Ap = A(p)
        step = rz / (p * Ap).sum(0).clamp_min(1e-30)
        x.addcmul_(step.expand_as(p), p)  # in place: [N, C] float64 temporaries cost as much as the products
        r.sub_(Ap.mul_(step))
        hist.append(float((r.norm(dim=0) / bn).mean()))
        z = torch.mul(r, inv, out=z)
        rz_new = (r * z).sum(0)
        p.mul_(rz_new / rz.clamp_min(1e-30)).add_(z)
        rz = rz_new
    return x, hist


# ------------------------------------------------------------------ geometry
def optimize_colour(ctx: LiftContext, params: dict, iterations: int, extent: float, desc: str) -> list[dict]:
    """Colour-only 3DGS training of ``params`` in place (the colour loss of ``fit3d.lift.loss``, FiT3D's
    learning rates, density control on its schedule scaled to ``iterations``; no opacity reset: short runs
    start from opaque surfels). Features are not rendered. Returns the loss history."""
    from fit3d.lift.optimize import make_optimizer, means_lr

    cfg = dataclasses.replace(ctx.cfg, iterations=iterations)
    W, H = ctx.size
    dev = ctx.device
    opt = make_optimizer(params, cfg, extent)
    stats = DensifyStats(len(params["means"]), dev)
    sched = DensifySchedule.scaled(iterations)
    sh_interval = max(1, iterations // 30)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm: list[int] = []
    history, run = [], 0.0
    for it in tqdm(range(iterations), desc=desc, disable=not cfg.progress, unit="it", leave=False):
        if not perm:
            perm = torch.randperm(len(ctx.train_idx), generator=gen).tolist()
        v = ctx.views[ctx.train_idx[perm.pop()]]
        next(g for g in opt.param_groups if g["name"] == "means")["lr"] = means_lr(it, cfg, extent)
        r = render(as_gaussians(params, min(cfg.max_sh_degree, it // sh_interval)), v.K, v.c2w, W, H,
                   with_features=False, backend=cfg.raster_backend)
        loss = color_loss(r.rgb, torch.as_tensor(v.image, device=dev), cfg.lambda_dssim)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"lift {ctx.name}: colour loss became {float(loss)} at iteration {it} (view {v.name})")
        loss.backward()
        with torch.no_grad():
            if cfg.densify and it < sched.stop:
                vm = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=dev))
                stats.update(params["means"].detach(), params["means"].grad,
                             params["log_scales"].detach().exp().max(1).values, vm,
                             torch.as_tensor(v.K, dtype=torch.float32, device=dev), W, H)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = it + 1
        if cfg.densify and sched.densify_now(done):
            densify_and_prune(params, opt, stats, grad_threshold=cfg.densify_grad_threshold, extent=extent,
                              percent_dense=cfg.percent_dense, min_opacity=cfg.min_opacity,
                              max_screen_size=None, max_gaussians=max(cfg.max_gaussians, cfg.solve_max_gaussians),
                              generator=gen)
        run += float(loss.detach())
        if done % max(1, iterations // 20) == 0 or done == iterations:
            history.append({"iteration": done, "rgb": run / max(1, done - (history[-1]["iteration"] if history else 0)),
                            "gaussians": len(params["means"])})
            run = 0.0
    return history


def solve_geometry(ctx: LiftContext) -> tuple[dict, float, str, list[dict], dict]:
    """(params, extent, source, history, info): fused depth surfels (+ ``solve_geometry_iterations`` colour-only
    iterations), or, without depth, the scene's points trained colour-only for ``solve_nodepth_iterations``."""
    cfg = ctx.cfg
    t0 = time.perf_counter()
    train = [ctx.views[i] for i in ctx.train_idx]
    has_depth = any(v.depth is not None and bool((v.depth > 0).any()) for v in train)
    if has_depth:
        means, normals, cols, foot, vox = fuse_points(train, cfg.solve_voxel, cfg.solve_max_gaussians,
                                                      cfg.solve_voxel_factor, cfg.solve_min_views,
                                                      fill_holes=cfg.solve_fill_holes, carve_tol=cfg.solve_carve_tol)
        if len(means) == 0:
            raise SceneError(f"{ctx.name}: solve: no voxel is seen by {cfg.solve_min_views} training views "
                             f"(lower --solve-min-views)")
        params = surfel_params(means, normals, cols, cfg.solve_scale * np.maximum(vox, foot),
                               opacity=cfg.solve_opacity, flat=cfg.solve_flat, feature_dim=cfg.feature_dim,
                               max_sh_degree=cfg.max_sh_degree, device=ctx.device)
        source, iters, info = "depth-fused", cfg.solve_geometry_iterations, {"voxel": vox, "fused": len(means)}
    elif ctx.points is not None and len(ctx.points) > 0:
        pts = np.asarray(ctx.points, np.float32)
        cols = (np.asarray(ctx.points_rgb, np.float32) if ctx.points_rgb is not None else np.full_like(pts, 0.5))
        params = init_params(pts, cols, cfg, ctx.device)
        source, iters, info = "points+colour", cfg.solve_nodepth_iterations, {}
    else:
        raise SceneError(f"{ctx.name}: solve needs depth in the training views or scene points (COLMAP); this "
                         f"scene has neither (use --method optimize, which starts from random points)")
    pts = params["means"].detach().cpu().numpy()
    extent = max(camera_extent(np.stack([v.c2w for v in train])), 0.1 * float(np.linalg.norm(pts.max(0) - pts.min(0))),
                 1e-3)
    t1 = time.perf_counter()
    history = optimize_colour(ctx, params, iters, extent, f"colour {ctx.name}") if iters > 0 else []
    seconds = {"fusion": t1 - t0, "colour": time.perf_counter() - t1}
    return params, extent, source, history, {**info, "iterations": iters, "seconds": seconds}


# ------------------------------------------------------------------ features
def refine_features(ctx: LiftContext, params: dict, decoder: FeatureDecoder, iterations: int) -> list[dict]:
    """Adam on f and the decoder with Stage 1's feature loss (geometry fixed), in place."""
    cfg = ctx.cfg
    W, H = ctx.size
    feats = nn.Parameter(params["features"].detach().clone())
    opt = torch.optim.Adam([{"params": [feats], "lr": cfg.lr_features},
                            {"params": decoder.parameters(), "lr": cfg.lr_decoder}], eps=1e-15)
    gen = torch.Generator().manual_seed(cfg.seed)
    geo = {k: v.detach() for k, v in params.items() if k != "features"}
    history, perm = [], []
    for it in tqdm(range(iterations), desc=f"refine {ctx.name}", disable=not cfg.progress, unit="it", leave=False):
        if not perm:
            perm = torch.randperm(len(ctx.train_idx), generator=gen).tolist()
        v = ctx.views[ctx.train_idx[perm.pop()]]
        r = render(as_gaussians({**geo, "features": feats}, 0), v.K, v.c2w, W, H, with_rgb=False,
                   backend=cfg.raster_backend)
        loss = feature_loss(decoder(r.features.permute(2, 0, 1)[None]), ctx.cache, ctx.cache.index(v.name),
                            cfg.feature_loss_at)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % max(1, iterations // 20) == 0:
            history.append({"iteration": it + 1, "feat": float(loss.detach())})
    params["features"] = nn.Parameter(feats.detach())
    return history


def stacked_targets(cache, names, proj: Tensor, width: int, height: int, at: str) -> Tensor:
    """[V*R, f] the views' tokens in the decoder's basis, one row per row of ``ViewWeights.M``: the token grid
    (``grid``) or the render's pixels, tokens bilinearly upsampled (``render``)."""
    rows = []
    for name in names:
        if at == "grid":
            g = torch.einsum("kd,dhw->hwk", proj, cache.grid(cache.index(name)))
            rows.append(g.reshape(-1, g.shape[-1]))
        else:
            rows.append(view_targets(cache, name, proj, width, height, at).reshape(width * height, -1))
    return torch.cat(rows).float().cpu()


def solve_features(ctx: LiftContext, params: dict, decoder: FeatureDecoder, keep_pixels: int = 0
                   ) -> tuple[dict, dict, list | None]:
    """Per-Gaussian features in the decoder's basis: the weighted average, then up to ``solve_cg_iterations``
    of preconditioned CG on the least-squares problem (until the relative residual is below ``solve_cg_tol``),
    both over every ``solve_view_stride``-th training view. With ``solve_ridge_select`` (sparse path, 8+ views)
    the ridge is chosen on held-back training views first (``select_ridge``) and the CG starts from that
    candidate's features for ``solve_ridge_select_iterations``; else ``solve_cg_ridge``. Drops Gaussians those
    views do not weight (never NaN). With the numba backend each view's compositing weights are extracted once (``ViewWeights``) and
    every pass is a sparse product; other backends rasterise each pass. Returns (params, info, pixels):
    info["seconds"] times the average and the CG; pixels are every ``keep_pixels``-th of those views' [H*W, N]
    compositing weights of the kept Gaussians (the sparse path; else None)."""
    cfg = ctx.cfg
    W, H = ctx.size
    proj = decoder_projection(decoder).to(ctx.device)
    train = [ctx.views[i] for i in ctx.train_idx]
    sub = train[::max(1, cfg.solve_view_stride)]  # dense trajectories: neighbouring views add little
    at = cfg.solve_targets_at
    grid = ctx.cache.grid_size if at == "grid" else None
    fv = FixedViews(params, sub, W, H, cfg.raster_backend, keep=False)  # one pass: nothing to keep
    sparse = fv.backend == "numba"
    bar = tqdm(total=len(sub) * (1 + (0 if sparse else cfg.solve_cg_iterations + (cfg.solve_cg_iterations > 0))),
               desc=f"solve {ctx.name}", disable=not cfg.progress, unit="view")
    t0 = time.perf_counter()
    if sparse:
        vw = ViewWeights(fv, grid, progress=bar, keep_pixels=keep_pixels)
        T = stacked_targets(ctx.cache, [v.name for v in sub], proj, W, H, at)
        num, den = vw.rhs(T), vw.den
    else:
        targets = lambda i: view_targets(ctx.cache, sub[i].name, proj, W, H, at)  # noqa: E731
        num, den = accumulate(fv, sub, targets, W, H, progress=bar)
    f, keep = weighted_average(num, den)
    if not bool(keep.any()):
        raise SceneError(f"{ctx.name}: solve: no Gaussian is seen by any training view")
    params = {k: nn.Parameter(v.detach()[keep]) for k, v in params.items()}
    info = {"dropped_unseen": int((~keep).sum()), "views": len(sub), "sparse": sparse}
    f, num, den = f[keep], num[keep], den[keep]
    t1 = time.perf_counter()
    if sparse:
        vw.keep(keep)
    if cfg.solve_cg_iterations > 0:
        if sparse:
            mv = vw.matvec
            info["weights_nnz"] = int(vw.M.nnz)
        else:
            fv = FixedViews(params, sub, W, H, cfg.raster_backend)  # the kept Gaussians' projections, made once
            mv = lambda X: normal_matvec(fv, sub, X, W, H, grid, progress=bar)  # noqa: E731
        precond = den.clamp_min(1e-6)
        ridge, iterations = cfg.solve_cg_ridge, cfg.solve_cg_iterations
        if sparse and cfg.solve_ridge_select and len(sub) >= 8 and cfg.solve_ridge_select_iterations > 0:
            t2 = time.perf_counter()
            iterations = cfg.solve_ridge_select_iterations  # from the chosen candidate's features: near already
            ridge, scores, f = select_ridge(vw, T, RIDGE_CANDIDATES, iterations, cfg.solve_cg_tol,
                                            every=8 if len(sub) >= 16 else 4)
            info["ridge_scores"] = {f"{r:g}": v for r, v in scores.items()}
            info["ridge_select_seconds"] = time.perf_counter() - t2
        info["ridge"] = ridge
        f, hist = conjugate_gradient(mv, num, f, precond, iterations, ridge=ridge * precond, tol=cfg.solve_cg_tol)
        info["cg_residual"] = hist
    bar.close()
    if not bool(torch.isfinite(f).all()):
        raise NonFiniteError(f"{ctx.name}: solve: features became non-finite")
    params["features"] = nn.Parameter(f.float().to(ctx.device).contiguous())
    info["seconds"] = {"average": t1 - t0, "cg": time.perf_counter() - t1}
    return params, info, vw.pixels if sparse else None


def pooled_design(img: Tensor, k: int, grid: tuple[int, int] | None) -> Tensor:
    """[C*k*k, R] the inputs of a k x k Conv2d's taps (zero padding k//2; rows in ``F.unfold``'s order) for
    img [1, C, H, W], average-pooled to ``grid`` (h, w) as ``F.adaptive_avg_pool2d`` does (R = h*w; None: no
    pooling, R = H*W). Pooling to exact blocks of sy x sx pixels is a stride-1 box filter and a strided unfold
    (the pooled k x k neighbourhood of a block is the k x k neighbourhood of the box-filtered image), without
    the pixel-level [C*k*k, H*W] unfold the general case builds."""
    C, H, W = img.shape[1:]
    if grid is None:
        return F.unfold(img, k, padding=k // 2)[0]
    (gh, gw), p = grid, k // 2
    if H % gh == 0 and W % gw == 0:
        sy, sx = H // gh, W // gw
        box = F.avg_pool2d(F.pad(img, (p, p, p, p)), (sy, sx), stride=1)
        return F.unfold(box, k, stride=(sy, sx))[0]
    cols = F.unfold(img, k, padding=p).reshape(1, C * k * k, H, W)
    return F.adaptive_avg_pool2d(cols, grid)[0].reshape(C * k * k, -1)


class NormalEquations:
    """Running X^T X [P, P] and X^T Y [P, D] (float64) of row blocks X [R, P], Y [R, D] (float32), buffered to
    ``rows`` rows so each product is one large BLAS call; X^T X by ``ssyrk`` (its upper triangle: half the
    flops of a GEMM). Hand-written: torch has no syrk; scipy's BLAS wrapper is the library call."""

    def __init__(self, P: int, D: int, rows: int = 8192):
        self.XtX, self.XtY = np.zeros((P, P), np.float64), np.zeros((P, D), np.float64)
        self.rows, self._X, self._Y = rows, [], []

    def add(self, X: Tensor, Y: Tensor) -> None:
        self._X.append(X.float().cpu().numpy())
        self._Y.append(Y.float().cpu().numpy())
        if sum(len(x) for x in self._X) >= self.rows:
            self.flush()

    def flush(self) -> None:
        from scipy.linalg.blas import ssyrk

        if not self._X:
            return
        X, Y = np.concatenate(self._X), np.concatenate(self._Y)
        self._X, self._Y = [], []
        self.XtX += ssyrk(1.0, X.T, trans=0, lower=0)  # X.T is Fortran-ordered: no copy; upper triangle
        self.XtY += X.T @ Y

    def solve(self, ridge: float) -> Tensor:
        """[P, D] float64 (X^T X + lam I)^-1 X^T Y, lam = ``ridge`` x the mean diagonal of X^T X."""
        self.flush()
        A = np.triu(self.XtX) + np.triu(self.XtX, 1).T
        lam = ridge * max(float(A.diagonal().mean()), 1e-30)
        return torch.linalg.solve(torch.from_numpy(A + lam * np.eye(len(A))), torch.from_numpy(self.XtY))


@torch.no_grad()
def fit_decoder(ctx: LiftContext, params: dict, decoder: FeatureDecoder, views, ridge: float = 1e-3,
                progress=None, weights=None) -> dict:
    """Every tap of the decoder's Conv2d (f -> D, k x k, no bias) by ridge least squares, in place: the
    rendered features of ``views`` (geometry and f fixed) against their tokens, where the feature loss takes
    them (``solve_targets_at``: grid = the decoded render average-pooled to the token grid, exact since pooling
    and the convolution are both linear; render = the tokens bilinearly upsampled). ``ridge`` is relative to
    the mean diagonal of the normal matrix. ``weights``: the views' [H*W, N] compositing weights
    (``ViewWeights.pixels``), if already extracted: each render is then a sparse product. Returns {"views",
    "first_view_fit_cosine"}. Hand-written: a (f k^2)-square linear solve, no library call to wrap."""
    cfg = ctx.cfg
    W, H = ctx.size
    k = decoder.conv.kernel_size[0]
    D, C = decoder.out_dim, decoder.in_dim
    fv = FixedViews(params, views, W, H, cfg.raster_backend, keep=False)
    feats = params["features"].detach().float()
    f32 = np.ascontiguousarray(feats.cpu().numpy())
    grid = ctx.cache.grid_size if cfg.solve_targets_at == "grid" else None

    def design(i, v):
        if weights is not None:
            img = torch.from_numpy(weights[i] @ f32).reshape(H, W, C).permute(2, 0, 1)[None]
        else:
            img = fv.render(i, feats).permute(2, 0, 1)[None]  # [1, C, H, W]
        idx = ctx.cache.index(v.name)
        Y = ctx.cache.grid(idx) if grid else ctx.cache.target(idx, W, H)[0]
        return pooled_design(img.cpu(), k, grid).T, Y.reshape(D, -1).T.cpu()

    ne = NormalEquations(C * k * k, D)
    for i, v in enumerate(fv.views):
        ne.add(*design(i, v))
        if progress is not None:
            progress.update(1)
    Wd = ne.solve(ridge)  # [P, D]
    if not bool(torch.isfinite(Wd).all()):
        raise NonFiniteError(f"{ctx.name}: solve: the least-squares decoder is not finite")
    w = decoder.conv.weight
    w.copy_(Wd.T.reshape(D, C, k, k).to(w.dtype))
    X, Y = design(0, fv.views[0])
    fit = float(F.cosine_similarity(X.double() @ Wd, Y.double(), dim=1).mean())
    return {"views": len(fv.views), "first_view_fit_cosine": fit}


def joint_refine(ctx: LiftContext, params: dict, decoder: FeatureDecoder, extent: float, iterations: int
                 ) -> list[dict]:
    """``iterations`` of Stage 1's optimisation (``fit3d.lift.optimize``'s step: colour + feature loss, all
    parameters and the decoder, FiT3D's learning rates with the xyz decay over ``iterations``) from the solved
    field, in place; feature gradients reach geometry and opacity (without them, colour moves the surfels
    under fixed features: RedKitchen 0.952 -> 0.931 in 400 iterations; with them 0.957), no density control.
    Solve as the initialiser of optimize."""
    from fit3d.lift import optimize as opt_mod

    cfg = dataclasses.replace(ctx.cfg, iterations=iterations, feature_grad_to_geometry=True, densify=False)
    jctx = dataclasses.replace(ctx, cfg=cfg)
    st = opt_mod._State(params, extent, "solve", opt_mod.make_optimizer(params, cfg, extent), decoder,
                        torch.optim.Adam(decoder.parameters(), lr=cfg.lr_decoder, eps=1e-15),
                        DensifyStats(len(params["means"]), ctx.device), torch.Generator().manual_seed(cfg.seed),
                        np.random.default_rng(cfg.seed))
    never = DensifySchedule(start=1, stop=0, interval=1, opacity_reset_interval=1)  # densify is off anyway
    history, run = [], {}
    for it in tqdm(range(iterations), desc=f"joint {ctx.name}", disable=not cfg.progress, unit="it", leave=False):
        for k, v in opt_mod._step(jctx, st, it, never, 1).items():  # SH degree: the colour phase's (1/it)
            run[k] = run.get(k, 0.0) + v
        if (it + 1) % max(1, iterations // 20) == 0 or it + 1 == iterations:
            n = (it + 1) - (history[-1]["iteration"] if history else 0)
            history.append({"iteration": it + 1, **{k: v / n for k, v in run.items()}, "phase": "joint"})
            run = {}
    params.update(st.params)
    return history


def solve_scene(ctx: LiftContext) -> LiftResult:
    """Stage 1 by ``method = "solve"``: geometry (``solve_geometry``), then features in closed form
    (``solve_features``) with the training tokens' PCA as decoder, optionally refined (f and decoder:
    ``solve_refine_iterations``; everything: ``solve_joint_iterations``)."""
    cfg = ctx.cfg
    torch.manual_seed(cfg.seed)
    c0, t0 = time.process_time(), time.perf_counter()
    params, extent, source, history, info = solve_geometry(ctx)
    t1 = time.perf_counter()
    decoder = FeatureDecoder(cfg.feature_dim, ctx.cache.dim, cfg.solve_decoder_kernel or cfg.decoder_kernel
                             ).to(ctx.device)
    pca_init_decoder(decoder, ctx.cache, ctx.train_names, seed=cfg.seed)
    lsq = cfg.solve_decoder == "lsq"
    vs, ds = max(1, cfg.solve_view_stride), max(1, cfg.solve_decoder_stride)
    reuse = ds // vs if lsq and ds % vs == 0 else 0  # the decoder's views are every (ds / vs)-th of the solve's
    params, finfo, pixels = solve_features(ctx, params, decoder, keep_pixels=reuse)
    td = time.perf_counter()
    if lsq:
        views = [ctx.views[i] for i in ctx.train_idx][::ds]
        finfo["decoder"] = fit_decoder(ctx, params, decoder, views, weights=pixels)
    t2 = time.perf_counter()
    refine = refine_features(ctx, params, decoder, cfg.solve_refine_iterations) if cfg.solve_refine_iterations else []
    t3 = time.perf_counter()
    joint = joint_refine(ctx, params, decoder, extent, cfg.solve_joint_iterations) if cfg.solve_joint_iterations else []
    t4 = time.perf_counter()
    sh = min(cfg.max_sh_degree, (len(history) and history[-1]["iteration"] - 1) // max(1, info["iterations"] // 30))
    if joint:
        sh = max(sh, min(cfg.max_sh_degree, cfg.solve_joint_iterations - 1))
    timings = {"geometry": t1 - t0, **info.pop("seconds"), **finfo.pop("seconds"), "decoder": t2 - td, "solve": t2 - t1,
               "refine": t3 - t2, "joint": t4 - t3, "lift": t4 - t0, "lift_cpu": time.process_time() - c0}
    return LiftResult(params, decoder, sh, extent, source, history + refine + joint, timings,
                      {"solve": {**info, **finfo}})
