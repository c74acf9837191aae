"""Lifted scenes as the viewer shows them: which folders, their splat arrays and training cameras.

``find_lifted(paths)`` accepts lifted scene folders, folders holding them (``runs/lifted``) and
pipeline / demo outputs (``runs/demo``: their ``lifted/``); anything else is a ``SceneError`` saying why.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fit3d.errors import Fit3DError, ModelNotFoundError, SceneError
from fit3d.lift.lifted import GAUSSIANS_FILE, META_FILE, is_lifted, load_lifted
from fit3d.view.cameras import Frustum, frustum_of, image_point
from fit3d.view.splats import SplatArrays, pick_gaussian, splat_arrays
from fit3d.viz.images import upsample


def find_lifted(paths) -> list[Path]:
    """The lifted scene folders named by ``paths`` (a lifted folder, a folder of them, or a run folder with
    ``lifted/``), in order; ``SceneError`` for a path that holds none."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise SceneError(f"{p}: no such folder (fit3d view takes lifted scene folders: `fit3d lift` / "
                             f"`fit3d demo` outputs)")
        if is_lifted(p):
            out.append(p)
            continue
        if p.is_dir():
            for parent in (p, p / "lifted"):
                kids = sorted(d for d in parent.iterdir() if is_lifted(d)) if parent.is_dir() else []
                if kids:
                    out += kids
                    break
            else:
                load_lifted(p)  # raises SceneError naming the missing files
        else:
            raise SceneError(f"{p}: not a folder; fit3d view takes lifted scene folders (holding {GAUSSIANS_FILE}, "
                             f"{META_FILE}, ...)")
    return out


@dataclass
class ViewScene:
    """One lifted scene in the viewer: splats, training cameras (frustums with small images) and the
    cameras' full images (the lift resolution) for the patch-similarity panel."""

    name: str
    path: Path
    backbone: str
    splats: SplatArrays
    frustums: list[Frustum] = field(default_factory=list)
    thumbnails: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    c2ws: list[np.ndarray] = field(default_factory=list)


def load_view_scene(path, max_splats: int = 0, seed: int = 0, cameras: bool = True,
                    thumb_height: int = 96) -> ViewScene:
    """Read a lifted folder for the viewer. Its training views are re-read from the scene the lift
    recorded; when that is gone the scene is shown without cameras (a warning says so)."""
    lifted = load_lifted(path)
    if lifted.gaussians.feature_dim == 0:
        raise SceneError(f"{Path(path) / GAUSSIANS_FILE}: no feat_* columns (a plain 3DGS PLY, not a lifted scene)")
    if lifted.gaussians.feature_dim != lifted.decoder.in_dim:
        raise SceneError(f"{path}: Gaussians carry {lifted.gaussians.feature_dim} features but the decoder reads "
                         f"{lifted.decoder.in_dim}; re-lift the scene")
    scene = ViewScene(lifted.name, Path(path), str(lifted.meta.get("backbone", "")),
                      splat_arrays(lifted.gaussians, lifted.decoder, max_splats, seed))
    if not cameras:
        return scene
    try:
        views = lifted.read_views("train", load_depth=False).views
    except Fit3DError as e:
        print(f"warning: {path}: training cameras not shown, the scene the lift read is not readable ({e})",
              file=sys.stderr)
        return scene
    for v in views:
        scene.frustums.append(frustum_of(v))
        img = (np.clip(v.image, 0, 1) * 255 + 0.5).astype(np.uint8)
        scene.images.append(img)
        scene.thumbnails.append(upsample(img, thumb_height, max(1, round(v.width * thumb_height / v.height)), False))
        scene.c2ws.append(np.asarray(v.c2w, np.float64))
    return scene


def unique_names(scenes: list[ViewScene]) -> None:
    """Scenes that share a recorded name (e.g. copies of one lift) are named by their folders too, so the
    viewer's scene list tells them apart."""
    names = [s.name for s in scenes]
    for s in scenes:
        if names.count(s.name) > 1:
            s.name = f"{s.name} ({s.path})"


def check_finetuned(scenes: list[ViewScene], manifest: dict, finetuned_dir) -> None:
    """``ModelNotFoundError`` when ``finetuned_dir`` (its ``fit3d.json`` ``manifest``) fine-tuned another
    backbone than the one the scenes were lifted with."""
    want = manifest.get("backbone")
    other = [s.name for s in scenes if s.backbone and s.backbone != want]
    if other:
        raise ModelNotFoundError(
            f"{finetuned_dir}: fine-tuned backbone {want!r}, but {', '.join(other)} was lifted with "
            f"{scenes[[s.name for s in scenes].index(other[0])].backbone!r}; pass a fine-tuned folder of that backbone")


def check_widths(scenes: list[ViewScene], width: int, finetuned_dir) -> None:
    """``ModelNotFoundError`` when the backbone of ``finetuned_dir`` is ``width`` wide but a scene's decoder
    decodes to another width (a lift of another model under the same registry name)."""
    other = [f"{s.name} ({s.splats.feature_dim})" for s in scenes if s.splats.feature_dim != width]
    if other:
        raise ModelNotFoundError(f"{finetuned_dir}: its backbone gives {width}-wide features but these scenes' "
                                 f"decoders give other widths: {', '.join(other)}")


@dataclass
class Click:
    """What a click ray hit first: ``kind`` "gaussian" (``index`` into the splats) or "camera" (``index`` of
    the frustum, ``point`` (u, v) in its image), at distance ``t`` along the ray."""

    kind: str
    index: int
    t: float
    point: tuple[float, float] | None = None


def click_target(scene: ViewScene, frustum_scale: float, origin, direction, cameras_shown: bool = True,
                 hidden: set[int] = frozenset()) -> Click | None:
    """The nearest of the Gaussians and the shown frustums' images (all but ``hidden``) that the ray hits."""
    sp = scene.splats
    hits = []
    g = pick_gaussian(sp.centers, sp.opacities, sp.covariances, origin, direction)
    if g is not None:
        hits.append(Click("gaussian", g[0], g[1]))
    if cameras_shown:
        for j, fr in enumerate(scene.frustums):
            hit = None if j in hidden else image_point(fr, frustum_scale, origin, direction)
            if hit is not None:
                hits.append(Click("camera", j, hit[2], (hit[0], hit[1])))
    return min(hits, key=lambda c: c.t) if hits else None
