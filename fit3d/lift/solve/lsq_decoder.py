"""The solve's decoder by least squares: every tap of its Conv2d (f -> D, k x k) fitted to the training tokens
from the rendered solved features, geometry and features fixed."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fit3d.errors import NonFiniteError
from fit3d.lift.context import LiftContext
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.solve.passes import solve_views


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
    them (``solve.targets_at``: grid = the decoded render average-pooled to the token grid, exact since pooling
    and the convolution are both linear; render = the tokens bilinearly upsampled). ``ridge`` is relative to
    the mean diagonal of the normal matrix. ``weights``: the views' [H*W, N] compositing weights
    (``ViewWeights.pixels``), if already extracted: each render is then a sparse product. Returns {"views",
    "first_view_fit_cosine"}. Hand-written: a (f k^2)-square linear solve, no library call to wrap."""
    cfg = ctx.cfg
    W, H = ctx.size
    k = decoder.conv.kernel_size[0]
    D, C = decoder.out_dim, decoder.in_dim
    fv = solve_views(params, views, W, H, cfg.raster_backend, ctx.device, keep=False)
    feats = params["features"].detach().float()
    f32 = np.ascontiguousarray(feats.cpu().numpy())
    grid = ctx.cache.grid_size if cfg.solve.targets_at == "grid" else None

    def design(i, v):
        if weights is not None:
            img = torch.from_numpy(weights[i] @ f32).reshape(H, W, C).permute(2, 0, 1)[None]
        else:
            img = fv.render(i, feats.to(fv.device)).permute(2, 0, 1)[None]  # [1, C, H, W]
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
