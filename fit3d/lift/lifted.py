"""A lifted scene on disk: the output of Stage 1 and the input of Stage 2.

Folder layout::

    <out>/<scene>/gaussians.ply        3DGS-compatible PLY + feat_0..feat_{F-1}
    <out>/<scene>/decoder.safetensors  FeatureDecoder (f -> D)
    <out>/<scene>/lift.json            backbone, model_path, feature_dim, resolution [W, H], scene
                                       {path, layout, train_views, heldout_views}, iterations,
                                       timings, heldout metrics, settings (what determines the result:
                                       the non-volatile LiftConfig fields and the scene path)

A finished folder is reused only when its recorded ``settings`` equal the new run's
(:func:`reuse_finished`); otherwise the rerun stops naming the differing fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fit3d.data import read_scene
from fit3d.errors import SceneError
from fit3d.io import read_json_dict
from fit3d.lift.decoder import FeatureDecoder
from fit3d.splat.gaussians import FeatureGaussians

GAUSSIANS_FILE = "gaussians.ply"
DECODER_FILE = "decoder.safetensors"
META_FILE = "lift.json"


def is_lifted(path) -> bool:
    """True when ``path`` holds a finished lift (``lift.json`` is written last)."""
    p = Path(path)
    return all((p / f).exists() for f in (GAUSSIANS_FILE, DECODER_FILE, META_FILE))


@dataclass
class LiftedScene:
    name: str
    path: Path
    gaussians: FeatureGaussians
    decoder: FeatureDecoder
    meta: dict

    @property
    def resolution(self) -> tuple[int, int]:
        """(width, height) the scene was lifted at."""
        w, h = self.meta["resolution"]
        return int(w), int(h)

    def read_views(self, which: str = "train", **kwargs):
        """Re-read this scene's source views (``which`` in train / heldout / all) at the lift resolution."""
        s = self.meta["scene"]
        scene = read_scene(s["path"], layout=s.get("layout", "auto"), resolution=self.resolution, **kwargs)
        if which == "all":
            return scene
        keep = set(s["train_views"] if which == "train" else s["heldout_views"])
        return scene.select(lambda n: n in keep)


def load_lifted(path, map_location: str | torch.device = "cpu") -> LiftedScene:
    """Load a lifted scene folder (Gaussians stay on ``map_location``, CPU by default)."""
    p = Path(path)
    if not is_lifted(p):
        missing = [f for f in (GAUSSIANS_FILE, DECODER_FILE, META_FILE) if not (p / f).exists()]
        raise SceneError(f"{p}: not a finished lifted scene (missing {', '.join(missing)}); run `fit3d lift` first")
    meta = read_json_dict(p / META_FILE, "lifted scene record", keys=("resolution", "scene"))
    try:
        g = FeatureGaussians.load_ply(p / GAUSSIANS_FILE).to(map_location)
    except Exception as e:  # plyfile raises several types for a truncated / foreign file
        raise SceneError(f"{p / GAUSSIANS_FILE}: Gaussians are unreadable or corrupt ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); re-lift the scene") from None
    try:
        dec = FeatureDecoder.load(p / DECODER_FILE, map_location=map_location)
    except Exception as e:  # safetensors raises its own error type; a foreign file a KeyError
        raise SceneError(f"{p / DECODER_FILE}: decoder is unreadable or corrupt ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); re-lift the scene") from None
    return LiftedScene(name=meta.get("name", p.name), path=p, gaussians=g, decoder=dec, meta=meta)


def lift_settings(cfg, scene_path) -> dict:
    """What determines a lift's result: the non-volatile ``LiftConfig`` fields, the scene's path and the
    model's identity (``fit3d.models.identity``: resolved weights, fingerprint, architecture)."""
    from fit3d.models.identity import model_identity
    from fit3d.run import result_settings

    return {**result_settings(cfg), "scene": str(scene_path), "model": model_identity(cfg.backbone, cfg.model_path)}


def reuse_finished(path, settings: dict, how: str | None = None) -> dict | None:
    """The lift.json of the finished lift in ``path`` when it was made with ``settings``; None when
    ``path`` holds no finished lift; ``SettingsMismatch`` naming each differing field otherwise."""
    from fit3d.run import check_resume

    p = Path(path)
    if not is_lifted(p):
        return None
    meta = read_json_dict(p / META_FILE, "lifted scene record")
    check_resume(meta.get("settings"), settings, "finished lift", p, how)
    return meta
