"""Integration: a tiny `fit3d demo` (one small room, few iterations) runs every stage end to end."""

from __future__ import annotations

import json

import pytest

from fit3d.demo import DemoConfig, resolve_model_path, run_demo
from fit3d.errors import ModelNotFoundError
from fit3d.finetune.config import FinetuneConfig
from fit3d.lift.config import LiftConfig
from fit3d.probe.config import ProbeConfig


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, dinov2_path, monkeypatch):
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(dinov2_path))
    cfg = DemoConfig(out=str(tmp_path / "demo"), report_dir=str(tmp_path / "docs"), train_scenes=1, test_scenes=1,
                     num_views=8, width=112, height=84, lift=LiftConfig(iterations=20, width=56),
                     finetune=FinetuneConfig(max_steps=3), probe=ProbeConfig(iterations=15, resolution=[112, 84]))
    res = run_demo(cfg)
    # every stage produced numbers for every feature source
    for key in ("depth_rmse", "seg_miou"):
        assert set(res[key]) == {"original", "finetuned", "concat"}
        assert all(v == v for v in res[key].values())  # not NaN
    assert res["finetune"]["steps"] == 3
    assert res["lift"]["synthetic_0000"]["heldout"]["feature_cosine"] > 0
    out = tmp_path / "demo"
    assert json.loads((out / "results.json").read_text())["depth_rmse"] == res["depth_rmse"]
    report = (tmp_path / "docs" / "report.md").read_text()
    assert "| depth RMSE" in report and "| seg mIoU" in report
    for pic in ("scene.png", "compare.png", "probe_depth.png", "probe_seg.png"):
        assert (tmp_path / "docs" / pic).stat().st_size > 1000, pic
        assert f"]({pic})" in report
    # the fine-tuned model loads with transformers
    from transformers import AutoModel

    assert AutoModel.from_pretrained(out / "finetuned" / "model") is not None


def test_offline_without_local_copy_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.delenv("FIT3D_MODEL_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("fit3d.demo.shared_model_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_path("dinov2_small", None)
    msg = str(e.value)
    assert "--model-path" in msg and "FIT3D_MODEL_PATH" in msg and "not reachable" in msg


def test_explicit_model_path_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(tmp_path / "env"))
    assert resolve_model_path("dinov2_small", str(tmp_path / "arg")) == str(tmp_path / "arg")
    assert resolve_model_path("dinov2_small", None) == str(tmp_path / "env")
