"""The room's layout: its size and materials, furniture on the floor, pictures on the walls, the light and
the camera orbit."""

from __future__ import annotations

import numpy as np

from fit3d.data.synthetic.config import BALL, BIN, CABINET, CHAIR, LAMP, PICTURE, TABLE, SyntheticSceneConfig
from fit3d.data.synthetic.textures import Material, random_material
from fit3d.data.synthetic.world import Primitive, RoomLayout


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

    floor_m = add(random_material(rng, ["planks", "planks", "tiles", "checker", "noise"], scale=(0.25, 0.6)))
    if mats[floor_m].kind == "planks":
        mats[floor_m].scale = float(rng.uniform(0.12, 0.22))
        mats[floor_m].angle = float(rng.choice([0.0, np.pi / 2]))
    else:
        mats[floor_m].colors = mats[floor_m].colors * rng.uniform(0.6, 0.85)
    wall_m = add(random_material(rng, ["plain", "stripes", "bricks", "noise"], pale=True, scale=(0.15, 0.4)))
    mats[wall_m].angle = 0.0  # vertical stripes, level bricks
    ceil_m = add(random_material(rng, ["plain", "tiles"], pale=True, scale=(0.5, 0.8)))
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
            m = add(random_material(rng, ["wood"], wood=True, scale=(0.05, 0.12)))
            leg_m = m if rng.uniform() < 0.6 else add(random_material(rng, ["plain"], scale=(0.1, 0.2)))
            prims.append(_box([*pos, ht - 0.025], [hx, hy, 0.025], TABLE, m, yaw, rng))
            prims += _legs(*pos, yaw, hx, hy, ht - 0.05, 0.03, TABLE, leg_m, rng)
            tops.append((*pos, ht, min(hx, hy) - 0.1))
        elif kind == "cabinet":
            hx, hy, ht = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.3), rng.uniform(0.5, 1.25)
            pos = place(np.hypot(hx, hy), ht)
            if pos is None:
                continue
            m = add(random_material(rng, ["wood", "plain", "stripes", "checker", "noise"], scale=(0.08, 0.25)))
            prims.append(_box([*pos, ht / 2], [hx, hy, ht / 2], CABINET, m, yaw, rng))
        elif kind == "chair":
            hs, hseat = rng.uniform(0.2, 0.26), rng.uniform(0.42, 0.48)
            hback = rng.uniform(0.35, 0.5)
            pos = place(hs * 1.45, hseat + hback)
            if pos is None:
                continue
            m = add(random_material(rng, ["wood", "plain", "checker", "noise", "stripes"], scale=(0.05, 0.12)))
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
            metal = add(random_material(rng, ["plain"], scale=(0.1, 0.2)))
            shade = add(random_material(rng, ["plain", "stripes", "dots", "noise"], pale=rng.uniform() < 0.5,
                                         scale=(0.04, 0.1)))
            prims.append(_cyl([x, y, 0.015], 0.16, 0.015, LAMP, metal, rng))
            prims.append(_cyl([x, y, pole_h / 2], 0.018, pole_h / 2, LAMP, metal, rng))
            prims.append(_cyl([x, y, pole_h + shade_h / 2 - 0.02], shade_r, shade_h / 2, LAMP, shade, rng))
        elif kind == "ball":
            r = rng.uniform(0.12, 0.3)
            m = add(random_material(rng, ["dots", "stripes", "checker", "noise", "plain"], scale=(0.05, 0.14)))
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
            m = add(random_material(rng, ["stripes", "noise", "checker", "plain", "dots"], scale=(0.05, 0.15)))
            prims.append(_cyl([*pos, hh], r, hh, BIN, m, rng))

    for _ in range(cfg.num_pictures):
        pw, ph = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.4)
        zc = rng.uniform(1.45, min(2.1, H - ph - 0.2))
        wall = int(rng.integers(4))
        m = add(random_material(rng, ["noise", "stripes", "checker", "dots"], scale=(0.06, 0.2)))
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
