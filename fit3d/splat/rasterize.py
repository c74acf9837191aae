"""Differentiable Gaussian rasterizer: public API and backend dispatch.

``rasterize`` follows gsplat 1.5 ``rasterization(..., sh_degree=None, render_mode="RGB+ED",
rasterize_mode="classic", packed=False)`` for one camera. Backends:

* ``"torch"``: :mod:`fit3d.splat.projection` + :mod:`fit3d.splat.raster_torch` (any device);
* ``"numba"``: the same projection fused per Gaussian (:mod:`fit3d.splat.projection_numba`), the same
  tile lists (binned by a counting sort), compositing by :mod:`fit3d.splat.raster_numba` (CPU only; several
  times faster there);
* ``"gsplat"``: gsplat's CUDA kernels (:mod:`fit3d.splat.raster_gsplat`);
* ``"reference"``: the slow float64 yardstick (:mod:`fit3d.splat.reference`);
* ``"auto"``: gsplat on CUDA when it imports, numba on CPU when it imports, torch otherwise.

``geometry_channels=k`` lets only the first k channels (and the expected depth) send gradients to
the geometry and opacities; the other channels behave as if rendered through detached geometry
(FiT3D lifting: feature losses train only the features). numba / torch / reference do it in the
same pass by restricting the backward's channel sums; gsplat renders the rest in a second pass
through detached geometry (:func:`rasterize_two_pass`).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor

BACKENDS = ("auto", "torch", "numba", "gsplat", "reference")


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    try:
        import fit3d.splat.raster_numba  # noqa: F401
    except Exception:  # numba missing or broken
        return False
    return True


@functools.lru_cache(maxsize=1)
def gsplat_available() -> bool:
    """True when gsplat imports and CUDA is present (kernels build on first use)."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:  # gsplat missing or its extension failed to load
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"rasterize: unknown backend {backend!r}, expected one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda" and gsplat_available():
            return "gsplat"
        return "numba" if device.type == "cpu" and numba_available() else "torch"
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"rasterize: backend 'numba' needs CPU tensors, got {device}")
    return backend


def torch_fallback_on_cuda(backend: str, device) -> bool:
    """Whether ``backend`` resolves to the torch reference on a CUDA device (``auto`` without gsplat): on an H200 it
    did about 4 view passes a second, slower than numba on a CPU (docs/gpu.md), so callers move work or warn."""
    device = torch.device(device)
    return backend == "auto" and device.type == "cuda" and resolve_backend(backend, device) == "torch"


class CpuKernels(NamedTuple):
    """The three steps of the ``"numba"`` / ``"torch"`` backends: project, bin into depth-sorted tile lists,
    composite."""

    project: Callable
    tile_lists: Callable
    composite: Callable


def cpu_kernels(backend: str) -> CpuKernels:
    """The ``"numba"`` or ``"torch"`` backend's kernels: the one choice for ``rasterize`` and for callers that
    keep a projection across passes (``fit3d.splat.fixed_views.FixedViews``)."""
    if backend == "numba":
        from fit3d.splat.projection_numba import project
        from fit3d.splat.raster_numba import build_tile_lists, composite
    elif backend == "torch":
        from fit3d.splat.projection import project
        from fit3d.splat.raster_torch import build_tile_lists, composite
    else:
        raise ValueError(f"cpu_kernels: {backend!r} is not a CPU backend (numba / torch)")
    return CpuKernels(project, build_tile_lists, composite)


