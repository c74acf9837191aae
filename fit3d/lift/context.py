"""What a Stage 1 method receives (``LiftContext``) and returns (``LiftResult``).

``fit3d.lift.stage.lift_scene`` reads the scene, computes the targets and calls the method registered
for ``cfg.method`` (``fit3d.lift.methods.METHODS``) with a context; it then evaluates the held-out views
and writes the lifted folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fit3d.data.scene import View
from fit3d.lift.config import LiftConfig
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.targets import TargetCache


@dataclass
class LiftContext:
    """One scene, ready to lift. ``views`` are resized to the render size ``(W, H)``; ``cache`` holds the
    backbone's token grids of every view (train and held-out) by name; ``points`` [P, 3] / ``points_rgb``
    [P, 3] are the scene's sparse points (COLMAP) or None; ``out`` is the scene's output folder (methods
    keep their checkpoint there); ``settings`` are what determine the result (``fit3d.lift.lifted.lift_settings``:
    recorded in lift.json and checked against a checkpoint before resuming); ``backbone`` is the loaded backbone,
    for methods that run it themselves (``backprojected``)."""

    cfg: LiftConfig
    device: torch.device
    name: str
    views: list[View]
    train_idx: list[int]
    held_idx: list[int]
    cache: TargetCache
    out: Path
    points: np.ndarray | None = None
    points_rgb: np.ndarray | None = None
    settings: dict = field(default_factory=dict)
    backbone: object = None  # the frozen backbone (``fit3d.models``) whose tokens are the targets

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) render size."""
        return self.views[0].width, self.views[0].height

    @property
    def train_names(self) -> list[str]:
        return [self.views[i].name for i in self.train_idx]


@dataclass
class LiftResult:
    """A method's output: raw Gaussian parameters (``fit3d.lift.init.init_params``' keys), the decoder,
    the SH degree reached, the scene extent, where the initial points came from, a loss history, the
    method's own timings (seconds) and anything else worth recording in lift.json (``extra``)."""

    params: dict[str, Tensor]
    decoder: FeatureDecoder
    sh_degree: int
    extent: float
    init_source: str
    history: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
