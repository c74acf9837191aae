"""Picture helpers: token maps to image size, depth and label colouring, titled panels, atomic PNGs.

All images here are numpy uint8 RGB [H, W, 3] unless said otherwise.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fit3d.io import atomic_path

BACKGROUND = (255, 255, 255)
TEXT = (30, 30, 30)

# A fixed label palette (Tableau 10, then lighter variants); ids beyond it get hashed colours.
_BASE = np.array([
    [78, 121, 167], [242, 142, 43], [225, 87, 89], [118, 183, 178], [89, 161, 79],
    [237, 201, 72], [176, 122, 161], [255, 157, 167], [156, 117, 95], [186, 176, 172],
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
], dtype=np.uint8)


def _palette() -> np.ndarray:
    rng = np.random.default_rng(12345)
    extra = rng.integers(40, 230, size=(256 - len(_BASE), 3)).astype(np.uint8)
    pal = np.concatenate([_BASE, extra])
    pal[255] = 0  # the usual "ignore" id is black
    return pal


LABEL_PALETTE: np.ndarray = _palette()  # [256, 3] uint8


def to_uint8(image) -> np.ndarray:
    """[H, W, 3] (or [3, H, W] tensor) float in [0, 1] or uint8 -> uint8 [H, W, 3]."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = image.transpose(1, 2, 0)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, 2)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, -1)
    if image.dtype == np.uint8:
        return image
    return (np.clip(image.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def upsample(image: np.ndarray, height: int, width: int, nearest: bool = True) -> np.ndarray:
    """Resize [h, w, C] to [height, width, C]; nearest keeps token maps' patches crisp."""
    if image.shape[:2] == (height, width):
        return image
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp).reshape(height, width, -1)


def depth_range(depths: Sequence[np.ndarray], percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """(vmin, vmax): percentiles of the valid (> 0, finite) values of all maps, for one shared colour scale."""
    vals = [np.asarray(d, dtype=np.float64).ravel() for d in depths]
    v = np.concatenate(vals) if vals else np.zeros(0)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, percentiles)
    return float(lo), float(hi if hi > lo else lo + 1e-6)


_CMAPS = {"turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO, "viridis": cv2.COLORMAP_VIRIDIS,
          "magma": cv2.COLORMAP_MAGMA, "plasma": cv2.COLORMAP_PLASMA}


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = "turbo",
             invalid: np.ndarray | None = None) -> np.ndarray:
    """[H, W] scalars -> [H, W, 3] uint8 RGB through ``cmap`` over [vmin, vmax]; ``invalid`` pixels black."""
    v = np.asarray(values, dtype=np.float64)
    norm = np.clip((np.nan_to_num(v) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    bgr = cv2.applyColorMap((norm * 255 + 0.5).astype(np.uint8), _CMAPS[cmap])
    rgb = bgr[..., ::-1].copy()
    if invalid is not None:
        rgb[invalid] = 0
    return rgb


def colorize_depth(depth, vmin: float | None = None, vmax: float | None = None, cmap: str = "turbo",
                   near_is_warm: bool = True) -> np.ndarray:
    """Depth [H, W] metres (0 / non-finite = invalid, shown black) -> uint8 RGB. Pass one (vmin, vmax)
    from :func:`depth_range` to several maps so their colours compare. Near is red with turbo."""
    d = np.asarray(depth.detach().cpu() if hasattr(depth, "detach") else depth, dtype=np.float64)
    if vmin is None or vmax is None:
        lo, hi = depth_range([d])
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    invalid = ~np.isfinite(d) | (d <= 0)
    if near_is_warm:  # turbo's warm end is high: flip so near things are warm
        return colorize(vmax + vmin - d, vmin, vmax, cmap, invalid)
    return colorize(d, vmin, vmax, cmap, invalid)


def colorize_labels(labels, palette: np.ndarray = LABEL_PALETTE) -> np.ndarray:
    """Class ids [H, W] -> uint8 RGB with a fixed palette (id 255 = ignore is black)."""
    lab = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).astype(np.int64)
    return palette[np.clip(lab, 0, len(palette) - 1) % len(palette)]


@lru_cache(maxsize=8)
def font(size: int = 15):
    """Pillow's default font at ``size`` (scalable when Pillow has FreeType, else the bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(draw, text: str, f, width: int, max_lines: int) -> list[str]:
    """``text`` broken at spaces into at most ``max_lines`` lines no wider than ``width`` (the last one
    shortened with an ellipsis when the rest does not fit)."""
    lines, words = [], text.split(" ")
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and draw.textlength(line + " " + words[0], font=f) <= width:
            line += " " + words.pop(0)
        lines.append(line)
    if words:
        lines[-1] += " " + " ".join(words)
    last = lines[-1] if lines else ""
    while last and draw.textlength(last, font=f) > width:
        last = last[:-2] + "…" if len(last) > 2 else ""
    return lines[:-1] + [last]


def titled(image: np.ndarray, title: str, size: int = 15, bar: int | None = None, max_lines: int = 1) -> np.ndarray:
    """``image`` with ``title`` centred in a white bar above it: a title wider than the image is broken
    into up to ``max_lines`` lines, then shortened with an ellipsis."""
    f = font(size)
    h, w = image.shape[:2]
    lines = _wrap(ImageDraw.Draw(Image.new("RGB", (1, 1))), title, f, w - 4, max(1, max_lines))
    line_h = bar or int(size * 1.7)
    canvas = Image.new("RGB", (w, h + line_h * len(lines)), BACKGROUND)
    canvas.paste(Image.fromarray(to_uint8(image)), (0, line_h * len(lines)))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        tw = draw.textlength(text, font=f)
        draw.text(((w - tw) / 2, i * line_h + (line_h - size) / 2 - 1), text, fill=TEXT, font=f)
    return np.asarray(canvas)


def hstack(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, pad: int = 6,
           height: int | None = None, title_size: int = 15) -> np.ndarray:
    """Side-by-side panels (each resized to ``height``, default the first one's), titled, white gaps."""
    if not images:
        raise ValueError("hstack: no images")
    height = height or images[0].shape[0]
    tiles = []
    for i, im in enumerate(images):
        im = to_uint8(im)
        if im.shape[0] != height:
            w = max(1, round(im.shape[1] * height / im.shape[0]))
            im = upsample(im, height, w, nearest=False)
        if titles is not None:
            im = titled(im, titles[i], title_size)
        tiles.append(im)
    H = max(t.shape[0] for t in tiles)
    W = sum(t.shape[1] for t in tiles) + pad * (len(tiles) + 1)
    out = np.full((H + 2 * pad, W, 3), BACKGROUND, dtype=np.uint8)
    x = pad
    for t in tiles:
        out[pad:pad + t.shape[0], x:x + t.shape[1]] = t
        x += t.shape[1] + pad
    return out


def vstack(rows: Sequence[np.ndarray], pad: int = 0) -> np.ndarray:
    """Rows on top of each other, left-aligned on white (rows may differ in width)."""
    W = max(r.shape[1] for r in rows)
    out = np.full((sum(r.shape[0] for r in rows) + pad * (len(rows) - 1), W, 3), BACKGROUND, dtype=np.uint8)
    y = 0
    for r in rows:
        out[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0] + pad
    return out


def colorbar(vmin: float, vmax: float, height: int, cmap: str = "turbo", width: int = 14, unit: str = "m",
             near_is_warm: bool = True, size: int = 12) -> np.ndarray:
    """A vertical colour bar [height, ~width + labels, 3] with its min / max written next to it."""
    ramp = np.linspace(vmin, vmax, height)[:, None].repeat(width, 1)
    bar = colorize_depth(ramp, vmin, vmax, cmap, near_is_warm) if near_is_warm else colorize(ramp, vmin, vmax, cmap)
    f = font(size)
    label_w = int(size * 3.6)
    canvas = Image.new("RGB", (width + label_w, height), BACKGROUND)
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((width + 3, 0), f"{vmin:.3g}{unit}", fill=TEXT, font=f)
    draw.text((width + 3, height - size - 2), f"{vmax:.3g}{unit}", fill=TEXT, font=f)
    return np.asarray(canvas)


def add_colorbar(row: np.ndarray, vmin: float, vmax: float, height: int, pad: int = 6, **kw) -> np.ndarray:
    """``row`` (an :func:`hstack` of panels ``height`` tall) with a :func:`colorbar` on its right, level with
    the panels (they sit ``pad`` above the row's bottom edge)."""
    bar = colorbar(vmin, vmax, height, **kw)
    top = row.shape[0] - pad - height
    ext = np.full((row.shape[0], bar.shape[1] + pad, 3), BACKGROUND, np.uint8)
    ext[top:top + height, :bar.shape[1]] = bar
    return np.concatenate([row, ext], 1)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write uint8 RGB (or float in [0, 1]) as a PNG, atomically."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Any image file cv2 reads (PNG, JPEG, ...) -> uint8 RGB [H, W, 3]; raises ``SceneError`` if unreadable."""
    from pathlib import Path

    from fit3d.data.readers.common import read_rgb

    return read_rgb(Path(path))
