"""The generator's settings (``SyntheticSceneConfig``) and the semantic classes of its labels."""

from __future__ import annotations

from dataclasses import dataclass, field

CLASS_NAMES: tuple[str, ...] = (
    "floor", "wall", "ceiling", "table", "cabinet", "lamp", "ball", "chair", "picture", "bin",
)
FLOOR, WALL, CEILING, TABLE, CABINET, LAMP, BALL, CHAIR, PICTURE, BIN = range(len(CLASS_NAMES))


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