def project_to_tiles(backend: str, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor,
                     K: Tensor, width: int, height: int, *, near_plane: float = 0.01, eps2d: float = 0.3):
    """(``Projected``, ``TileLists``): the first half of the ``"numba"`` / ``"torch"`` backends' rasterisation
    (projection, then the depth-sorted per-tile lists), for ``rasterize`` and for renderers that keep it across
    passes (:class:`fit3d.splat.fixed_views.FixedViews`). viewmat [4, 4] and K [3, 3] are cast to means' dtype."""
    kernels = cpu_kernels(backend)
    dt = means.dtype
    viewmat, K = viewmat.detach().to(device=means.device, dtype=dt), K.detach().to(device=means.device, dtype=dt)
    p = kernels.project(means, quats, scales, opacities, viewmat, K, width, height, near_plane=near_plane, eps2d=eps2d)
    return p, kernels.tile_lists(p.means2d, p.radii, p.depths, width, height)


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmat: Tensor, K: Tensor, width: int, height: int, *, backend: str = "auto",
              near_plane: float = 0.01, eps2d: float = 0.3, geometry_channels: int | None = None):
    """Render N Gaussians carrying C channels from one pinhole camera.

    means [N, 3], quats [N, 4] (w, x, y, z; normalised inside), scales [N, 3] and opacities [N]
    (activated), colors [N, C], viewmat [4, 4] world-to-camera (OpenCV axes), K [3, 3].
    Returns image [H, W, C], depth [H, W] (expected depth, 0 where nothing was hit),
    alpha [H, W] (accumulated opacity). Differentiable w.r.t. means, quats, scales, opacities, colors.
    ``geometry_channels`` (0..C, None = C): only colors[:, :k], depth and alpha send gradients to
    means / quats / scales / opacities; every channel gets its colour gradient. Outputs do not change.
    """
    width, height = int(width), int(height)
    backend = resolve_backend(backend, means.device)
    C = colors.shape[1]
    k = C if geometry_channels is None else int(geometry_channels)
    if not 0 <= k <= C:
        raise ValueError(f"rasterize: geometry_channels={geometry_channels} outside 0..{C} "
                         f"(colors {tuple(colors.shape)})")
    if backend == "reference":
        from fit3d.splat.reference import rasterize_reference

        image, depth, alpha = rasterize_reference(means, quats, scales, opacities, colors, viewmat, K,
                                                  width, height, near_plane=near_plane, eps2d=eps2d,
                                                  geometry_channels=k)
        return image.to(colors.dtype), depth.to(colors.dtype), alpha.to(colors.dtype)
    if backend == "gsplat":
        if k < C:  # gsplat's backward has no channel mask: two passes
            return rasterize_two_pass(means, quats, scales, opacities, colors, viewmat, K, width, height, k,
                                      backend=backend, near_plane=near_plane, eps2d=eps2d)
        from fit3d.splat.raster_gsplat import rasterize_gsplat

        return rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height,
                                near_plane=near_plane, eps2d=eps2d)

    composite = cpu_kernels(backend).composite
    dt = means.dtype
    p, lists = project_to_tiles(backend, means, quats, scales, opacities, viewmat, K, width, height,
                                near_plane=near_plane, eps2d=eps2d)
    if backend == "numba" and not (torch.is_grad_enabled() and any(
            t.requires_grad for t in (means, quats, scales, opacities, colors))):
        from fit3d.splat.raster_numba import composite_rows

        # no gradient wanted (Stage 2 targets): the kernel reads each Gaussian's channels in place, depth last
        out, alpha = composite_rows(p.means2d, p.conics, p.opacities, colors.to(dt), p.ids, p.depths[:, None],
                                    lists, width, height)
        return out[..., :C], out[..., C] / alpha.clamp_min(1e-10), alpha
    cols = colors[p.ids].to(dt)
    # [M, C + 1]: geometry channels, depth (also a geometry channel), the rest; k = C: colour + depth
    feats = torch.cat([cols[:, :k], p.depths[:, None], cols[:, k:]], -1)
    out, alpha = composite(p.means2d, p.conics, p.opacities, feats, lists, width, height, geometry_channels=k + 1)
    depth = out[..., k] / alpha.clamp_min(1e-10)
    image = out[..., :-1] if k == C else torch.cat([out[..., :k], out[..., k + 1:]], -1)
    return image, depth, alpha


def rasterize_two_pass(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                       viewmat: Tensor, K: Tensor, width: int, height: int, geometry_channels: int, **kw):
    """``rasterize(..., geometry_channels=k)`` as two passes (for backends without a channel mask):
    colors[:, :k] with depth and alpha through the live geometry, colors[:, k:] through detached
    geometry. Same arguments (``kw``: backend, near_plane, eps2d) and outputs as :func:`rasterize`."""
    k = int(geometry_channels)
    image, depth, alpha = rasterize(means, quats, scales, opacities, colors[:, :k], viewmat, K, width, height, **kw)
    geo = (means.detach(), quats.detach(), scales.detach(), opacities.detach())
    rest, _, _ = rasterize(*geo, colors[:, k:], viewmat, K, width, height, **kw)
    return torch.cat([image, rest], -1), depth, alpha
