"""Model identity in every record (issue 22): the resolved weights, a content fingerprint and the architecture are
recorded and compared by the resume rule whichever way the weights were given; a backbone name that disagrees
with the weights, or a fine-tuned folder whose record disagrees with its model, is an error before any work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from reliability_kit import FINETUNE_OPTS, LIFT_OPTS, assert_clean_error, copy_of, digest, run_cli


def _tiny_dino(path, seed):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                             patch_size=8, image_size=32)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def other_dino(tmp_path_factory):
    """Weights of the same tiny architecture as ``tiny_dino`` with other values."""
    return _tiny_dino(tmp_path_factory.mktemp("other_dino"), seed=1)


def _config_only(path, hidden, layers, heads=6):
    """A hub-layout folder whose config.json says a model of this size (weights never reached: the name check
    comes first, so the weights file is a placeholder)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "dinov2", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "patch_size": 14, "image_size": 518, "mlp_ratio": 4, "architectures": ["Dinov2Model"]}))
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return path


LIFT = [o for o in LIFT_OPTS]


def _lift(scene, out, *extra):
    return ["lift", scene, "--out", out, *LIFT, *extra]


# ------------------------------------------------------------------ lift: weights are part of the settings
def test_lift_rerun_with_other_weights_through_the_environment(scene_dir, tiny_dino, other_dino, tmp_path, capsys,
                                                               monkeypatch):
    """Was: weights given through FIT3D_MODEL_PATH were invisible: 'same settings, skipping'."""
    out = tmp_path / "lifted"
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(tiny_dino))
    assert run_cli(capsys, *_lift(scene_dir, out))[0] == 0
    rec = json.loads((out / "room" / "lift.json").read_text())["settings"]["model"]
    assert rec["source"] == str(tiny_dino.resolve()) and rec["fingerprint"] and rec["architecture"]["width"] == 16
    before = digest(out)
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(other_dino))
    rc, stdout, err = run_cli(capsys, *_lift(scene_dir, out))
    assert_clean_error(rc, err, out / "room", "model.source", "model.fingerprint")
    assert "skipping" not in stdout and digest(out) == before


def test_lift_rerun_after_the_weights_changed_in_place(scene_dir, tiny_dino, other_dino, tmp_path, capsys):
    weights = copy_of(tiny_dino, tmp_path / "weights")
    out = tmp_path / "lifted"
    assert run_cli(capsys, *_lift(scene_dir, out, "--model-path", weights))[0] == 0
    before = digest(out)
    shutil.copy(other_dino / "model.safetensors", weights / "model.safetensors")  # re-saved: same path, new values
    rc, _, err = run_cli(capsys, *_lift(scene_dir, out, "--model-path", weights))
    assert_clean_error(rc, err, "model.fingerprint")
    assert digest(out) == before


def test_lift_overwrite_with_other_weights_recomputes_the_targets(scene_dir, tiny_dino, other_dino, tmp_path, capsys,
                                                                  monkeypatch):
    """Was: --overwrite hard-linked the old target cache back in, so the 'new' lift equalled the old one."""
    out, fresh = tmp_path / "lifted", tmp_path / "fresh"
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(tiny_dino))
    assert run_cli(capsys, *_lift(scene_dir, out))[0] == 0
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(other_dino))
    rc, _, err = run_cli(capsys, *_lift(scene_dir, out, "--overwrite"))
    assert rc == 0, err
    assert run_cli(capsys, *_lift(scene_dir, fresh))[0] == 0  # the same lift from scratch with the other weights
    from fit3d.lift.targets import lifted_targets

    np.testing.assert_array_equal(lifted_targets(out / "room").grids, lifted_targets(fresh / "room").grids)
    assert json.loads((out / "room" / "lift.json").read_text())["targets_computed"] == 6  # none of the old model's
    assert json.loads((out / "room" / "lift.json").read_text())["settings"]["model"]["source"] == str(other_dino.resolve())


# ------------------------------------------------------------------ a backbone name must fit the weights
@pytest.mark.parametrize("command", ["lift", "finetune", "probe"])
def test_backbone_name_that_disagrees_with_the_weights(command, scene_dir, lifted, tmp_path, capsys):
    """Was: --backbone dinov2_large with DINOv2-S weights was accepted and recorded as dinov2_large."""
    small = _config_only(tmp_path / "dinov2-small", 384, 12)
    argv = {
        "lift": _lift(scene_dir, tmp_path / "o", "--backbone", "dinov2_large", "--model-path", small),
        "finetune": ["finetune", "--scenes", lifted[0] / "room", "--out", tmp_path / "o", "--backbone", "dinov2_large",
                     "--model-path", small, *FINETUNE_OPTS],
        "probe": ["probe", "--task", "depth", "--data", scene_dir, "--out", tmp_path / "o", "--backbone",
                  "dinov2_large", "--model-path", small],
    }[command]
    rc, _, err = run_cli(capsys, *argv)
    assert_clean_error(rc, err, "--backbone dinov2_large", small, "384 wide with 12 blocks", "dinov2_small")
    assert not (tmp_path / "o").exists()


