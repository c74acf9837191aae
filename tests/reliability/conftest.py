"""Fixtures of the reliability suite: a tiny random DINOv2, a tiny scene, one finished lift and fine-tune
(built once; cases work on copies)."""

from __future__ import annotations

import pytest
import torch

from reliability_kit import FINETUNE_OPTS, LIFT_OPTS, write_sevenscenes


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory):
    """A 1-block, 16-wide DINOv2 with 8-px patches (hub layout), loaded as ``dinov2_small`` via --model-path."""
    from transformers import Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("rel_dino")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                             patch_size=8, image_size=32)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory):
    return write_sevenscenes(tmp_path_factory.mktemp("rel_scene") / "room")


@pytest.fixture(scope="session")
def lifted(tmp_path_factory, scene_dir, tiny_dino):
    """A finished ``fit3d lift`` output folder OUT (the scene in OUT/room) and the options that made it."""
    from fit3d.cli import main

    out = tmp_path_factory.mktemp("rel_lifted") / "lifted"
    opts = [*LIFT_OPTS, "--model-path", str(tiny_dino)]
    assert main(["lift", str(scene_dir), "--out", str(out), *opts]) == 0
    return out, opts


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory, lifted, tiny_dino):
    """A finished ``fit3d finetune`` output folder on the lifted scene and the options that made it."""
    from fit3d.cli import main

    out = tmp_path_factory.mktemp("rel_ft") / "ft"
    opts = ["--scenes", str(lifted[0] / "room"), "--model-path", str(tiny_dino), *FINETUNE_OPTS]
    assert main(["finetune", "--out", str(out), *opts]) == 0
    return out, opts
