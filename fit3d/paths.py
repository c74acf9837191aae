"""Where fit3d finds its offline assets (``shared/``: pretrained weights, real frames)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """``$FIT3D_SHARED`` if set, else ``../shared`` next to the repository root."""
    env = os.environ.get("FIT3D_SHARED")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared").resolve()


def shared_model_dir() -> Path:
    """The offline DINOv2-S/14 weights in the hub's layout."""
    return shared_dir() / "models" / "dinov2-small-imgfocus"


def shared_7scenes_dir() -> Path:
    """250 real posed RGB-D frames of 7-Scenes RedKitchen (frames 0-398 train, 400-498 eval)."""
    return shared_dir() / "data" / "7scenes-redkitchen"