def test_identity_reads_the_architecture_from_the_weights(tmp_path):
    from fit3d.models.identity import model_identity

    small = _config_only(tmp_path / "s", 384, 12)
    ident = model_identity("dinov2_small", small)
    assert ident["architecture"] == {"model_type": "dinov2", "width": 384, "depth": 12, "patch_size": 14, "registers": 0}
    assert ident["fingerprint"].startswith("64:")
    custom = _config_only(tmp_path / "c", 48, 3, heads=2)  # no registered size: a custom model, allowed
    assert model_identity("dinov2_large", custom)["architecture"]["width"] == 48


# ------------------------------------------------------------------ a fine-tuned folder's record must fit its model
def _fake_finetuned(tmp_path, backbone, hidden=384, layers=12):
    ft = tmp_path / "ft"
    _config_only(ft / "model", hidden, layers)
    (ft / "fit3d.json").write_text(json.dumps({"format": "fit3d-finetuned/1", "backbone": backbone,
                                               "model_dir": "model", "embed_dim": hidden, "patch_size": 14}))
    return ft


@pytest.mark.parametrize("command", ["compare", "probe"])
def test_finetuned_record_naming_another_backbone(command, scene_dir, tmp_path, capsys):
    """Was: a fine-tuned folder whose fit3d.json names another backbone loaded under that label."""
    ft = _fake_finetuned(tmp_path, "dinov2_large")
    argv = {"compare": ["compare", scene_dir / "frame-000000.color.jpg", "--finetuned", ft, "--out", tmp_path / "o"],
            "probe": ["probe", "--task", "depth", "--data", scene_dir, "--finetuned", ft, "--features", "finetuned",
                      "--out", tmp_path / "o", "--resolution", "16", "16", "--iterations", "1"]}[command]
    rc, _, err = run_cli(capsys, *argv)
    assert_clean_error(rc, err, ft / "fit3d.json", "dinov2_large", "dinov2_small")


def test_finetuned_record_with_another_width(finetuned, scene_dir, tmp_path, capsys):
    ft = copy_of(finetuned[0], tmp_path / "ft")
    m = json.loads((ft / "fit3d.json").read_text())
    m["embed_dim"] = 384
    (ft / "fit3d.json").write_text(json.dumps(m))
    rc, _, err = run_cli(capsys, "compare", scene_dir / "frame-000000.color.jpg", "--finetuned", ft, "--out",
                         tmp_path / "o")
    assert_clean_error(rc, err, ft / "fit3d.json", "embed_dim 384")


def test_finetuned_weights_replaced_after_the_record(finetuned, other_dino, scene_dir, tmp_path, capsys):
    ft = copy_of(finetuned[0], tmp_path / "ft")
    shutil.copy(other_dino / "model.safetensors", ft / "model" / "model.safetensors")
    rc, _, err = run_cli(capsys, "compare", scene_dir / "frame-000000.color.jpg", "--finetuned", ft, "--out",
                         tmp_path / "o")
    assert_clean_error(rc, err, ft / "model", "fingerprint")


def test_finetune_records_the_original_and_its_own_weights(finetuned, tiny_dino):
    from fit3d.models.identity import folder_fingerprint

    m = json.loads((finetuned[0] / "fit3d.json").read_text())
    assert m["model"]["source"] == str(tiny_dino.resolve())
    assert m["model"]["fingerprint"] == folder_fingerprint(tiny_dino)
    assert m["finetuned_fingerprint"] == folder_fingerprint(finetuned[0] / "model")
    assert m["settings"]["model"] == m["model"]


def test_probe_records_the_model_identity(finetuned, scene_dir, tiny_dino, tmp_path, capsys):
    from fit3d.models.identity import folder_fingerprint

    rc, _, err = run_cli(capsys, "probe", "--task", "depth", "--data", scene_dir, "--finetuned", finetuned[0],
                         "--features", "original", "finetuned", "--out", tmp_path / "p", "--resolution", "16", "16",
                         "--iterations", "2", "--train-frames", "0-3", "--test-frames", "4-5", "--figure", "0",
                         "--device", "cpu")
    assert rc == 0, err
    srcs = json.loads((tmp_path / "p" / "probe.json").read_text())["settings"]["sources"]
    ident = {s["label"]: s["identity"] for s in srcs}
    assert ident["original"]["original"]["fingerprint"] == folder_fingerprint(tiny_dino)
    assert ident["finetuned"]["finetuned"] == folder_fingerprint(finetuned[0] / "model")
