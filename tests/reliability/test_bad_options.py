"""Bad options: exit 1 (2 for what argparse rejects) naming the option, before any model, scene or feature
work, leaving no output behind."""

from __future__ import annotations

import pytest
import torch

from reliability_kit import FINETUNE_OPTS, LIFT_OPTS, assert_clean_error, run_cli

NO_CUDA = not torch.cuda.is_available()

# (options appended to the stage's working options, what the message must name, exit status)
LIFT = {
    "zero iterations": (["--iterations", "0"], "--iterations", 1),
    "negative iterations": (["--iterations", "-5"], "--iterations", 1),
    "zero width": (["--width", "0"], "--width", 1),
    "zero height": (["--height", "0"], "--height", 1),
    "zero feature dim": (["--feature-dim", "0"], "--feature-dim", 1),
    "zero feature size": (["--feature-size", "0"], "--feature-size", 1),
    "even decoder kernel": (["--decoder-kernel", "2"], "--decoder-kernel", 1),
    "opacity of 0": (["--init-opacity", "0"], "--init-opacity", 1),
    "NaN learning rate": (["--lr-features", "nan"], "--lr-features", 1),
    "SH degree 4": (["--max-sh-degree", "4"], "--max-sh-degree", 1),
    "unknown device": (["--device", "gpu"], "--device", 1),
    "cuda:7": (["--device", "cuda:7"], "--device", 1),
    "unknown backend": (["--raster-backend", "nope"], "--raster-backend", 2),
    "unknown method": (["--method", "nope"], "--method", 2),
}
if NO_CUDA:
    LIFT["cuda without a GPU"] = (["--device", "cuda"], "CUDA is not available", 1)
    LIFT["gsplat backend on CPU"] = (["--raster-backend", "gsplat"], "--raster-backend", 1)

FINETUNE = {
    "zero max steps": (["--max-steps", "0"], "--max-steps", 1),
    "zero epochs": (["--epochs", "0"], "--epochs", 1),
    "zero batch size": (["--batch-size", "0"], "--batch-size", 1),
    "one-value resolution": (["--resolution", "64"], "--resolution", 1),
    "zero resolution": (["--resolution", "0", "48"], "--resolution", 1),
    "NaN learning rate": (["--lr", "nan"], "--lr", 1),
    "flip probability 2": (["--flip-prob", "2"], "--flip-prob", 1),
    "negative workers": (["--workers", "-1"], "--workers", 1),
    "unknown device": (["--device", "tpu:0"], "--device", 1),
    "cuda:7": (["--device", "cuda:7"], "--device", 1),
    "unknown worker start": (["--worker-start", "thread"], "--worker-start", 2),
    "unknown target_at": (["--target-at", "nowhere"], "--target-at", 2),
    "unknown render-on": (["--render-on", "gpu"], "--render-on", 2),
    "render-on device with workers": (["--render-on", "device", "--workers", "2"], "--render-on", 1),
    "weight average above 1": (["--weight-average", "1.5"], "--weight-average", 1),
    "weight average with LoRA": (["--weight-average", "0.2", "--adapter", "lora"], "--weight-average", 1),
}


@pytest.mark.parametrize("case", list(LIFT))
def test_lift_option(case, scene_dir, tmp_path, capsys, monkeypatch):
    import fit3d.lift.stage as stage

    extra, names, status = LIFT[case]
    monkeypatch.setattr(stage, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", tmp_path / "out", *LIFT_OPTS, *extra)
    assert_clean_error(rc, err, names, status=status)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", list(FINETUNE))
def test_finetune_option(case, lifted, tmp_path, capsys, monkeypatch):
    import fit3d.models

    extra, names, status = FINETUNE[case]
    monkeypatch.setattr(fit3d.models, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    rc, _, err = run_cli(capsys, "finetune", "--scenes", lifted[0] / "room", "--out", tmp_path / "ft",
                         *FINETUNE_OPTS, *extra)
    assert_clean_error(rc, err, names, status=status)
    assert not (tmp_path / "ft").exists()


PIPELINE = {
    "unknown probe task (checked before lifting)": (["--tasks", "depth", "bogus"], "--tasks", 2),
    "one-value probe resolution": (["--probe.resolution", "448"], "--probe.resolution", 1),
    "zero lift iterations": (["--lift.iterations", "0"], "--lift.iterations", 1),
    "zero fine-tune steps": (["--finetune.max-steps", "0"], "--finetune.max-steps", 1),
    "bad lift method": (["--lift.method", "nope"], "--lift.method", 2),
    "missing probe data": (["--probe-data", "/nonexistent/probe"], "--probe-data", 1),
}


@pytest.mark.parametrize("case", list(PIPELINE))
def test_pipeline_option(case, scene_dir, tmp_path, capsys, monkeypatch):
    import fit3d.lift.stage as stage

    extra, names, status = PIPELINE[case]
    monkeypatch.setattr(stage, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    rc, _, err = run_cli(capsys, "pipeline", scene_dir, "--out", tmp_path / "p", "--device", "cpu", *extra)
    assert_clean_error(rc, err, names, status=status)
    assert not (tmp_path / "p" / "lifted").exists()


def test_generate_zero_scenes(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "generate", tmp_path / "g", "--num-scenes", "0")
    assert_clean_error(rc, err, "--num-scenes")
