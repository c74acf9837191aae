"""Renders of fixed geometry from a fixed list of views, and their compositing weights as sparse matrices.

With the geometry (means, rotations, scales, opacities) fixed, a render is linear in the per-Gaussian
channels: ``render(i, c) = W_i c`` for view i's compositing weights ``W_i`` [H*W, N] (alpha x transmittance
of Gaussian j at pixel p). Methods that render many channel sets through the same geometry (Stage 1's
closed-form features: averages, conjugate-gradient passes, a least-squares decoder) keep each view's
projection and tile lists (:func:`fit3d.splat.rasterize.project_to_tiles`) and composite only, or take the
weights once (``weights``, numba backend) and turn every later pass into a sparse product.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fit3d.splat.rasterize import cpu_kernels, project_to_tiles, rasterize, resolve_backend


def camera(view, device) -> tuple[Tensor, Tensor]:
    """(viewmat [4, 4] world-to-camera, K [3, 3]) float32 of a view with ``c2w`` [4, 4] and ``K`` [3, 3]."""
    viewmat = torch.linalg.inv(torch.as_tensor(view.c2w, dtype=torch.float32, device=device))
    return viewmat, torch.as_tensor(view.K, dtype=torch.float32, device=device)


class FixedViews:
    """Renders of per-Gaussian channels through fixed geometry from a list of views. means [N, 3], quats
    [N, 4], scales [N, 3], opacities [N] (activated, as ``rasterize`` takes them; detached here); ``views``:
    objects with ``c2w`` and ``K`` (``fit3d.data.scene.View``). With the CPU backends (numba / torch) each
    view's projection and tile lists are computed once and, with ``keep``, reused by every pass (a third of a
    pass's time); other backends call ``rasterize`` each time. Hand-written: ``rasterize``'s API cannot say
    that the geometry is fixed; this is its numba / torch path with the first half kept."""

    def __init__(self, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, views, width: int,
                 height: int, backend: str = "auto", keep: bool = True):
        self.geometry = tuple(t.detach() for t in (means, quats, scales, opacities))
        self.views, self.size = list(views), (int(width), int(height))
        self.backend = resolve_backend(backend, self.device)
        self.keep = keep  # False for a single pass: nothing to reuse, and ~5 MB a view at 50k Gaussians
        self._cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.views)

    @property
    def num_gaussians(self) -> int:
        return len(self.geometry[0])

    @property
    def device(self) -> torch.device:
        return self.geometry[0].device

    @torch.no_grad()
    def projected(self, i: int):
        """(``Projected``, ``TileLists``) of view ``i`` (numba / torch backends), cached with ``keep``."""
        if i in self._cache:
            return self._cache[i]
        out = project_to_tiles(self.backend, *self.geometry, *camera(self.views[i], self.device), *self.size)
        if self.keep:
            self._cache[i] = out
        return out

    def render(self, i: int, colors: Tensor) -> Tensor:
        """[H, W, C] view ``i``'s composite of ``colors`` [N, C] (differentiable w.r.t. colors only)."""
        W, H = self.size
        if self.backend not in ("numba", "torch"):
            img, _, _ = rasterize(*self.geometry, colors, *camera(self.views[i], self.device), W, H,
                                  backend=self.backend, geometry_channels=0)
            return img
        composite = cpu_kernels(self.backend).composite
        p, lists = self.projected(i)
        feats = torch.cat([p.depths[:, None], colors[p.ids]], -1)  # depth: the (unused) geometry channel
        out, _ = composite(p.means2d, p.conics, p.opacities, feats, lists, W, H, geometry_channels=1)
        return out[..., 1:]

    def weights(self, i: int) -> "sp.csr_matrix":
        """[H*W, N] view ``i``'s compositing weights (float32; numba backend only): ``render(i, c)`` equals
        ``(weights(i) @ c).reshape(H, W, C)``."""
        if self.backend != "numba":
            raise ValueError(f"compositing weights need the numba backend, not {self.backend!r}")
        from fit3d.splat.raster_numba import composite_weights

        W, H = self.size
        p, lists = self.projected(i)
        indptr, gids, w = composite_weights(p.means2d, p.conics, p.opacities, lists, W, H)
        cols = p.ids[gids].numpy()  # projected rows -> Gaussians
        return sp.csr_matrix((w.numpy().astype(np.float32, copy=False), cols, indptr.numpy()),
                             shape=(W * H, self.num_gaussians))
