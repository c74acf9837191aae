"""A picture of a scene's views: RGB, depth (one colour scale) and labels (with a class legend)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from fit3d.data.scene import Scene
from fit3d.viz.images import (BACKGROUND, LABEL_PALETTE, TEXT, add_colorbar, colorize_depth, colorize_labels,
                              depth_range, font, hstack, vstack)


def legend(names: Sequence[str], ids: Sequence[int], width: int, palette: np.ndarray = LABEL_PALETTE,
           size: int = 14) -> np.ndarray:
    """Colour swatches with class names, wrapped to ``width`` pixels: uint8 [h, width, 3]."""
    f = font(size)
    sw, gap, line = size, 6, int(size * 1.6)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, x, y = [], gap, 0
    for i in ids:
        label = names[i] if 0 <= i < len(names) else str(i)
        w = sw + 4 + int(probe.textlength(label, font=f)) + 2 * gap
        if x + w > width and x > gap:
            x, y = gap, y + line
        items.append((x, y, i, label))
        x += w
    canvas = Image.new("RGB", (width, y + line + gap), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for x, y, i, label in items:
        draw.rectangle([x, y + 3, x + sw, y + 3 + sw], fill=tuple(int(c) for c in palette[i % len(palette)]))
        draw.text((x + sw + 4, y + 2), label, fill=TEXT, font=f)
    return np.asarray(canvas)


def scene_figure(scene: Scene, num_views: int = 4, panel_height: int = 180) -> np.ndarray:
    """Rows RGB / depth / labels for ``num_views`` evenly spaced views, a depth colour bar and a class
    legend (names from ``scene.meta['classes']`` when present). Returns uint8 [H, W, 3]."""
    idx = np.unique(np.linspace(0, len(scene.views) - 1, min(num_views, len(scene.views))).round().astype(int))
    views = [scene.views[i] for i in idx]
    titles = [f"view {v.name}" for v in views]
    rows = [hstack([v.image for v in views], titles, height=panel_height)]
    depths = [v.depth for v in views if v.depth is not None]
    if len(depths) == len(views):
        lo, hi = depth_range(depths)
        row = hstack([colorize_depth(d, lo, hi) for d in depths], height=panel_height)
        rows.append(add_colorbar(row, lo, hi, panel_height))
    if all(v.labels is not None for v in views):
        rows.append(hstack([colorize_labels(v.labels) for v in views], height=panel_height))
        names = scene.meta.get("classes") or []
        if isinstance(names, dict):
            names = [names.get(i, str(i)) for i in range(max(names) + 1)] if names else []
        present = np.unique(np.concatenate([np.asarray(v.labels).ravel() for v in views]))
        rows.append(legend(list(names), [int(i) for i in present if i != 255], rows[0].shape[1]))
    return vstack(rows)
