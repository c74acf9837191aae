"""Splatting: feature Gaussians and the differentiable rasterizer (numba / torch / gsplat backends, a
float64 reference), projection, rendering and 3DGS density control. Stage 1 lives in ``fit3d.lift``."""

from fit3d.splat.gaussians import FeatureGaussians


def rasterize(*args, **kwargs):
    """See :func:`fit3d.splat.rasterize.rasterize`."""
    from fit3d.splat.rasterize import rasterize as _rasterize

    return _rasterize(*args, **kwargs)


__all__ = ["FeatureGaussians", "rasterize"]
