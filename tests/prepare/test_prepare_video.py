"""``fit3d prepare`` on a video made with OpenCV from a posed RGB-D scene's colour frames: the recovered
poses agree with the scene's, and the prepared scene lifts with the default Stage 1 method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from prepare_testkit import scene_frames, scene_poses

from fit3d.data.readers import frame_number, read_scene
from fit3d.prepare import PrepareConfig, prepare_scene, summary_line
from fit3d.prepare.evaluate import mean_pose_baseline, model_poses, pose_errors
from fit3d.prepare.video import write_video


class PooledColour:
    """A stand-in backbone: each 4x4 patch's mean colour and its complement (D = 6)."""

    patch_size, embed_dim = 4, 6

    def grid_size(self, H, W):
        return H // 4, W // 4

    @torch.inference_mode()
    def features(self, images):  # [B, 3, H, W] -> ([B, 6, h, w], [B, 6])
        m = F.avg_pool2d(images, 4)
        f = torch.cat([m, 1 - m], 1)
        return f, f.mean((2, 3))


@pytest.fixture(scope="module")
def prepared(icl_path, tmp_path_factory):
    """The ICL living room's 211 colour frames as a 10 fps video, prepared into 30 frames."""
    tmp = tmp_path_factory.mktemp("video")
    clip = write_video(tmp / "living-room.avi", scene_frames(icl_path, range(211)))
    cfg = PrepareConfig(max_frames=30, sift_max_size=320, max_features=1024, threads=2, progress=False)
    return prepare_scene(clip, tmp / "scene", cfg), tmp / "scene"


@pytest.mark.slow
def test_video_poses_agree_with_the_scene(prepared, icl_path):
    rec, out = prepared
    assert rec["input_kind"] == "video" and rec["matching"] == "sequential" and rec["camera"] == "single"
    assert rec["images"] == 30 and rec["registered"] >= 27  # >= 90%
    frames = {s["name"]: s["frame"] for s in rec["sources"]}
    assert all(frame_number(n) == f for n, f in frames.items())  # names carry the video frame index
    assert sorted(frames.values()) == list(frames.values())  # in time order, one per window
    assert all(7 * k <= f < 7 * (k + 1) + 1 for k, f in enumerate(frames.values()))
    est = model_poses(out / "sparse" / "0")
    err = pose_errors(est, scene_poses(icl_path, est, frame_number))
    base = mean_pose_baseline(scene_poses(icl_path, est, frame_number))
    assert err["median_rotation_deg"] <= 2.0 < base["median_rotation_deg"]
    assert err["median_centre_error_pct"] <= 5.0 < base["median_centre_error_pct"]
    assert "30/30 images registered" in summary_line(out, rec) or rec["dropped"]


@pytest.mark.slow
def test_prepared_scene_lifts_with_the_default_method(prepared, tmp_path):
    from fit3d.lift import LiftConfig, lift_scene

    rec, out = prepared
    scene = read_scene(out, resolution=(64, 48))
    assert scene.points is not None and len(scene.points) == rec["points"]
    assert all(v.depth is None for v in scene.views)  # the depth-free route
    cfg = LiftConfig(backbone="colour", width=32, feature_size=32, iterations=60, feature_dim=4, init_points=400,
                     densify=False, checkpoint_every=0, progress=False, pca_views=0, device="cpu")
    assert cfg.method == LiftConfig.method
    meta = lift_scene(out, cfg, tmp_path / "lifted", backbone=PooledColour())
    assert meta["init"].startswith("points") and meta["heldout"]["views"] >= 3  # Gaussians start at the scene's points (and colours)
    rgb = [h["rgb"] for h in meta["history"]]  # every method's colour loss falls from the points' start
    assert rgb[-1] < 0.8 * rgb[0]
    held = meta["heldout"]
    assert held["feature_cosine"] > held["baseline_mean_cosine"]


@pytest.mark.slow
def test_pipeline_takes_the_scene_and_asks_for_probe_data_with_depth(prepared, icl_path, tmp_path):
    from fit3d.errors import Fit3DError
    from fit3d.pipeline import PipelineConfig, run_pipeline, validate_pipeline

    _, out = prepared
    cfg = PipelineConfig(out=str(tmp_path / "run"), device="cpu")
    with pytest.raises(Fit3DError, match=r"probes \(depth, corr\) train on the first scene .* no depth.*--probe-data"):
        run_pipeline([str(out)], cfg, verbose=False)
    assert not (tmp_path / "run" / "lifted").exists()  # stopped before any work
    cfg = PipelineConfig(out=str(tmp_path / "run"), device="cpu", probe_data=str(icl_path))
    assert validate_pipeline([str(out)], cfg, cfg.lift_config(), cfg.finetune_config()) == {"scene": None}


@pytest.mark.slow
def test_readme_commands_from_a_video_to_a_finetuned_backbone(prepared, tmp_path):
    """The README's three commands (prepare, lift with the default method, finetune) on a tiny random
    DINOv2: the prepared scene goes through Stage 1 and Stage 2 to a model fit3d.load reads."""
    import fit3d
    from transformers import Dinov2Config, Dinov2Model

    from fit3d.cli import main

    _, scene = prepared
    torch.manual_seed(0)
    tiny = tmp_path / "tiny"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                             patch_size=8, image_size=64)).save_pretrained(str(tiny))
    lifted, ft = tmp_path / "lifted", tmp_path / "ft"
    assert main(["lift", str(scene), "--out", str(lifted), "--model-path", str(tiny), "--width", "64",
                 "--feature-size", "64", "--feature-dim", "8", "--iterations", "20", "--init-points", "400",
                 "--no-densify", "--checkpoint-every", "0", "--pca-views", "0", "--device", "cpu",
                 "--no-progress"]) == 0
    assert main(["finetune", "--scenes", str(lifted / scene.name), "--out", str(ft), "--model-path", str(tiny),
                 "--max-steps", "2", "--batch-size", "2", "--workers", "0", "--checkpoint-every", "0",
                 "--device", "cpu", "--no-evaluate", "--no-progress"]) == 0
    feats = fit3d.load(ft).features(torch.rand(1, 3, 64, 64))[0]
    assert feats.shape == (1, 64, 8, 8) and torch.isfinite(feats).all()  # original + fine-tuned tokens
