"""Splatting: feature Gaussians, the differentiable rasterizer, and Stage 1 lifting."""

from fit3d.splat.decoder import FeatureDecoder
from fit3d.splat.gaussians import FeatureGaussians


def rasterize(*args, **kwargs):
    """See :func:`fit3d.splat.rasterize.rasterize`."""
    from fit3d.splat.rasterize import rasterize as _rasterize

    return _rasterize(*args, **kwargs)


__all__ = ["FeatureGaussians", "FeatureDecoder", "rasterize"]
