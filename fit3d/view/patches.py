"""Patch similarity to a point of an image, for several backbones side by side (the viewer's
original-vs-fine-tuned panel; pure torch / numpy)."""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fit3d.probe.corr import sample_features
from fit3d.viz.images import add_colorbar, colorize, hstack, to_uint8, upsample, vstack

MARKER = (0, 255, 255)  # cyan: visible on the image and on inferno heatmaps


def patch_similarity(feat: torch.Tensor, point: tuple[float, float], height: int, width: int) -> np.ndarray:
    """[h, w] cosine of every patch of ``feat`` [D, h, w] (covering a ``height`` x ``width`` image) to the
    feature bilinearly sampled at pixel ``point`` (u, v)."""
    f = feat.detach().float().cpu()
    q = F.normalize(sample_features(f, np.array([point], np.float64), height, width), dim=1)[0]  # [D]
    return torch.einsum("d,dhw->hw", q, F.normalize(f, dim=0)).numpy()


def draw_marker(image: np.ndarray, point: tuple[float, float], radius: int = 6) -> np.ndarray:
    """``image`` (uint8 RGB) with a ring around pixel ``point`` (u, v)."""
    out = np.ascontiguousarray(to_uint8(image).copy())
    c = (int(round(point[0])), int(round(point[1])))
    cv2.circle(out, c, radius + 2, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.circle(out, c, radius, MARKER, 2, cv2.LINE_AA)
    return out


def similarity_panel(image, features: Mapping[str, torch.Tensor], point: tuple[float, float],
                     panel_height: int = 240, title: str = "image", vertical: bool = False) -> np.ndarray:
    """image with the point marked | one heatmap per entry of ``features`` ({name: [D, h, w]}), the cosine
    of each patch to the point's feature, all on one colour scale (min over the maps .. 1, colour bar);
    ``vertical`` stacks the panels (for a narrow side panel). ``image`` [H, W, 3] is the picture the
    features were computed from; returns uint8 [H', W', 3]."""
    img = to_uint8(image)
    H, W = img.shape[:2]
    sims = {k: patch_similarity(f, point, H, W) for k, f in features.items()}
    lo = float(min(s.min() for s in sims.values())) if sims else 0.0
    lo = min(lo, 0.99)
    scale = panel_height / H
    pt = (point[0] * scale, point[1] * scale)
    h2, w2 = panel_height, max(1, round(W * scale))
    panels = [draw_marker(upsample(img, h2, w2, nearest=False), pt)]
    for s in sims.values():
        panels.append(draw_marker(upsample(colorize(s, lo, 1.0, "inferno"), h2, w2), pt))
    titles = [f"{title} (point {point[0]:.0f}, {point[1]:.0f})",
              *(f"{k}: cosine to the point" for k in sims)]
    bar = dict(cmap="inferno", unit="", near_is_warm=False)
    if vertical:
        return vstack([add_colorbar(hstack([p], [t], height=panel_height), lo, 1.0, panel_height, **bar)
                       for p, t in zip(panels, titles)])
    row = hstack(panels, titles, height=panel_height)
    return add_colorbar(row, lo, 1.0, panel_height, **bar)
