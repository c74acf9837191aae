"""Side-by-side pictures from arrays: an image next to the PCA of feature maps (one basis for all, so a
colour means the same feature in every panel) and depth maps on one colour scale."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from fit3d.viz.images import add_colorbar, colorize_depth, depth_range, hstack, titled, to_uint8, upsample, vstack
from fit3d.viz.pca import pca_rgb


def feature_pca_figure(image, feature_maps: Mapping[str, torch.Tensor], panel_height: int | None = 320) -> np.ndarray:
    """image | PCA of each map, all maps coloured with one PCA basis (e.g. rendered vs real features
    during lifting: ``{"real": f [D, h, w], "rendered": g [D, h', w']}``). Maps are shown at the image size
    (nearest, so patches stay crisp). Returns uint8 [H, W, 3]."""
    return comparison_figure(image, feature_maps, panel_height=panel_height, pca_titles=list(feature_maps))


def comparison_figure(image, feature_maps: Mapping[str, torch.Tensor], depth_maps: Mapping[str, np.ndarray] | None = None,
                      *, panel_height: int | None = 320, pca_titles: list[str] | None = None) -> np.ndarray:
    """image [H, W, 3] | PCA of each feature map [D, h, w] (one basis) | each depth map [H, W] (one scale,
    with a colour bar). Titles: "image", ``pca_titles`` (default "PCA <key>") and the depth maps' keys."""
    img = to_uint8(image)
    H, W = img.shape[:2]
    rgbs = pca_rgb([f.detach().float().cpu() for f in feature_maps.values()])
    panels = [img] + [upsample(c, H, W) for c in rgbs]
    titles = ["image", *(pca_titles or [f"PCA {k}" for k in feature_maps])]
    depths = list((depth_maps or {}).values())
    if depths:
        lo, hi = depth_range(depths)
        panels += [colorize_depth(d, lo, hi) for d in depths]
        titles += list(depth_maps)
    height = panel_height or H
    fig = hstack(panels, titles, height=height)
    if depths:  # a colour bar for the shared depth scale, level with the panels
        fig = add_colorbar(fig, lo, hi, height)
    return fig


def heldout_pca_figure(triples, title: str | None = None, panel_height: int = 160) -> np.ndarray:
    """Rows of (image [H, W, 3], backbone features [D, h, w], rendered + decoded features [D, h, w]): image |
    PCA of the backbone's features | PCA of the lifted scene's rendered features, one basis for all maps,
    each column titled, ``title`` above all. Returns uint8 [H', W', 3]."""
    maps = pca_rgb([m for _, t, r in triples for m in (t, r)])
    rows = []
    for k, (img, _, _) in enumerate(triples):
        im = to_uint8(img)
        H, W = im.shape[:2]
        rows.append(hstack([im, upsample(maps[2 * k], H, W), upsample(maps[2 * k + 1], H, W)],
                           [f"held-out view {k + 1}", "backbone features (target)", "rendered + decoded (lift)"],
                           height=panel_height))
    fig = vstack(rows)
    return titled(fig, title, 16, max_lines=3) if title else fig
