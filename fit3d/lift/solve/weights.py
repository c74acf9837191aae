"""Every view's compositing weights of fixed geometry as one sparse matrix: each pass of the solve (the
right-hand side, the normal operator) becomes a sparse product instead of a rasterisation."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fit3d.errors import SceneError
from fit3d.splat.fixed_views import FixedViews


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


def torch_csr(m: "sp.csr_matrix") -> Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor (shared data, int32 indices kept; scipy built it valid)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr), torch.from_numpy(m.indices),
                                       torch.from_numpy(m.data), size=m.shape, check_invariants=False)


class ViewWeights:
    """The compositing weights of fixed geometry in a list of views as one sparse matrix M [V*R, N]
    (R rows per view: its pixels, or its tokens when ``grid`` pools the render to the token grid), so every
    pass of the solve is a sparse product instead of a rasterisation: the right-hand side ``M^T t`` and
    ``A X = area * M^T M X``, the normal operator of ``fit3d.lift.solve.passes.normal_matvec``. Built from
    ``FixedViews.weights`` (numba backend); ``den`` [N] holds each Gaussian's total pixel weight sum_p w_pj;
    ``pixels`` (with ``keep_pixels`` = n > 0) every n-th view's own [H*W, N] weights, for renders as sparse
    products later (``fit_decoder``).
    Hand-written: the compositing weights come from our kernel; the products are scipy's."""

    def __init__(self, fv: FixedViews, grid: tuple[int, int] | None, progress=None, keep_pixels: int = 0):
        W, H = fv.size
        pool = pool_matrix(H, W, grid)
        self.rows = pool.shape[0]  # rows of M per view
        self.area = (H * W) / (grid[0] * grid[1]) if grid else 1.0
        blocks, den, self.pixels = [], np.zeros(fv.num_gaussians, np.float64), [] if keep_pixels else None
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
        self.M = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, fv.num_gaussians), dtype=np.float32)
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
            self._torch = tuple(torch_csr(m) for m in (self.M, self.Mt))
        M, Mt = self._torch
        return (self.area * (Mt @ (M @ X.detach().float().contiguous()))).double()
