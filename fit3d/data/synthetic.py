"""Procedural indoor scenes rendered by a vectorised numpy ray caster (the embedded default data).

A scene is a box-shaped room (floor, walls, ceiling) holding furniture built from three primitives
(boxes turned about the vertical, vertical capped cylinders, spheres), each with a procedural texture
attached to the surface (so colours agree between views). Views follow a smooth orbit inside the room,
above the furniture, looking at the room's content. Every view carries RGB, metric z-depth, per-pixel
semantic labels (``CLASS_NAMES``), K and a camera-to-world pose in OpenCV axes; the world is z-up with
the floor at z = 0 and the room spanning [0, W] x [0, D] x [0, H] metres.

Shading is Lambertian (one point light with hard shadows, a soft sky term and ambient): view
independent, so a surface point has the same colour in every view.

Hand-written rather than a library renderer: none is among the dependencies, and the scenes need only
ray/primitive intersections. Each primitive is tested only against the rays inside its bounding cone
(one matrix product for all primitives), which keeps a 60-view 320x240 scene at a few seconds.
"""

from __future__ import annotations

import colorsys
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fit3d.data.scene import Scene, View
from fit3d.errors import SceneError
from fit3d.io import atomic_dir

CLASS_NAMES: tuple[str, ...] = (
    "floor", "wall", "ceiling", "table", "cabinet", "lamp", "ball", "chair", "picture", "bin",
)
FLOOR, WALL, CEILING, TABLE, CABINET, LAMP, BALL, CHAIR, PICTURE, BIN = range(len(CLASS_NAMES))

_EPS = 1e-6
_NOISE_GRID = 64  # value-noise lattice size (wraps)
_NOISE_RES = 8    # noise-image pixels per lattice cell


@dataclass
class SyntheticSceneConfig:
    """How one synthetic scene is built and rendered."""

    num_views: int = field(default=60, metadata={"help": "views along the camera orbit"})
    width: int = field(default=320, metadata={"help": "image width in pixels"})
    height: int = field(default=240, metadata={"help": "image height in pixels"})
    seed: int = field(default=0, metadata={"help": "random seed: the same seed gives the same scene"})
    num_objects: int = field(default=8, metadata={"help": "furniture pieces on the floor (tables, chairs, ...)"})
    num_pictures: int = field(default=2, metadata={"help": "pictures hung on the walls"})
    fov_deg: float = field(default=65.0, metadata={"help": "horizontal field of view in degrees"})
    shadows: bool = field(default=True, metadata={"help": "cast hard shadows from the point light"})
    orbits: float = field(default=1.0, metadata={"help": "turns of the camera orbit over all views"})

    def validate(self) -> None:
        """``Fit3DError`` naming the option for a value out of range (before any work)."""
        from fit3d.run import check_counts, check_memory, check_reals, option_error

        check_counts(self, {"num_views": 1, "width": 8, "height": 8, "num_objects": 0, "num_pictures": 0})
        check_reals(self, {"fov_deg": (-1e9, 1e9), "orbits": (-1e9, 1e9)})
        if not 0 < self.fov_deg < 180:
            raise option_error(self, "fov_deg", "must lie in (0, 180) degrees, both ends open (a pinhole camera)")
        px = float(self.width) * float(self.height)
        check_memory(self, "width", px * self.num_views * 24 + px * 200,
                     "the scene's images, depth and labels, and the ray caster's buffers")


# --------------------------------------------------------------------------------------------------
# Scene description: materials and primitives


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


@dataclass
class Primitive:
    """One solid. box: ``size`` = half extents [3], turned by ``yaw`` about z; cylinder (vertical):
    ``size`` = (radius, half height, 0); sphere: ``size`` = (radius, 0, 0)."""

    kind: str
    center: np.ndarray
    size: np.ndarray
    cls: int
    material: int
    yaw: float = 0.0
    uv_offset: np.ndarray = field(default_factory=lambda: np.zeros(2))

    @property
    def bound_radius(self) -> float:
        if self.kind == "box":
            return float(np.linalg.norm(self.size))
        if self.kind == "cylinder":
            return float(np.hypot(self.size[0], self.size[1]))
        return float(self.size[0])


