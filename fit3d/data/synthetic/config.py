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

    def validate(self) -> None:
        """``Fit3DError`` naming the option for a value out of range (before any work)."""
        from fit3d.config import check_counts, check_memory, check_reals, option_error

        check_counts(self, {"num_views": 1, "width": 8, "height": 8, "num_objects": 0, "num_pictures": 0})
        check_reals(self, {"fov_deg": (-1e9, 1e9), "orbits": (-1e9, 1e9)})
        if not 0 < self.fov_deg < 180:
            raise option_error(self, "fov_deg", "must lie in (0, 180) degrees, both ends open (a pinhole camera)")
        px = float(self.width) * float(self.height)
        check_memory(self, "width", px * self.num_views * 24 + px * 200,
                     "the scene's images, depth and labels, and the ray caster's buffers")
