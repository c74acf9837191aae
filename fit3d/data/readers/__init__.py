"""Scene readers, one module per on-disk layout (each module's docstring documents its layout):

| layout | module | detected by |
|---|---|---|
| ``7scenes`` | ``sevenscenes`` | ``frame-*.color.jpg`` / ``.png`` in the folder |
| ``nerfstudio`` | ``nerfstudio`` | ``transforms.json`` in the folder, or a ``.json`` path |
| ``colmap`` | ``colmap`` | ``cameras`` + ``images`` (.bin / .txt) in ``sparse/0``, ``sparse``, ... |
| ``scannet`` | ``scannet`` | ``color/`` and ``pose/`` folders |

``read_scene(path, layout="auto", resolution=(W, H), names=...)`` reads any of them into a ``Scene``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from fit3d.data.readers import colmap, nerfstudio, scannet, sevenscenes
from fit3d.data.readers.common import Names, check_resolution, frame_number
from fit3d.data.scene import Scene
from fit3d.errors import SceneError

# detection order: the most specific marker first
READERS = {m.NAME: m for m in (nerfstudio, scannet, sevenscenes, colmap)}
LAYOUTS = ("auto", *READERS)

__all__ = ["read_scene", "detect_layout", "frame_number", "LAYOUTS", "READERS"]


def detect_layout(path) -> str:
    """The layout name of the scene at ``path``; ``SceneError`` naming the folder if none matches."""
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: scene path does not exist")
    try:
        if path.is_dir():
            os.listdir(path)  # glob hides an unreadable folder (no match); say why instead
        for name, reader in READERS.items():
            if reader.detect(path):
                return name
    except OSError as e:
        raise SceneError(f"{path}: cannot read the scene folder ({e.strerror or e})") from None
    looked = "; ".join(r.HINT for r in READERS.values())
    raise SceneError(f"{path}: unknown layout (looked for {looked})")


def read_scene(path, layout: str = "auto", resolution=None, names: Names = None,
               load_depth: bool = True) -> Scene:
    """Read the scene at ``path``.

    layout      "auto" (detect from the files present) or one of "7scenes", "nerfstudio", "colmap", "scannet"
    resolution  optional (W, H): every view is resized on load (K rescaled, depth / labels / mask nearest)
    names       optional iterable of view names (each must exist) or predicate ``name -> bool``, applied
                before images are read
    load_depth  False skips depth files
    """
    path = Path(path)
    resolution = check_resolution(resolution)
    if layout == "auto":
        layout = detect_layout(path)
    elif layout not in READERS:
        raise SceneError(f"{path}: unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    elif not path.exists():
        raise SceneError(f"{path}: scene path does not exist")
    try:
        scene = READERS[layout].read(path, resolution=resolution, names=names, load_depth=load_depth)
    except OSError as e:  # an unreadable sub-folder or file the reader lists: one line naming it
        raise SceneError(f"{e.filename or path}: cannot read ({e.strerror or e})") from None
    warn_empty_depth(scene)
    return scene


def warn_empty_depth(scene: Scene) -> None:
    """Warn when a scene has depth files but no valid depth at all (every value 0 or invalid): it is used as a
    scene without depth, which the user should know (lifting then starts without depth)."""
    with_depth = [v for v in scene.views if v.depth is not None]
    if with_depth and not any(bool((v.depth > 0).any()) for v in with_depth):
        warnings.warn(f"{scene.source}: every depth map of the scene is empty (all {len(with_depth)} hold only 0 = "
                      f"invalid); the scene is used as one without depth", stacklevel=3)
