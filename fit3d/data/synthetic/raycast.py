"""The vectorised numpy ray caster: ray / primitive intersections, culling by bounding cones, shading and
the render of one view (RGB, z-depth, labels)."""

from __future__ import annotations

import numpy as np

from fit3d.data.synthetic.config import CEILING, FLOOR, WALL
from fit3d.data.synthetic.textures import sample_texture
from fit3d.data.synthetic.world import Primitive, RoomLayout

_EPS = 1e-6


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
