"""Training cameras in the viewer: frustum poses, the world's up direction, and where a click on a
frustum's image lands in that image (pure numpy, no viewer).

Cameras follow OpenCV axes (x right, y down, z forward), as fit3d's ``View.c2w`` and viser's cameras do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


@dataclass
class Frustum:
    """One training camera: name, vertical field of view (radians), aspect (W / H), size in pixels,
    orientation wxyz [4] and position [3] in the world."""

    name: str
    fov: float
    aspect: float
    width: int
    height: int
    wxyz: np.ndarray
    position: np.ndarray


def rotation_wxyz(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> quaternion (w, x, y, z)."""
    x, y, z, w = Rotation.from_matrix(np.asarray(R, np.float64)).as_quat()
    return np.array([w, x, y, z])


def frustum_of(view) -> Frustum:
    """The frustum of a ``fit3d.data.View`` (fov from fy: viser draws a centred pinhole)."""
    fov = 2.0 * float(np.arctan2(view.height / 2.0, view.K[1, 1]))
    return Frustum(view.name, fov, view.width / view.height, view.width, view.height,
                   rotation_wxyz(view.c2w[:3, :3]), np.asarray(view.c2w[:3, 3], np.float64))


def up_direction(c2ws: np.ndarray) -> np.ndarray:
    """[3] unit world up: the mean of the cameras' up axes (-y in OpenCV axes) of ``c2ws`` [V, 4, 4]."""
    up = -np.asarray(c2ws)[:, :3, 1].mean(0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])


def look_at_point(c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[3] a point straight ahead of camera ``c2w`` at the median depth of ``points`` [N, 3] in front of it
    (1 unit when none is), for orbiting around what the camera sees."""
    R, t = c2w[:3, :3], c2w[:3, 3]
    z = (np.asarray(points, np.float64) - t) @ R[:, 2]
    z = z[z > 0]
    return t + R[:, 2] * (float(np.median(z)) if len(z) else 1.0)


def start_position(c2w: np.ndarray, target: np.ndarray, centers: np.ndarray, opacities: np.ndarray,
                   covariances: np.ndarray, back: float = 0.5, margin: float = 0.7) -> np.ndarray:
    """[3] where to open the view: behind camera ``c2w`` (looking at ``target``) by ``back`` of its distance
    to the target, but at most ``margin`` of the free space behind it (the first Gaussian the backward ray
    meets), so the view never starts inside a wall."""
    from fit3d.view.splats import pick_gaussian

    c0 = np.asarray(c2w, np.float64)[:3, 3]
    d = np.asarray(target, np.float64) - c0
    dist = back * float(np.linalg.norm(d))
    hit = pick_gaussian(centers, opacities, covariances, c0, -d, sigmas=3.0)
    if hit is not None:
        dist = min(dist, margin * hit[1])
    return c0 - dist * d / max(float(np.linalg.norm(d)), 1e-12)


def frustum_plane_depth(fov: float, aspect: float, scale: float) -> float:
    """Camera-frame depth of the image plane viser draws for a frustum of ``scale``: its client sizes the
    pyramid (tan(fov/2) * aspect, tan(fov/2), 1) to a fixed volume, then multiplies by ``scale``
    (viser's ``CameraFrustumVariants.tsx``)."""
    y = np.tan(fov / 2.0)
    return float(scale / np.cbrt(y * aspect * y / 3.0))


def image_point(frustum: Frustum, scale: float, origin, direction) -> tuple[float, float, float] | None:
    """(u, v, t): the pixel (u, v) of ``frustum``'s image where the ray ``origin + t * direction / |direction|``
    hits the image plane viser draws at ``scale``, and the distance ``t`` along the ray; None when the ray
    misses the image."""
    R = Rotation.from_quat(np.r_[frustum.wxyz[1:], frustum.wxyz[0]]).as_matrix()
    o = R.T @ (np.asarray(origin, np.float64) - frustum.position)
    d = np.asarray(direction, np.float64)
    d = R.T @ (d / max(np.linalg.norm(d), 1e-12))
    zp = frustum_plane_depth(frustum.fov, frustum.aspect, scale)
    if abs(d[2]) < 1e-12:
        return None
    s = (zp - o[2]) / d[2]
    if s <= 0:
        return None
    hit = o + s * d
    ty = np.tan(frustum.fov / 2.0)
    u = (hit[0] / zp / (ty * frustum.aspect) + 1.0) / 2.0 * frustum.width
    v = (hit[1] / zp / ty + 1.0) / 2.0 * frustum.height
    if not (0 <= u < frustum.width and 0 <= v < frustum.height):
        return None
    return float(u), float(v), float(s)
