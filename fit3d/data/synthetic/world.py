"""The scene description: solids (``Primitive``) and the room that holds them (``RoomLayout``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fit3d.data.synthetic.textures import Material


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