@dataclass
class RoomLayout:
    """Everything needed to render a scene: room size, materials, primitives, light, cameras."""

    size: np.ndarray                      # [3] room extent W, D, H (metres)
    room_materials: tuple[int, int, int]  # floor, wall, ceiling material ids
    materials: list[Material]
    primitives: list[Primitive]
    light: np.ndarray                     # [3] point light position
    K: np.ndarray                         # [3, 3]
    c2w: list[np.ndarray]                 # [4, 4] each


# --------------------------------------------------------------------------------------------------
# Textures


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


def _random_material(rng: np.random.Generator, kinds: list[str], *, pale: bool = False,
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


# --------------------------------------------------------------------------------------------------
# Ray / primitive intersections. Rays share one origin ``o`` [3]; ``d`` [N, 3] need not be unit.
# Each returns the nearest hit distance t [N] (in units of |d|), inf where the ray misses.


def _safe(d: np.ndarray) -> np.ndarray:
    return np.where(np.abs(d) < 1e-12, 1e-12, d)


def _rotz(v: np.ndarray, c: float, s: float) -> np.ndarray:
    """Rotate vectors [..., 3] by the angle with cos c, sin s about z."""
    out = v.copy()
    out[..., 0] = c * v[..., 0] - s * v[..., 1]
    out[..., 1] = s * v[..., 0] + c * v[..., 1]
    return out


def _box_local(p: Primitive, o: np.ndarray, d: np.ndarray):
    c, s = np.cos(p.yaw), np.sin(p.yaw)
    return _rotz(o - p.center, c, -s), _rotz(d, c, -s)


# The hit tests take directions as rows [3, N] (x, y, z): per-axis element-wise work on contiguous
# rows is several times faster in numpy than reductions over a trailing axis of 3.


def _hit_box(p: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    c, s = np.cos(p.yaw), np.sin(p.yaw)
    ox, oy, oz = o - p.center
    olocal = (c * ox + s * oy, -s * ox + c * oy, oz)
    dlocal = (c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2])
    tmin, tmax = None, None
    for oo, dd, h in zip(olocal, dlocal, p.size):
        inv = 1.0 / _safe(dd)
        t1, t2 = (-h - oo) * inv, (h - oo) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        tmin = lo if tmin is None else np.maximum(tmin, lo)
        tmax = hi if tmax is None else np.minimum(tmax, hi)
    return np.where((tmax >= tmin) & (tmin > _EPS), tmin, np.inf)


def _hit_cylinder(p: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    r, hh = p.size[0], p.size[1]
    ox, oy, oz = o - p.center
    a = d[0] * d[0] + d[1] * d[1]
    b = 2 * (ox * d[0] + oy * d[1])
    c = ox * ox + oy * oy - r * r
    disc = b * b - 4 * a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * np.maximum(a, 1e-18))
    z = oz + t_side * d[2]
    t = np.where((disc >= 0) & (a > 1e-12) & (t_side > _EPS) & (np.abs(z) <= hh), t_side, np.inf)
    dz = _safe(d[2])
    for zc in (hh, -hh):
        tc = (zc - oz) / dz
        x, y = ox + tc * d[0], oy + tc * d[1]
        t = np.where((tc > _EPS) & (x * x + y * y <= r * r) & (tc < t), tc, t)
    return t


def _hit_sphere(p: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    r = p.size[0]
    ox, oy, oz = o - p.center
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = 2 * (ox * d[0] + oy * d[1] + oz * d[2])
    c = ox * ox + oy * oy + oz * oz - r * r
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


_HIT = {"box": _hit_box, "cylinder": _hit_cylinder, "sphere": _hit_sphere}


def _surface(p: Primitive, o: np.ndarray, d: np.ndarray, t: np.ndarray):
    """World normals [N, 3] and texture coordinates [N, 2] (metres) where rays hit ``p`` at ``t``."""
    if p.kind == "box":
        ol, dl = _box_local(p, o, d)
        q = (ol + t[:, None] * dl) / p.size
        axis = np.abs(q).argmax(1)
        n_l = np.zeros_like(q)
        n_l[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
        pl = q * p.size
        # in-plane coordinates of the face: (y, z) for x faces, (x, z) for y faces, (x, y) for z faces
        uv = np.where((axis == 0)[:, None], pl[:, [1, 2]], np.where((axis == 1)[:, None], pl[:, [0, 2]], pl[:, [0, 1]]))
        normal = _rotz(n_l, np.cos(p.yaw), np.sin(p.yaw))
    elif p.kind == "cylinder":
        pl = o - p.center + t[:, None] * d
        r, hh = p.size[0], p.size[1]
        rad = np.hypot(pl[:, 0], pl[:, 1])
        cap = np.abs(pl[:, 2]) / hh > rad / r
        normal = np.where(cap[:, None], np.stack([0 * rad, 0 * rad, np.sign(pl[:, 2])], 1),
                          np.stack([pl[:, 0], pl[:, 1], 0 * rad], 1) / np.maximum(rad, 1e-9)[:, None])
        ang = np.arctan2(pl[:, 1], pl[:, 0]) * r
        uv = np.where(cap[:, None], pl[:, :2], np.stack([ang, pl[:, 2]], 1))
    else:
        pl = o - p.center + t[:, None] * d
        r = p.size[0]
        normal = pl / r
        uv = np.stack([np.arctan2(pl[:, 1], pl[:, 0]) * r, np.arcsin(np.clip(pl[:, 2] / r, -1, 1)) * r], 1)
    return normal, uv + p.uv_offset


def _bound_corners(p: Primitive) -> np.ndarray:
    """[8, 3] corners of an axis-aligned cube holding ``p``'s bounding sphere."""
    r = p.bound_radius * 1.01 + 1e-4
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    return p.center + r * signs


class _PixelCuller:
    """Candidate camera rays of a primitive: the pixels inside its projected bounding cube."""

    def __init__(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int):
        self.K, self.w2c, self.width, self.height = K, np.linalg.inv(c2w), width, height
        self.index = np.arange(width * height).reshape(height, width)

    def __call__(self, p: Primitive) -> np.ndarray:
        c = _bound_corners(p) @ self.w2c[:3, :3].T + self.w2c[:3, 3]
        if (c[:, 2] <= 1e-3).any():
            return self.index.reshape(-1)
        uv = c[:, :2] / c[:, 2:] * self.K[[0, 1], [0, 1]] + self.K[[0, 1], [2, 2]]
        x0, y0 = np.clip(np.floor(uv.min(0)).astype(int), 0, [self.width, self.height])
        x1, y1 = np.clip(np.ceil(uv.max(0)).astype(int) + 1, 0, [self.width, self.height])
        return self.index[y0:y1, x0:x1].reshape(-1)


class _LightCuller:
    """Candidate shadow rays (light -> surface points) of a primitive.

    Points below the light are projected through the light onto a horizontal plane; a primitive
    wholly below the light can only block rays whose projection falls in its bounding cube's
    projected rectangle (found by binary search over the points sorted by one coordinate)."""

    def __init__(self, light: np.ndarray, pts: np.ndarray):
        self.light, self.n = light, len(pts)
        rel = pts - light
        below = np.flatnonzero(rel[:, 2] < -1e-6)
        ab = rel[below, :2] / -rel[below, 2:]
        order = np.argsort(ab[:, 0], kind="stable")
        self.rows, self.a, self.b = below[order], ab[order, 0], ab[order, 1]

    def __call__(self, p: Primitive) -> np.ndarray:
        rel = _bound_corners(p) - self.light
        if (rel[:, 2] >= -1e-3).any():
            return np.arange(self.n)
        ab = rel[:, :2] / -rel[:, 2:]
        lo, hi = ab.min(0), ab.max(0)
        i0 = int(np.searchsorted(self.a, lo[0], side="left"))
        i1 = int(np.searchsorted(self.a, hi[0], side="right"))
        keep = (self.b[i0:i1] >= lo[1]) & (self.b[i0:i1] <= hi[1])
        return self.rows[i0:i1][keep]


def _nearest(o: np.ndarray, d: np.ndarray, prims: list[Primitive], t_max: np.ndarray, candidates,
             stop_at_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nearest primitive hit closer than ``t_max`` [N]: (t [N], primitive index [N], -1 for none).

    ``candidates(p)`` gives the indices of the rays that may hit primitive ``p``."""
    t_best = t_max.copy()
    idx_best = np.full(len(d), -1, dtype=np.int64)
    d_rows = np.ascontiguousarray(d.T)  # [3, N]
    for m, p in enumerate(prims):
        rows = candidates(p)
        if stop_at_first:
            rows = rows[idx_best[rows] < 0]
        if len(rows) == 0:
            continue
        t = _HIT[p.kind](p, o, d_rows[:, rows])
        better = t < t_best[rows]
        t_best[rows[better]] = t[better]
        idx_best[rows[better]] = m
    return t_best, idx_best


def _hit_room(size: np.ndarray, o: np.ndarray, d: np.ndarray):
    """Rays from inside the room box [0, size]: (t [N], face axis [N], +1/-1 direction [N])."""
    ds = _safe(d)
    t_axes = np.where(ds > 0, (size[None] - o) / ds, -o / ds)  # [N, 3]
    axis = t_axes.argmin(1)
    return t_axes[np.arange(len(d)), axis], axis, np.sign(ds[np.arange(len(d)), axis])


# --------------------------------------------------------------------------------------------------
# Rendering


def pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Camera-frame ray directions [H*W, 3] with z = 1 through pixel centres (+0.5)."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3)


def render_view(layout: RoomLayout, c2w: np.ndarray, width: int, height: int, shadows: bool = True):
    """Ray-cast one view: (rgb [H, W, 3] float32 in [0, 1], z-depth [H, W] float32 metres,
    labels [H, W] uint8 class ids)."""
    o = c2w[:3, 3].astype(np.float64)
    d = pixel_rays(layout.K, width, height) @ c2w[:3, :3].T   # world directions; camera z component 1
    n = len(d)
    t_room, axis, sgn = _hit_room(layout.size, o, d)
    t, idx = _nearest(o, d, layout.primitives, t_room, _PixelCuller(layout.K, c2w, width, height))

    normal = np.zeros((n, 3))
    albedo = np.zeros((n, 3))
    labels = np.zeros(n, dtype=np.uint8)
    # room surfaces
    room = idx < 0
    if room.any():
        pts = o + t[room, None] * d[room]
        ax, sg = axis[room], sgn[room]
        normal[room, ax] = -sg  # facing into the room
        floor, ceil = (ax == 2) & (sg < 0), (ax == 2) & (sg > 0)
        wall = ax != 2
        lab = np.where(floor, FLOOR, np.where(ceil, CEILING, WALL)).astype(np.uint8)
        labels[room] = lab
        uv = np.where((ax == 0)[:, None], pts[:, [1, 2]], np.where((ax == 1)[:, None], pts[:, [0, 2]], pts[:, [0, 1]]))
        alb = np.zeros((len(pts), 3))
        for mask, mat_id in ((floor, layout.room_materials[0]), (wall, layout.room_materials[1]),
                             (ceil, layout.room_materials[2])):
            if mask.any():
                alb[mask] = sample_texture(layout.materials[mat_id], uv[mask])
        albedo[room] = alb
    # objects
    for m, p in enumerate(layout.primitives):
        rows = np.flatnonzero(idx == m)
        if len(rows) == 0:
            continue
        nrm, uv = _surface(p, o, d[rows], t[rows])
        normal[rows] = nrm
        albedo[rows] = sample_texture(layout.materials[p.material], uv)
        labels[rows] = p.cls

    pts = o + t[:, None] * d
    to_light = layout.light - pts
    dist = np.linalg.norm(to_light, axis=1)
    ndotl = np.clip((normal * to_light).sum(1) / dist, 0, None)
    lit = ndotl > 0
    if shadows and lit.any():
        rows = np.flatnonzero(lit)
        # rays from the light towards each lit point: blocked if anything is hit before t = 1
        t_occ, _ = _nearest(layout.light, pts[rows] - layout.light, layout.primitives,
                            np.full(len(rows), 1.0 - 1e-3), _LightCuller(layout.light, pts[rows]),
                            stop_at_first=True)
        ndotl[rows[t_occ < 1.0 - 1e-3]] = 0.0
    falloff = 1.0 / (1.0 + 0.04 * dist ** 2)
    sky = 0.5 + 0.5 * normal[:, 2]  # soft light from above, and light bounced off the floor from below
    shade = 0.3 + 0.1 * sky + 0.2 * (1 - sky) ** 2 + 0.9 * ndotl * falloff
    rgb = np.clip(albedo * shade[:, None], 0, 1) ** (1 / 1.15)
    depth = t  # directions have camera z = 1, so t is z-depth
    return (rgb.reshape(height, width, 3).astype(np.float32), depth.reshape(height, width).astype(np.float32),
            labels.reshape(height, width))


# --------------------------------------------------------------------------------------------------
# Layout


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[4, 4] camera-to-world in OpenCV axes (x right, y down, z forward), world z up."""
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r = r / np.linalg.norm(r)
    dn = np.cross(f, r)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([r, dn, f], 1)
    c2w[:3, 3] = eye
    return c2w


def _camera_path(rng: np.random.Generator, size: np.ndarray, cfg: SyntheticSceneConfig) -> list[np.ndarray]:
    W, D, H = size
    cx, cy = W / 2, D / 2
    ax, ay = W / 2 - 0.6, D / 2 - 0.6
    phase = rng.uniform(0, 2 * np.pi)
    direction = rng.choice([-1.0, 1.0])
    h0 = rng.uniform(1.6, 1.75)
    wob = rng.uniform(0, 2 * np.pi, size=3)
    poses = []
    for i in range(cfg.num_views):
        s = i / max(cfg.num_views, 1)
        th = phase + direction * 2 * np.pi * cfg.orbits * s
        rad = 0.85 + 0.15 * np.sin(2 * th + wob[0])
        eye = np.array([cx + ax * rad * np.cos(th), cy + ay * rad * np.sin(th), h0 + 0.1 * np.sin(3 * th + wob[1])])
        # look across the room, past its centre, sweeping the gaze a little
        tgt = np.array([cx - 0.35 * ax * np.cos(th + 0.4 * np.sin(th + wob[2])),
                        cy - 0.35 * ay * np.sin(th + 0.4 * np.sin(th + wob[2])),
                        0.75 + 0.45 * np.sin(2 * th + wob[2])])
        poses.append(_look_at(eye, tgt))
    return poses


def _box(center, half, cls, mat, yaw=0.0, rng=None) -> Primitive:
    off = rng.uniform(-3, 3, 2) if rng is not None else np.zeros(2)
    return Primitive("box", np.asarray(center, float), np.asarray(half, float), cls, mat, yaw, off)


def _cyl(center, radius, half_h, cls, mat, rng=None) -> Primitive:
    off = rng.uniform(-3, 3, 2) if rng is not None else np.zeros(2)
    return Primitive("cylinder", np.asarray(center, float), np.array([radius, half_h, 0.0]), cls, mat, 0.0, off)


def _sphere(center, radius, cls, mat, rng=None) -> Primitive:
    off = rng.uniform(-3, 3, 2) if rng is not None else np.zeros(2)
    return Primitive("sphere", np.asarray(center, float), np.array([radius, 0.0, 0.0]), cls, mat, 0.0, off)


def _legs(x, y, yaw, hx, hy, z_top, leg, cls, mat, rng):
    c, s = np.cos(yaw), np.sin(yaw)
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            lx, ly = sx * (hx - leg), sy * (hy - leg)
            out.append(_box([x + c * lx - s * ly, y + s * lx + c * ly, z_top / 2], [leg, leg, z_top / 2],
                            cls, mat, yaw, rng))
    return out


def make_layout(cfg: SyntheticSceneConfig) -> RoomLayout:
    """Draw a room, its furniture, materials, light and camera orbit from ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    size = np.array([rng.uniform(4.2, 6.0), rng.uniform(3.8, 5.5), rng.uniform(2.6, 3.0)])
    W, D, H = size
    mats: list[Material] = []

    def add(m: Material) -> int:
        mats.append(m)
        return len(mats) - 1

    floor_m = add(_random_material(rng, ["planks", "planks", "tiles", "checker", "noise"], scale=(0.25, 0.6)))
    if mats[floor_m].kind == "planks":
        mats[floor_m].scale = float(rng.uniform(0.12, 0.22))
        mats[floor_m].angle = float(rng.choice([0.0, np.pi / 2]))
    else:
        mats[floor_m].colors = mats[floor_m].colors * rng.uniform(0.6, 0.85)
    wall_m = add(_random_material(rng, ["plain", "stripes", "bricks", "noise"], pale=True, scale=(0.15, 0.4)))
    mats[wall_m].angle = 0.0  # vertical stripes, level bricks
    ceil_m = add(_random_material(rng, ["plain", "tiles"], pale=True, scale=(0.5, 0.8)))
    mats[ceil_m].colors = np.clip(mats[ceil_m].colors * 0.3 + 0.65, 0, 1)

    c2w = _camera_path(rng, size, cfg)
    cam_xy = np.stack([p[:2, 3] for p in c2w]) if c2w else np.zeros((0, 2))
    cam_low = min((p[2, 3] for p in c2w), default=2.0)

    prims: list[Primitive] = []
    placed: list[tuple[float, float, float]] = []  # footprint circles (x, y, r)
    tops: list[tuple[float, float, float, float]] = []  # table tops (x, y, z, usable radius)

    def place(radius: float, tall: float, margin: float = 0.15):
        """A free floor position for a footprint of ``radius``; tall objects keep off the camera path."""
        for _ in range(200):
            x = rng.uniform(margin + radius, W - margin - radius)
            y = rng.uniform(margin + radius, D - margin - radius)
            if any(np.hypot(x - px, y - py) < radius + pr + 0.08 for px, py, pr in placed):
                continue
            if tall > cam_low - 0.35 and len(cam_xy) and np.hypot(cam_xy[:, 0] - x, cam_xy[:, 1] - y).min() < radius + 0.35:
                continue
            placed.append((x, y, radius))
            return x, y
        return None

    kinds = ["table", "cabinet", "chair", "lamp", "ball", "bin"]
    weights = np.array([0.22, 0.2, 0.2, 0.1, 0.16, 0.12])
    # the first pieces cycle through the kinds so every scene holds several classes
    order = [str(k) for k in rng.permutation(kinds)]
    for i in range(cfg.num_objects):
        kind = order[i] if i < len(order) else str(rng.choice(kinds, p=weights / weights.sum()))
        yaw = float(rng.uniform(0, np.pi))
        if kind == "table":
            hx, hy, ht = rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.5), rng.uniform(0.68, 0.8)
            pos = place(np.hypot(hx, hy), ht)
            if pos is None:
                continue
            m = add(_random_material(rng, ["wood"], wood=True, scale=(0.05, 0.12)))
            leg_m = m if rng.uniform() < 0.6 else add(_random_material(rng, ["plain"], scale=(0.1, 0.2)))
            prims.append(_box([*pos, ht - 0.025], [hx, hy, 0.025], TABLE, m, yaw, rng))
            prims += _legs(*pos, yaw, hx, hy, ht - 0.05, 0.03, TABLE, leg_m, rng)
            tops.append((*pos, ht, min(hx, hy) - 0.1))
        elif kind == "cabinet":
            hx, hy, ht = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.3), rng.uniform(0.5, 1.25)
            pos = place(np.hypot(hx, hy), ht)
            if pos is None:
                continue
            m = add(_random_material(rng, ["wood", "plain", "stripes", "checker", "noise"], scale=(0.08, 0.25)))
            prims.append(_box([*pos, ht / 2], [hx, hy, ht / 2], CABINET, m, yaw, rng))
        elif kind == "chair":
            hs, hseat = rng.uniform(0.2, 0.26), rng.uniform(0.42, 0.48)
            hback = rng.uniform(0.35, 0.5)
            pos = place(hs * 1.45, hseat + hback)
            if pos is None:
                continue
            m = add(_random_material(rng, ["wood", "plain", "checker", "noise", "stripes"], scale=(0.05, 0.12)))
            x, y = pos
            prims.append(_box([x, y, hseat - 0.025], [hs, hs, 0.025], CHAIR, m, yaw, rng))
            prims += _legs(x, y, yaw, hs, hs, hseat - 0.05, 0.022, CHAIR, m, rng)
            c, s = np.cos(yaw), np.sin(yaw)
            bx, by = x + c * (hs - 0.02), y + s * (hs - 0.02)
            prims.append(_box([bx, by, hseat + hback / 2], [0.02, hs, hback / 2], CHAIR, m, yaw, rng))
        elif kind == "lamp":
            pole_h = rng.uniform(0.9, 1.2)
            shade_r, shade_h = rng.uniform(0.13, 0.2), rng.uniform(0.18, 0.26)
            pos = place(max(shade_r, 0.16), pole_h + shade_h)
            if pos is None:
                continue
            x, y = pos
            metal = add(_random_material(rng, ["plain"], scale=(0.1, 0.2)))
            shade = add(_random_material(rng, ["plain", "stripes", "dots", "noise"], pale=rng.uniform() < 0.5,
                                         scale=(0.04, 0.1)))
            prims.append(_cyl([x, y, 0.015], 0.16, 0.015, LAMP, metal, rng))
            prims.append(_cyl([x, y, pole_h / 2], 0.018, pole_h / 2, LAMP, metal, rng))
            prims.append(_cyl([x, y, pole_h + shade_h / 2 - 0.02], shade_r, shade_h / 2, LAMP, shade, rng))
        elif kind == "ball":
            r = rng.uniform(0.12, 0.3)
            m = add(_random_material(rng, ["dots", "stripes", "checker", "noise", "plain"], scale=(0.05, 0.14)))
            on_table = [tp for tp in tops if tp[3] > r * 0.5] if rng.uniform() < 0.5 else []
            if on_table:
                tx, ty, tz, _ = on_table[int(rng.integers(len(on_table)))]
                r = min(r, 0.15)
                prims.append(_sphere([tx + rng.uniform(-0.1, 0.1), ty + rng.uniform(-0.1, 0.1), tz + r], r, BALL, m, rng))
                tops.remove(next(tp for tp in tops if tp[:3] == (tx, ty, tz)))
                continue
            pos = place(r, 2 * r)
            if pos is None:
                continue
            prims.append(_sphere([*pos, r], r, BALL, m, rng))
        elif kind == "bin":
            r, hh = rng.uniform(0.14, 0.3), rng.uniform(0.15, 0.35)
            pos = place(r, 2 * hh)
            if pos is None:
                continue
            m = add(_random_material(rng, ["stripes", "noise", "checker", "plain", "dots"], scale=(0.05, 0.15)))
            prims.append(_cyl([*pos, hh], r, hh, BIN, m, rng))

    for _ in range(cfg.num_pictures):
        pw, ph = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.4)
        zc = rng.uniform(1.45, min(2.1, H - ph - 0.2))
        wall = int(rng.integers(4))
        m = add(_random_material(rng, ["noise", "stripes", "checker", "dots"], scale=(0.06, 0.2)))
        t = 0.02
        if wall < 2:  # walls at x = 0 / x = W
            y = rng.uniform(pw + 0.3, D - pw - 0.3)
            x = t if wall == 0 else W - t
            prims.append(_box([x, y, zc], [t, pw, ph], PICTURE, m, 0.0, rng))
        else:
            x = rng.uniform(pw + 0.3, W - pw - 0.3)
            y = t if wall == 2 else D - t
            prims.append(_box([x, y, zc], [pw, t, ph], PICTURE, m, 0.0, rng))

    light = np.array([W * rng.uniform(0.35, 0.65), D * rng.uniform(0.35, 0.65), H - 0.3])
    fx = cfg.width / (2 * np.tan(np.deg2rad(cfg.fov_deg) / 2))
    K = np.array([[fx, 0, cfg.width / 2], [0, fx, cfg.height / 2], [0, 0, 1.0]])
    return RoomLayout(size=size, room_materials=(floor_m, wall_m, ceil_m), materials=mats, primitives=prims,
                      light=light, K=K, c2w=c2w)


def generate_scene(cfg: SyntheticSceneConfig | None = None, name: str | None = None) -> Scene:
    """Build and render a synthetic scene: ``cfg.num_views`` views with image, depth, labels, K, c2w.

    ``scene.meta['classes']`` holds the class names of the label ids (``CLASS_NAMES``).
    """
    cfg = cfg or SyntheticSceneConfig()
    if cfg.num_views < 1 or cfg.width < 8 or cfg.height < 8:
        raise SceneError(f"synthetic scene: need num_views >= 1 and an image of at least 8x8, got {cfg}")
    layout = make_layout(cfg)
    views = []
    for i, c2w in enumerate(layout.c2w):
        rgb, depth, labels = render_view(layout, c2w, cfg.width, cfg.height, cfg.shadows)
        views.append(View(image=rgb, K=layout.K.copy(), c2w=c2w, name=str(i), depth=depth,
                          labels=labels.astype(np.int64)))
    return Scene(name=name or f"synthetic_{cfg.seed:04d}", views=views, source="synthetic",
                 meta={"classes": list(CLASS_NAMES), "config": asdict(cfg), "room_size": layout.size.tolist()})


# --------------------------------------------------------------------------------------------------
# Writing (ScanNet exported-frames layout)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise SceneError(f"could not encode a PNG of shape {img.shape}")
    return buf.tobytes()


def _matrix_text(m: np.ndarray) -> str:
    return "\n".join(" ".join(f"{x:.9g}" for x in row) for row in m) + "\n"


def write_scene(scene: Scene, out_dir: str | os.PathLike) -> Path:
    """Write ``scene`` in the ScanNet exported-frames layout and return ``out_dir``::

        color/N.png  depth/N.png (uint16 mm, 0 invalid)  pose/N.txt (4x4 c2w)  label-filt/N.png (uint8)
        intrinsic/intrinsic_color.txt  intrinsic/intrinsic_depth.txt (4x4)  classes.json
        synthetic.json (the generating config, when ``scene.meta`` has one)

    The scene is written to a temporary sibling folder and renamed into place, so a crash never
    leaves a half-written scene; an existing ``out_dir`` is replaced.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:  # a pid-named sibling, cleaned by clean_stale_temps after a kill
        for sub in ("color", "depth", "pose", "intrinsic", "label-filt"):
            (tmp / sub).mkdir()
        K4 = np.eye(4)
        K4[:3, :3] = scene.views[0].K
        for fname in ("intrinsic_color.txt", "intrinsic_depth.txt"):
            (tmp / "intrinsic" / fname).write_text(_matrix_text(K4))
        for i, v in enumerate(scene.views):
            if not np.allclose(v.K, scene.views[0].K):
                raise SceneError(f"write_scene {out_dir}: view {i} has different intrinsics; the ScanNet "
                                 f"layout holds one K per scene")
            rgb = np.clip(np.round(v.image * 255), 0, 255).astype(np.uint8)
            (tmp / "color" / f"{i}.png").write_bytes(_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
            if v.depth is not None:
                mm = np.clip(np.round(v.depth * 1000), 0, 65535).astype(np.uint16)
                (tmp / "depth" / f"{i}.png").write_bytes(_png(mm))
            if v.labels is not None:
                (tmp / "label-filt" / f"{i}.png").write_bytes(_png(np.clip(v.labels, 0, 255).astype(np.uint8)))
            (tmp / "pose" / f"{i}.txt").write_text(_matrix_text(v.c2w))
        # plain writes inside the temporary folder: the rename below makes the whole scene atomic
        (tmp / "classes.json").write_text(json.dumps({"classes": list(scene.meta.get("classes", CLASS_NAMES))},
                                                     indent=2) + "\n")
        if "config" in scene.meta:  # how it was generated (lets ``fit3d generate`` skip finished scenes)
            (tmp / "synthetic.json").write_text(json.dumps(
                {"config": scene.meta["config"], "room_size": scene.meta.get("room_size")}, indent=2) + "\n")
    return out_dir
