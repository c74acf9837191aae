"""Registry, model-source resolution and the errors users see (no downloads: the hub is stubbed)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers

from fit3d.cli import main
from fit3d.errors import ModelNotFoundError
from fit3d.models import BACKBONES, BackboneSpec, list_backbones, load_backbone, register_backbone
from fit3d.models import families, hub, loading

EXPECTED = ["dinov2_small", "dinov2_base", "dinov2_large", "dinov2_giant", "dinov2_small_reg", "dinov2_base_reg",
            "dinov2_large_reg", "dinov2_giant_reg", "dinov3_small", "dinov3_base", "dinov3_large", "clip_b16",
            "mae_b16", "deit3_b16"]


@pytest.fixture()
def tiny_dinov2(tmp_path):
    cfg = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                    patch_size=8, image_size=16)
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_registry_entries_and_specs():
    assert set(EXPECTED) <= set(list_backbones())
    assert BACKBONES["dinov2_base"].hub_id == "facebook/dinov2-base" and BACKBONES["dinov2_base"].patch_size == 14
    assert BACKBONES["dinov2_small_reg"].num_registers == 4
    assert BACKBONES["dinov3_small"].hub_id == "facebook/dinov3-vits16-pretrain-lvd1689m"
    assert BACKBONES["clip_b16"].mean != BACKBONES["mae_b16"].mean


def test_register_backbone_forms():
    try:
        spec = register_backbone(name="_test_fn", family="dinov2", hub_id="me/a", patch_size=14, embed_dim=8)
        assert BACKBONES["_test_fn"] is spec

        @register_backbone
        def _test_deco():
            return BackboneSpec(name="_test_deco", family="dinov2", hub_id="me/b", patch_size=14, embed_dim=8)

        assert _test_deco is BACKBONES["_test_deco"]
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(spec)
        register_backbone(spec, replace=True)
    finally:
        BACKBONES.pop("_test_fn", None), BACKBONES.pop("_test_deco", None)


def test_unknown_name_lists_registered_names():
    with pytest.raises(ModelNotFoundError, match="unknown backbone 'dinov9'.*dinov2_small.*clip_b16"):
        load_backbone("dinov9")


def test_missing_local_folder_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "dinov2"
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        load_backbone("dinov2_small", model_path=missing)
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(missing))
    with pytest.raises(ModelNotFoundError, match="FIT3D_MODEL_PATH"):
        load_backbone("dinov2_small")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_backbone("dinov2_small", model_path=tmp_path)


def test_env_model_path_and_wrong_family(tiny_dinov2, monkeypatch):
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(tiny_dinov2))
    bb = load_backbone("dinov2_small")
    assert bb.embed_dim == 16 and bb.patch_size == 8
    with pytest.raises(ModelNotFoundError, match="holds a 'dinov2' model.*clip_b16"):
        load_backbone("clip_b16", model_path=tiny_dinov2)


def test_offline_hub_id_says_how_to_use_a_local_folder(monkeypatch):
    monkeypatch.setattr(families, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotFoundError) as err:
        load_backbone("dinov2_base")
    msg = str(err.value)
    assert "facebook/dinov2-base" in msg and "--model-path" in msg and "FIT3D_MODEL_PATH" in msg


def test_hub_oserror_becomes_model_not_found(monkeypatch):
    """With a (stubbed) reachable hub, transformers' OSError is still turned into the same guidance."""
    monkeypatch.setattr(families, "hub_reachable", lambda timeout=3.0: True)

    def refuse(*args, **kwargs):
        raise OSError("facebook/vit-mae-base is not a local folder and is not a valid model identifier")

    monkeypatch.setattr(transformers.ViTMAEModel, "from_pretrained", refuse)
    with pytest.raises(ModelNotFoundError, match="not a valid model identifier.*--model-path"):
        load_backbone("mae_b16")


def test_hub_reachable_honours_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_reachable() is False


def test_hub_ids_pass_through_as_model_path(monkeypatch):
    spec = BACKBONES["dinov2_small"]
    monkeypatch.delenv("FIT3D_MODEL_PATH", raising=False)
    assert loading.resolve_source(spec, "someone/dinov2-finetuned") == ("someone/dinov2-finetuned", False)
    assert loading.resolve_source(spec, None) == ("facebook/dinov2-small", False)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_deit3_explains_that_timm_is_unavailable():
    with pytest.raises(ModelNotFoundError, match="only available through timm.*torchvision"):
        load_backbone("deit3_b16")


def test_backbones_cli_lists_the_registry(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out
    assert "facebook/dinov2-with-registers-small" in out and "timm: unavailable" in out


def test_device_argument(tiny_dinov2):
    bb = load_backbone("dinov2_small", model_path=tiny_dinov2, device=torch.device("cpu"))
    assert bb.device.type == "cpu" and next(bb.model.parameters()).device.type == "cpu"
