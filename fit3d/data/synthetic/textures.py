"""Procedural textures attached to surface coordinates (u, v) in metres: value noise, patterns, palettes."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import cv2
import numpy as np

_NOISE_GRID = 64  # value-noise lattice size (wraps)
_NOISE_RES = 8    # noise-image pixels per lattice cell


@dataclass
class Material:
    """A procedural texture over surface coordinates (u, v) in metres.

    kind    one of plain, checker, stripes, noise, wood, bricks, tiles, dots
    colors  [3, 3] float palette in [0, 1]
    scale   pattern period in metres
    angle   pattern rotation in radians
    grid    [G, G] value-noise lattice
    """

    kind: str
    colors: np.ndarray
    scale: float
    angle: float
    grid: np.ndarray
    noise: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.noise = _noise_image(self.grid)


def _noise_image(grid: np.ndarray) -> np.ndarray:
    """Periodic smooth noise image [G*R, G*R] float32 from a random lattice [G, G] (bicubic)."""
    G = grid.shape[0]
    tiled = np.tile(grid.astype(np.float32), (3, 3))
    big = cv2.resize(tiled, (3 * G * _NOISE_RES, 3 * G * _NOISE_RES), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[G * _NOISE_RES:2 * G * _NOISE_RES, G * _NOISE_RES:2 * G * _NOISE_RES])


def _value_noise(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth noise (about [0, 1]) at lattice coordinates (u, v) [N]; the lattice wraps.

    Sampled with ``cv2.remap`` from a pre-interpolated image: much faster than lattice gathers."""
    n, N = img.shape[0], len(u)
    rows = -(-N // 1024)  # remap wants maps under 32767 rows: lay the N samples out as [rows, 1024]
    x = np.zeros(rows * 1024, np.float32)
    y = np.zeros(rows * 1024, np.float32)
    x[:N] = np.mod(u * _NOISE_RES, n)
    y[:N] = np.mod(v * _NOISE_RES, n)
    out = cv2.remap(img, x.reshape(rows, 1024), y.reshape(rows, 1024), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_WRAP)
    return out.reshape(-1)[:N].astype(np.float64)


def _fbm(grid: np.ndarray, u: np.ndarray, v: np.ndarray, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise, in [0, 1]."""
    total, amp, norm = 0.0, 1.0, 0.0
    for k in range(octaves):
        f = 2.0 ** k
        total = total + amp * _value_noise(grid, u * f + 17.1 * k, v * f + 31.7 * k)
        norm += amp
        amp *= 0.5
    return total / norm


def _hash01(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (i, j)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663)
    return ((h * 2654435761) % 1000003) / 1000003.0


def _mix(c0: np.ndarray, c1: np.ndarray, w: np.ndarray) -> np.ndarray:
    return c0[None] * (1 - w[:, None]) + c1[None] * w[:, None]


def sample_texture(mat: Material, uv: np.ndarray) -> np.ndarray:
    """Albedo [N, 3] of ``mat`` at surface coordinates ``uv`` [N, 2] (metres)."""
    ca, sa = np.cos(mat.angle), np.sin(mat.angle)
    u = (ca * uv[:, 0] - sa * uv[:, 1]) / mat.scale
    v = (sa * uv[:, 0] + ca * uv[:, 1]) / mat.scale
    c0, c1, c2 = mat.colors
    grain = _fbm(mat.noise, u * 6.0, v * 6.0, 2)  # fine surface grain common to all kinds
    k = mat.kind
    if k == "plain":
        col = _mix(c0, c1, 0.35 * _fbm(mat.noise, u, v))
    elif k == "checker":
        col = _mix(c0, c1, ((np.floor(u) + np.floor(v)) % 2).astype(np.float64))
    elif k == "stripes":
        s = np.floor(u * 2) % 3
        col = np.where((s == 0)[:, None], c0[None], np.where((s == 1)[:, None], c1[None], c2[None]))
    elif k == "noise":
        n = _fbm(mat.noise, u, v, 4)
        n = np.clip((n - 0.3) / 0.4, 0, 1)
        col = np.where((n < 0.5)[:, None], _mix(c0, c1, 2 * n), _mix(c1, c2, 2 * n - 1))
    elif k == "wood":
        # rings along u, stretched along v (the grain direction), distorted by noise
        g = u * 2.0 + 2.5 * _fbm(mat.noise, u * 0.7, v * 0.08, 3)
        ring = 0.5 + 0.5 * np.sin(2 * np.pi * g)
        col = _mix(c0, c1, ring ** 3)
        col = col * (0.85 + 0.3 * _fbm(mat.noise, u * 8, v * 0.5, 2))[:, None]
    elif k == "planks":
        # floor boards one ``scale`` wide and 5 long, staggered, each with its own wood grain and tone
        row = np.floor(v)
        uu = u / 5.0 + _hash01(row, row * 0 + 7)
        board = np.floor(uu)
        seam = (v - row < 0.04) | (uu - board < 0.008)
        tone = _hash01(board, row)
        g = v * 3.0 + tone * 10 + 1.5 * _fbm(mat.noise, u * 0.15 + tone * 40, v * 2.0, 3)
        ring = (0.5 + 0.5 * np.sin(2 * np.pi * g)) ** 2
        col = _mix(c0, c1, 0.6 * ring) * (0.8 + 0.35 * tone)[:, None]
        col = np.where(seam[:, None], c1[None] * 0.5, col)
    elif k in ("bricks", "tiles"):
        bw, bh = (1.0, 0.45) if k == "bricks" else (1.0, 1.0)
        row = np.floor(v / bh)
        uu = u + (0.5 * (row % 2) if k == "bricks" else 0.0)
        col_i = np.floor(uu / bw)
        fu, fv = uu / bw - col_i, v / bh - row
        mortar = 0.05
        in_mortar = (fu < mortar) | (fu > 1 - mortar) | (fv < mortar * bw / bh) | (fv > 1 - mortar * bw / bh)
        cell = _hash01(col_i, row)
        col = _mix(c0, c1, cell)
        col = np.where(in_mortar[:, None], c2[None], col)
    elif k == "dots":
        fu, fv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        col = _mix(c0, c1, (fu * fu + fv * fv < 0.09).astype(np.float64))
    else:
        raise ValueError(f"unknown texture kind {k!r}")
    return np.clip(col * (0.9 + 0.2 * grain)[:, None], 0, 1)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def random_material(rng: np.random.Generator, kinds: list[str], *, pale: bool = False,
                     wood: bool = False, scale: tuple[float, float] = (0.08, 0.3)) -> Material:
    kind = str(rng.choice(kinds))
    h = rng.uniform()
    if kind in ("wood", "planks") or wood:
        h = rng.uniform(0.04, 0.11)
        c0 = _hsv(h, rng.uniform(0.45, 0.75), rng.uniform(0.45, 0.8))
        c1 = _hsv(h + rng.uniform(-0.02, 0.02), rng.uniform(0.6, 0.9), rng.uniform(0.2, 0.4))
        c2 = c1 * 0.8
    elif pale:
        c0 = _hsv(h, rng.uniform(0.05, 0.3), rng.uniform(0.75, 0.95))
        c1 = _hsv(h + rng.uniform(-0.15, 0.15), rng.uniform(0.1, 0.45), rng.uniform(0.55, 0.85))
        c2 = _hsv(h + 0.5, rng.uniform(0.1, 0.3), rng.uniform(0.6, 0.9))
    else:
        c0 = _hsv(h, rng.uniform(0.4, 0.9), rng.uniform(0.5, 0.95))
        c1 = _hsv(h + rng.choice([0.5, 0.33, -0.33, 0.08]), rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.9))
        c2 = _hsv(h + rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.95))
    if kind in ("bricks", "tiles"):
        c2 = np.full(3, rng.uniform(0.55, 0.85))  # mortar / grout
    return Material(kind=kind, colors=np.stack([c0, c1, c2]), scale=float(rng.uniform(*scale)),
                    angle=float(rng.uniform(0, np.pi)), grid=rng.uniform(size=(_NOISE_GRID, _NOISE_GRID)))
