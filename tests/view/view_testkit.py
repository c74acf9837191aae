"""Helpers of the viewer's tests: a tiny random DINOv2 and a fine-tuned folder around one."""

from __future__ import annotations

import json

import torch


def make_tiny_dinov2(path, seed: int = 0):
    """A 2-block, 32-wide DINOv2 with 8-px patches, saved with save_pretrained."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8,
                       image_size=64)
    Dinov2Model(cfg).save_pretrained(str(path))
    return path


def fake_finetuned(path, model_dir, backbone="dinov2_small"):
    """A fine-tuned folder (fit3d.json + model/) around a tiny model, as `fit3d finetune` lays it out."""
    make_tiny_dinov2(path / "model", seed=1)
    (path / "fit3d.json").write_text(json.dumps({"backbone": backbone, "original_model_path": str(model_dir),
                                                 "model_dir": "model"}))
    return path
