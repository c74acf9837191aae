"""``fit3d lift`` on a few real 7-Scenes frames with the real DINOv2-S: CLI, sharding, skip, Stage 2 view."""

from __future__ import annotations

import json

import pytest
import torch

from fit3d.cli import main
from fit3d.lift.cli import shard
from fit3d.lift.lifted import is_lifted, load_lifted

TINY = ["--method", "optimize", "--width", "32", "--feature-size", "112", "--iterations", "30", "--init-points", "1500",
        "--max-gaussians", "3000", "--feature-dim", "16", "--max-frame", "14", "--no-progress", "--device", "cpu"]


def test_shard_is_round_robin():
    assert shard(list("abcde"), 0, 2) == ["a", "c", "e"] and shard(list("abcde"), 1, 2) == ["b", "d"]


def test_cli_lifts_real_frames_shards_and_skips(sevenscenes_path, dinov2_path, tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "src" / "kitchen_a", tmp_path / "src" / "kitchen_b"
    a.parent.mkdir()
    a.symlink_to(sevenscenes_path, target_is_directory=True)
    b.symlink_to(sevenscenes_path, target_is_directory=True)
    out = tmp_path / "lifted"
    args = ["lift", str(a), str(b), "--out", str(out), "--model-path", str(dinov2_path), *TINY]

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(args) == 0
    assert is_lifted(out / "kitchen_b") and not (out / "kitchen_a").exists()  # rank 1 of 2: the second scene
    text = capsys.readouterr().out
    assert "kitchen_b:" in text and "feature cosine" in text

    meta = json.loads((out / "kitchen_b" / "lift.json").read_text())
    assert meta["backbone"] == "dinov2_small" and meta["feature_dim"] == 16 and meta["resolution"] == [32, 24]
    assert meta["scene"]["heldout_views"] == ["frame-000000"]  # frames 0..14 = 8 views, every 8th held out
    assert len(meta["scene"]["train_views"]) == 7 and meta["init"] == "depth"
    assert meta["history"][-1]["loss"] < meta["history"][0]["loss"]
    h = meta["heldout"]
    for k in ("psnr", "depth_abs_rel", "feature_cosine", "baseline_mean_cosine", "baseline_nearest_cosine"):
        assert isinstance(h[k], float), k
    assert meta["history"][-1]["feat"] < meta["history"][0]["feat"]  # 30 iterations: learning, not yet converged

    lifted = load_lifted(out / "kitchen_b")
    assert lifted.decoder.out_dim == 384 and lifted.gaussians.feature_dim == 16
    views = lifted.read_views("heldout")  # what Stage 2 does: re-read the views at the lift resolution
    assert [v.name for v in views.views] == ["frame-000000"] and views.views[0].width == 32

    # world size 1: b is skipped (finished), a is lifted
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    before = (out / "kitchen_b" / "lift.json").stat().st_mtime_ns
    assert main(args) == 0
    assert "kitchen_b: already lifted, skipping" in capsys.readouterr().out
    assert is_lifted(out / "kitchen_a") and (out / "kitchen_b" / "lift.json").stat().st_mtime_ns == before


def test_cli_reports_a_missing_scene(tmp_path, capsys):
    assert main(["lift", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "nope" in capsys.readouterr().err
