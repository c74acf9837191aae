"""Scenes from the generator: ``generate_scene`` (render one), ``write_scene`` (ScanNet exported-frames layout),
``generate_scenes`` (many, resumable) and ``generated_with`` (a written scene's generator record)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fit3d.data.scene import Scene, View
from fit3d.data.synthetic.config import CLASS_NAMES, SyntheticSceneConfig
from fit3d.data.synthetic.layout import make_layout
from fit3d.data.synthetic.raycast import render_view
from fit3d.errors import Fit3DError, SceneError
from fit3d.io import atomic_dir, clean_stale_temps, read_json, read_json_dict


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


def scene_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"synthetic_{seed:04d}"


def _done(path: Path, cfg: SyntheticSceneConfig) -> bool:
    meta = path / "synthetic.json"
    try:
        d = read_json(meta) if meta.is_file() else None
    except Fit3DError:  # a corrupt record: regenerate the scene
        return False
    return isinstance(d, dict) and d.get("config") == dataclasses.asdict(cfg)


def generate_scenes(out: Path, num_scenes: int, cfg: SyntheticSceneConfig, overwrite: bool = False,
                    progress: bool = True) -> list[Path]:
    """Write ``num_scenes`` scenes with seeds ``cfg.seed + k``; return their folders (a scene written with
    other settings is regenerated: ``fit3d generate`` refuses that without ``--overwrite``, :func:`check_same`)."""
    planned = _planned(out, num_scenes, cfg)
    clean_stale_temps(out)  # scenes a kill interrupted mid-write
    bar = tqdm(planned, desc="generate", unit="scene", disable=not progress)
    for scfg, path in bar:
        bar.set_postfix_str(path.name)
        if overwrite or not _done(path, scfg):
            write_scene(generate_scene(scfg, name=path.name), path)
    return [path for _, path in planned]


def all_generated(out: Path, num_scenes: int, cfg: SyntheticSceneConfig) -> bool:
    """True when :func:`generate_scenes` (without ``overwrite``) would find every scene written already."""
    return all(_done(path, scfg) for scfg, path in _planned(out, num_scenes, cfg))


def _planned(out: Path, num_scenes: int, cfg: SyntheticSceneConfig) -> list[tuple[SyntheticSceneConfig, Path]]:
    """(config, folder) of each scene: seeds ``cfg.seed + k``."""
    configs = (dataclasses.replace(cfg, seed=cfg.seed + k) for k in range(num_scenes))
    return [(c, scene_dir(out, c.seed)) for c in configs]


def check_same(path: Path, cfg: SyntheticSceneConfig) -> None:
    """A scene generated at ``path`` with other settings is an error naming them (its record readable)."""
    from fit3d.run import check_resume

    try:
        d = read_json(path / "synthetic.json") if (path / "synthetic.json").is_file() else None
    except Fit3DError:  # a corrupt record: the scene is regenerated
        return
    if isinstance(d, dict) and isinstance(d.get("config"), dict):
        check_resume(d["config"], dataclasses.asdict(cfg), "generated scene", path,
                     "rerun with --overwrite to replace it, or choose another OUT")


def generated_with(scene_path) -> dict | None:
    """The generator record of a ``fit3d generate`` scene (its ``synthetic.json``), so that a room regenerated
    under the same folder with other settings does not pass for an older one; None for other scenes."""
    p = Path(scene_path) / "synthetic.json"
    return read_json_dict(p, "generated scene record") if p.exists() else None
