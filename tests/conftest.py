"""Shared fixtures. Offline assets come from ``FIT3D_SHARED`` (default ``../shared``).

In CI (``CI=true``) a missing asset is a failure, never a silent skip.
"""

from __future__ import annotations

import os

import pytest
import torch

from fit3d.paths import shared_7scenes_dir, shared_dir, shared_model_dir

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _require(path, what):
    if path.exists():
        return path
    msg = (f"{what} not found at {path}: set FIT3D_SHARED to the folder holding models/ and data/ "
           f"(currently {shared_dir()})")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def dinov2_path():
    """Path of the real pretrained DINOv2-S/14 weights (hub layout)."""
    return _require(shared_model_dir() / "config.json", "shared DINOv2-S weights").parent


@pytest.fixture(scope="session")
def sevenscenes_path():
    """Path of the 250 real 7-Scenes RedKitchen frames."""
    return _require(shared_7scenes_dir() / "camera-intrinsics.txt", "shared 7-Scenes frames").parent


@pytest.fixture(scope="session")
def icl_path():
    """Path of the 211 posed RGB-D frames of the (rendered) ICL-NUIM living room."""
    return _require(shared_dir() / "data" / "icl-livingroom1" / "camera-intrinsics.txt", "shared ICL living room").parent


@pytest.fixture
def spin():
    """``spin(seconds)``: keep this process busy until it has spent ``seconds`` CPU seconds."""
    from fit3d.clock import cpu_seconds

    def spin(seconds: float) -> None:
        t = cpu_seconds()
        while cpu_seconds() - t < seconds:
            pass

    return spin
