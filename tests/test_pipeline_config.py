"""The pipeline nests the stage configs; shared fields (backbone, model path, device, seed) reach every stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from fit3d.config import add_arguments, from_args
from fit3d.finetune.config import FinetuneConfig
from fit3d.lift.config import LiftConfig
from fit3d.pipeline import PipelineConfig
from fit3d.probe.config import ProbeConfig


def stages(cfg: PipelineConfig):
    return cfg.lift_config(), cfg.finetune_config(), cfg.probe_config("depth", "data", "ft", Path("out"))


def test_seed_backbone_device_reach_every_stage():
    cfg = PipelineConfig(backbone="dinov2_base", model_path="/w", device="cpu", seed=5)
    for s in stages(cfg):
        assert (s.backbone, s.model_path, s.device, s.seed) == ("dinov2_base", "/w", "cpu", 5)


def test_without_a_seed_each_stage_keeps_its_own_default():
    lift, ft, probe = stages(PipelineConfig())
    assert (lift.seed, ft.seed, probe.seed) == (LiftConfig().seed, FinetuneConfig().seed, ProbeConfig().seed)


def test_dotted_cli_options_set_stage_fields():
    p = argparse.ArgumentParser()
    add_arguments(p, PipelineConfig)
    cfg = from_args(PipelineConfig, p.parse_args([
        "--seed", "3", "--lift.iterations", "12", "--lift.max-frame", "398", "--finetune.max-steps", "4",
        "--probe.iterations", "30", "--probe.resolution", "112", "84", "--probe.val-frames", "320-398"]))
    lift, ft, probe = stages(cfg)
    assert (lift.iterations, lift.max_frame, lift.seed) == (12, 398, 3)
    assert (ft.max_steps, ft.seed) == (4, 3)
    assert ft.resolution == [112, 84]  # Stage 2 trains at the probe resolution unless told otherwise
    assert (probe.iterations, probe.seed, probe.val_frames, probe.features) == (30, 3, "320-398",
                                                                               ["original", "finetuned", "concat"])
    assert cfg.probe_config("seg", "d", None, Path("o")).val_frames is None  # depth only


def test_finetune_resolution_given_is_kept():
    cfg = PipelineConfig(finetune=FinetuneConfig(resolution=[56, 42]))
    assert cfg.finetune_config().resolution == [56, 42]


def test_recipe_is_the_base_and_dotted_options_override_it():
    from fit3d.finetune.recipes import DEFAULT_RECIPE, RECIPES, config_from_args, from_recipe
    from fit3d.pipeline import add_arguments as add_pipeline_arguments

    p = argparse.ArgumentParser()
    add_pipeline_arguments(p)

    def parse(argv):
        return config_from_args(PipelineConfig, p.parse_args(["scene", *argv]))

    assert parse([]).finetune == from_recipe(DEFAULT_RECIPE) == PipelineConfig().finetune
    fit3d = parse(["--recipe", "fit3d", "--finetune.max-steps", "3"]).finetune
    assert fit3d == from_recipe("fit3d", max_steps=3) and fit3d.adapter == "none"
    some = next(n for n, v in RECIPES.items() if v.lr != RECIPES["fit3d"].lr)
    assert parse(["--recipe", some, "--finetune.lr", "0.5"]).finetune.lr == 0.5  # explicit beats the preset


def test_a_nested_method_option_and_its_errors_carry_the_pipelines_prefix(tmp_path):
    """--lift.solve.cg-ridge (and its old spelling --lift.solve-cg-ridge) set LiftConfig.solve; a bad value is an
    error naming --lift.solve.cg-ridge, checked before any work."""
    import pytest

    from fit3d.errors import Fit3DError
    from fit3d.pipeline import add_arguments as add_pipeline_arguments
    from fit3d.pipeline import validate_pipeline

    p = argparse.ArgumentParser()
    add_pipeline_arguments(p)
    for spelling in ("--lift.solve.cg-ridge", "--lift.solve-cg-ridge"):
        cfg = from_args(PipelineConfig, p.parse_args([str(tmp_path), spelling, "-1"]))
        assert cfg.lift_config().solve.cg_ridge == -1
        with pytest.raises(Fit3DError, match=r"^--lift\.solve\.cg-ridge \(SolveConfig\.cg_ridge\) = -1"):
            validate_pipeline([str(tmp_path)], cfg, cfg.lift_config(), cfg.finetune_config())
    bad = from_args(PipelineConfig, p.parse_args([str(tmp_path), "--finetune.lr", "-1"]))
    with pytest.raises(Fit3DError, match=r"^--finetune\.lr "):
        validate_pipeline([str(tmp_path)], bad, bad.lift_config(), bad.finetune_config())
    # targets without each view's own Gaussians need a lift that records them: refused before Stage 1 runs
    bad = from_args(PipelineConfig, p.parse_args([str(tmp_path), "--finetune.target-views", "others"]))
    with pytest.raises(Fit3DError, match=r"^--finetune\.target-views others .*--lift\.method backprojected"):
        validate_pipeline([str(tmp_path)], bad, bad.lift_config(), bad.finetune_config())


def test_lift_and_probes_share_one_token_cache():
    lift, _, probe = stages(PipelineConfig(out="runs/p"))
    assert lift.cache_dir == probe.cache_dir == str(Path("runs/p") / "cache")
    lift = PipelineConfig(out="runs/p", lift=LiftConfig(cache_dir="/elsewhere")).lift_config()
    assert lift.cache_dir == "/elsewhere"  # a folder given is kept
