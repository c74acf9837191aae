"""Reruns over existing outputs: same settings skip, other settings stop naming every differing field,
--overwrite replaces only once the new result is complete, a failed rerun leaves the old result intact."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from reliability_kit import FINETUNE_OPTS, assert_clean_error, copy_of, digest, leftovers, run_cli


def _set(opts: list, name: str, value: str) -> list:
    """``opts`` with option ``name`` set to ``value`` (replaced or appended)."""
    opts = list(opts)
    if name in opts:
        opts[opts.index(name) + 1] = value
        return opts
    return [*opts, name, value]


# ------------------------------------------------------------------ lift
LIFT_RERUNS = {  # change -> (exit status, words the message must hold; None: skipped as finished)
    "same settings": ([], 0, None),
    "volatile: checkpoint period and device": (["--checkpoint-every", "3", "--device", "auto"], 0, None),
    "feature dim": (["--feature-dim", "8"], 1, ["feature_dim: 4 -> 8", "--overwrite"]),
    "iterations and width": (["--iterations", "9", "--width", "20"], 1, ["iterations: 6 -> 9", "width: 16 -> 20"]),
    "learning rate": (["--lr-features", "0.05"], 1, ["lr_features: 0.02 -> 0.05"]),
}


@pytest.mark.parametrize("case", list(LIFT_RERUNS))
def test_lift_rerun_over_a_finished_scene(case, lifted, scene_dir, tmp_path, capsys):
    """Defect 1 (lift): a finished scene was skipped whatever the new settings."""
    change, status, words = LIFT_RERUNS[case]
    out = copy_of(lifted[0], tmp_path / "lifted")
    before = digest(out)
    opts = lifted[1]
    for i in range(0, len(change), 2):
        opts = _set(opts, change[i], change[i + 1])
    rc, stdout, err = run_cli(capsys, "lift", scene_dir, "--out", out, *opts)
    if words is None:
        assert rc == 0 and "already lifted, skipping" in stdout, err
    else:
        assert_clean_error(rc, err, out / "room", *words, status=status)
    assert digest(out) == before


@pytest.mark.parametrize("bad", ["truncated image", "zero iterations"])
def test_lift_overwrite_that_fails_keeps_the_finished_result(bad, lifted, scene_dir, tmp_path, capsys):
    """Defect 2: --overwrite deleted the previous result before reading the scene or checking options."""
    out = copy_of(lifted[0], tmp_path / "lifted")
    before = digest(out)
    scene = scene_dir
    opts = lifted[1]
    if bad == "truncated image":
        scene = shutil.copytree(scene_dir, tmp_path / "room")
        f = scene / "frame-000003.color.jpg"
        f.write_bytes(f.read_bytes()[:200])
    else:
        opts = _set(opts, "--iterations", "0")
    rc, _, err = run_cli(capsys, "lift", scene, "--out", out, *opts, "--overwrite")
    assert rc == 1 and "Traceback" not in err
    assert digest(out) == before


def test_lift_overwrite_replaces_once_complete(lifted, scene_dir, tmp_path, capsys):
    out = copy_of(lifted[0], tmp_path / "lifted")
    opts = _set(lifted[1], "--feature-dim", "8")
    rc, stdout, err = run_cli(capsys, "lift", scene_dir, "--out", out, *opts, "--overwrite")
    assert rc == 0, err
    meta = json.loads((out / "room" / "lift.json").read_text())
    assert meta["feature_dim"] == 8 and meta["settings"]["feature_dim"] == 8
    assert leftovers(out / "room") == []
    rc, stdout, _ = run_cli(capsys, "lift", scene_dir, "--out", out, *opts)  # now the same settings: skipped
    assert rc == 0 and "already lifted, skipping" in stdout


def test_lift_outputs_get_the_umask_permissions(lifted):
    umask = os.umask(0o022)
    os.umask(umask)
    for f in ("lift.json", "gaussians.ply", "decoder.safetensors"):
        assert stat.S_IMODE((lifted[0] / "room" / f).stat().st_mode) == 0o666 & ~umask, f


def test_stale_temporary_files_of_a_killed_write_are_removed(lifted, scene_dir, tmp_path, capsys):
    out = copy_of(lifted[0], tmp_path / "lifted")
    (out / "room" / "lift.json").unlink()  # unfinished, so the rerun lifts (and cleans)
    stale = out / "room" / ".gaussians.ply.999999999.k1ll3d.tmp"  # the pid of a process that is gone
    stale.write_bytes(b"half a file")
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", out, *lifted[1])
    assert rc == 0, err
    assert not stale.exists() and leftovers(out / "room") == []


def test_pipeline_reuses_a_finished_lift_only_with_the_same_settings(lifted, scene_dir, tiny_dino, tmp_path,
                                                                     capsys, monkeypatch):
    """Defect 1 (pipeline): finished lifts were reused without comparing their settings."""
    import fit3d.lift.stage as stage

    out = tmp_path / "p"
    copy_of(lifted[0], out / "lifted")
    before = digest(out)
    monkeypatch.setattr(stage, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    rc, _, err = run_cli(capsys, "pipeline", scene_dir, "--out", out, "--model-path", tiny_dino, "--device", "cpu",
                         "--lift.iterations", "7")
    assert_clean_error(rc, err, out / "lifted" / "room", "iterations: 6 -> 7", "--out")
    assert digest(out) == before


# ------------------------------------------------------------------ finetune
FINETUNE_RERUNS = {
    "same settings": ([], 0, None),
    "volatile: workers, log period": (["--workers", "1", "--log-every", "3"], 0, None),
    "learning rate": (["--lr", "0.01"], 1, ["lr: 0.001 -> 0.01"]),
    "same step count, other freeze": (["--freeze-blocks", "1"], 1, ["freeze_blocks: 0 -> 1"]),
    "more steps": (["--max-steps", "3"], 1, ["max_steps: 2 -> 3"]),
}


@pytest.mark.parametrize("case", list(FINETUNE_RERUNS))
def test_finetune_rerun_over_a_finished_run(case, finetuned, tmp_path, capsys):
    """Defect 1 (finetune): only steps and world size were compared, so other settings kept the stale model."""
    change, status, words = FINETUNE_RERUNS[case]
    out = copy_of(finetuned[0], tmp_path / "ft")
    before = digest(out)
    opts = finetuned[1]
    for i in range(0, len(change), 2):
        opts = _set(opts, change[i], change[i + 1])
    rc, stdout, err = run_cli(capsys, "finetune", "--out", out, *opts)
    if words is None:
        assert rc == 0, err
    else:
        assert_clean_error(rc, err, out, *words, "--overwrite", status=status)
    assert digest(out) == before


def test_finetune_rerun_with_other_scenes_or_weights(finetuned, lifted, tiny_dino, tmp_path, capsys):
    out = copy_of(finetuned[0], tmp_path / "ft")
    other = copy_of(lifted[0] / "room", tmp_path / "other" / "room")
    before = digest(out)
    rc, _, err = run_cli(capsys, "finetune", "--out", out, "--scenes", other, "--model-path", tiny_dino,
                         *FINETUNE_OPTS)
    assert_clean_error(rc, err, "scenes[0].path:", "other/room")
    weights = copy_of(tiny_dino, tmp_path / "other_weights")
    rc, _, err = run_cli(capsys, "finetune", "--out", out, "--scenes", lifted[0] / "room", "--model-path", weights,
                         *FINETUNE_OPTS)
    assert_clean_error(rc, err, "model.source:")
    assert digest(out) == before


def test_finetune_overwrite_replaces_once_complete(finetuned, tmp_path, capsys):
    out = copy_of(finetuned[0], tmp_path / "ft")
    opts = _set(finetuned[1], "--lr", "0.01")
    rc, _, err = run_cli(capsys, "finetune", "--out", out, *opts, "--overwrite")
    assert rc == 0, err
    m = json.loads((out / "fit3d.json").read_text())
    assert m["settings"]["lr"] == 0.01 and (out / "model" / "config.json").exists()
    assert leftovers(out) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((out / "model").stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700


def test_generate_removes_a_killed_write_and_uses_the_umask(tmp_path, capsys):
    out = tmp_path / "scenes"
    stale = out / ".synthetic_0000.999999999.k1ll3d.tmp"  # a half-written scene of a process that is gone
    (stale / "color").mkdir(parents=True)
    rc, _, err = run_cli(capsys, "generate", out, "--num-scenes", "1", "--num-views", "2", "--width", "16",
                         "--height", "12")
    assert rc == 0, err
    assert not stale.exists() and leftovers(out / "synthetic_0000") == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((out / "synthetic_0000").stat().st_mode) == 0o777 & ~umask


def test_finetune_rerun_after_its_scene_was_relifted(scene_dir, tiny_dino, tmp_path, capsys):
    """A fine-tuned model is stale once a scene it was trained on is lifted again with other settings."""
    from reliability_kit import LIFT_OPTS

    lift = ["lift", scene_dir, "--out", tmp_path / "lifted", *LIFT_OPTS, "--model-path", tiny_dino]
    assert run_cli(capsys, *lift)[0] == 0
    ft = ["finetune", "--scenes", tmp_path / "lifted" / "room", "--out", tmp_path / "ft", "--model-path", tiny_dino,
          *FINETUNE_OPTS]
    assert run_cli(capsys, *ft)[0] == 0
    before = digest(tmp_path / "ft")
    assert run_cli(capsys, *_set(lift, "--feature-dim", "8"), "--overwrite")[0] == 0
    rc, _, err = run_cli(capsys, *ft)
    assert_clean_error(rc, err, tmp_path / "ft", "scenes[0].lift.feature_dim: 4 -> 8")
    assert digest(tmp_path / "ft") == before
