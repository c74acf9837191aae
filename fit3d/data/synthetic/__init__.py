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

Modules: ``config`` (``SyntheticSceneConfig``, ``CLASS_NAMES``), ``textures``, ``world`` (primitives and the
room), ``layout`` (``make_layout``), ``raycast`` (``render_view``), ``scenes`` (``generate_scene``,
``write_scene``, ``generate_scenes``, ``all_generated``, ``generated_with``) and ``cli`` (``fit3d generate``).
"""

from fit3d.data.synthetic.config import (BALL, BIN, CABINET, CEILING, CHAIR, CLASS_NAMES, FLOOR, LAMP, PICTURE,
                                         TABLE, WALL, SyntheticSceneConfig)
from fit3d.data.synthetic.layout import make_layout
from fit3d.data.synthetic.raycast import pixel_rays, render_view
from fit3d.data.synthetic.scenes import (all_generated, generate_scene, generate_scenes, generated_with, scene_dir,
                                         write_scene)
from fit3d.data.synthetic.textures import Material, sample_texture
from fit3d.data.synthetic.world import Primitive, RoomLayout

__all__ = ["BALL", "BIN", "CABINET", "CEILING", "CHAIR", "CLASS_NAMES", "FLOOR", "LAMP", "PICTURE", "TABLE", "WALL",
           "Material", "Primitive", "RoomLayout", "SyntheticSceneConfig", "all_generated", "generate_scene",
           "generate_scenes", "generated_with", "make_layout", "pixel_rays", "render_view", "sample_texture",
           "scene_dir", "write_scene"]
