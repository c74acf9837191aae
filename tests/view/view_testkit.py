"""Helpers of the viewer's tests: a tiny random DINOv2 and a fine-tuned folder around one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def make_tiny_dinov2(path, seed: int = 0):
    """A 2-block, 32-wide DINOv2 with 8-px patches, saved with save_pretrained: the one of
    tests/finetune/conftest.py (loaded by path: conftest modules are not importable by name)."""
    spec = importlib.util.spec_from_file_location("finetune_conftest_kit",
                                                  Path(__file__).parents[1] / "finetune" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_tiny_dinov2(path, seed)


def fake_finetuned(path, model_dir, backbone="dinov2_small"):
    """A fine-tuned folder (fit3d.json + model/) around a tiny model, as `fit3d finetune` lays it out."""
    make_tiny_dinov2(path / "model", seed=1)
    (path / "fit3d.json").write_text(json.dumps({"backbone": backbone, "original_model_path": str(model_dir),
                                                 "model_dir": "model"}))
    return path
