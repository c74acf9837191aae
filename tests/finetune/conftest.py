"""Fixtures for Stage 2: a tiny random DINOv2 (saved with save_pretrained) and a lifted scene built by
back-projecting a few real 7-Scenes frames (features = the tiny model's own, projected to f dims)."""

from __future__ import annotations

import pytest
import torch

RESOLUTION = (64, 48)  # W, H: an 8 x 6 grid of 8-px patches
TRAIN = [f"frame-{i:06d}" for i in range(0, 48, 6)]  # 8 views (frames 0-398 are the lift/fine-tune range)
HELDOUT = [f"frame-{i:06d}" for i in (4, 16, 28)]


def make_tiny_dinov2(path, seed: int = 0):
    """A 2-block, 32-wide DINOv2 with 8-px patches, saved with save_pretrained."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8,
                       image_size=64)
    Dinov2Model(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2"))


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir):
    from fit3d.models import load_backbone

    return load_backbone("dinov2_small", model_path=str(tiny_model_dir))


@pytest.fixture(scope="session")
def lifted_dir(tmp_path_factory, sevenscenes_path, tiny_backbone, tiny_model_dir):
    from fit3d.lift.backprojected import backprojected_lift

    return backprojected_lift(sevenscenes_path, tiny_backbone, tmp_path_factory.mktemp("lifted") / "redkitchen",
                              train_views=TRAIN, heldout_views=HELDOUT, resolution=RESOLUTION, feature_dim=8,
                              stride=4, footprint=1.0, model_path=str(tiny_model_dir))


@pytest.fixture
def killed_run(monkeypatch, lifted_dir, tiny_model_dir):
    """``kill(out, cfg, loss="masked_l1", call=4)``: a fine-tune of ``lifted_dir`` into ``out`` killed
    (KeyboardInterrupt) in the ``call``-th call of the trainer's function ``loss`` (the default: the 4th loss
    evaluation, between the checkpoints of steps 2 and 4); the real function is back when it returns."""
    from fit3d.finetune import finetune
    from fit3d.finetune import trainer as trainer_mod

    def kill(out, cfg, loss: str = "masked_l1", call: int = 4) -> None:
        calls = {"n": 0}
        real = getattr(trainer_mod, loss)

        def dies(*a, **k):
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(trainer_mod, loss, dies)
        with pytest.raises(KeyboardInterrupt):
            finetune([lifted_dir], "dinov2_small", out, cfg, model_path=str(tiny_model_dir))
        monkeypatch.setattr(trainer_mod, loss, real)

    return kill
