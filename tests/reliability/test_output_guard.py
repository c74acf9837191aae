"""The output guard (issue 22): no command writes into, over or beside its inputs, output paths are checked
before any work, ``--overwrite`` only replaces what fit3d wrote, and a second run into a folder being written
is refused with the first one's pid. Every case: exit 1, one line naming the paths, no traceback, every
input and earlier output byte-identical."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from reliability_kit import (FINETUNE_OPTS, LIFT_OPTS, assert_clean_error, copy_of, digest, run_cli,
                             write_sevenscenes)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any backbone is loaded (every refusal here comes before the model)."""
    import fit3d.finetune.assembled as assembled
    import fit3d.finetune.trainer as trainer
    import fit3d.lift.stage as stage
    import fit3d.probe.sources as sources

    def boom(*a, **k):
        raise AssertionError("a backbone was loaded before the output was checked")

    for mod in (stage, trainer, assembled, sources):
        monkeypatch.setattr(mod, "load_backbone", boom)


# ------------------------------------------------------------------ outputs that are or hold inputs
@pytest.mark.parametrize("overwrite", [False, True])
def test_lift_into_the_scenes_own_parent_is_refused(overwrite, scene_dir, tiny_dino, tmp_path, capsys, no_model_load):
    """Was: with --overwrite every frame and the intrinsics of the scene were deleted (OUT/<name> = the scene)."""
    parent = tmp_path / "data"
    scene = copy_of(scene_dir, parent / "room")
    before = digest(parent)
    rc, _, err = run_cli(capsys, "lift", scene, "--out", parent, *LIFT_OPTS, "--model-path", tiny_dino,
                         *(["--overwrite"] if overwrite else []))
    assert_clean_error(rc, err, parent, scene, "contains the input")
    assert digest(parent) == before and sorted(p.name for p in parent.iterdir()) == ["room"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_finetune_into_its_lifted_scene_is_refused(overwrite, lifted, tiny_dino, tmp_path, capsys, no_model_load):
    """Was: --overwrite replaced the lifted scene by a model; without it the model was written into it."""
    scene = copy_of(lifted[0] / "room", tmp_path / "lifted" / "room")
    before = digest(scene)
    rc, _, err = run_cli(capsys, "finetune", "--scenes", scene, "--out", scene, "--model-path", tiny_dino,
                         *FINETUNE_OPTS, *(["--overwrite"] if overwrite else []))
    assert_clean_error(rc, err, scene, "is the input")
    assert digest(scene) == before


def test_finetune_api_refuses_its_input_too(lifted, tiny_dino, tmp_path):
    from fit3d.errors import Fit3DError
    from fit3d.finetune import finetune

    scene = copy_of(lifted[0] / "room", tmp_path / "room")
    before = digest(scene)
    with pytest.raises(Fit3DError, match="is the input"):
        finetune([str(scene)], "dinov2_small", scene, model_path=str(tiny_dino), overwrite=True)
    assert digest(scene) == before


def test_output_inside_the_model_folder_is_refused(lifted, tiny_dino, tmp_path, capsys, no_model_load):
    weights = copy_of(tiny_dino, tmp_path / "weights")
    before = digest(weights)
    rc, _, err = run_cli(capsys, "finetune", "--scenes", lifted[0] / "room", "--out", weights,
                         "--model-path", weights, *FINETUNE_OPTS)
    assert_clean_error(rc, err, weights, "is the input")
    assert digest(weights) == before


def test_own_new_subfolder_inside_an_input_is_allowed(scene_dir, tiny_dino, tmp_path, capsys):
    """The exception the rule makes: an output folder of its own inside a scene folder, holding no input."""
    scene = copy_of(scene_dir, tmp_path / "room")
    inputs = digest(scene)
    rc, _, err = run_cli(capsys, "lift", scene, "--out", scene / "fit3d-out", *LIFT_OPTS, "--model-path", tiny_dino)
    assert rc == 0, err
    after = digest(scene)
    assert {k: v for k, v in after.items() if not k.startswith("fit3d-out")} == inputs
    assert (scene / "fit3d-out" / "room" / "lift.json").is_file()


def test_probe_and_compare_outputs_that_are_inputs(finetuned, scene_dir, tiny_dino, tmp_path, capsys, no_model_load):
    data = copy_of(scene_dir, tmp_path / "data")
    before = digest(data)
    rc, _, err = run_cli(capsys, "probe", "--task", "depth", "--data", data, "--out", data, "--model-path", tiny_dino)
    assert_clean_error(rc, err, data, "is the input")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "frame.color.jpg").write_bytes((scene_dir / "frame-000000.color.jpg").read_bytes())
    rc, _, err = run_cli(capsys, "compare", photos, "--finetuned", finetuned[0], "--out", photos)
    assert_clean_error(rc, err, photos, "is the input")
    assert digest(data) == before and [p.name for p in photos.iterdir()] == ["frame.color.jpg"]


# ------------------------------------------------------------------ output paths checked before any work
def _write_cases(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("the user's file\n")
    return {"a file in the way": (f, "a file is in the way"), "parent is a file": (f / "sub", "is a file")}


COMMANDS = ["lift", "finetune", "compare", "generate", "probe", "pipeline", "demo"]


def _argv(command, out, scene_dir, lifted, finetuned, tiny_dino):
    return {
        "lift": ["lift", scene_dir, "--out", out, *LIFT_OPTS, "--model-path", tiny_dino],
        "finetune": ["finetune", "--scenes", lifted[0] / "room", "--out", out, "--model-path", tiny_dino, *FINETUNE_OPTS],
        "compare": ["compare", scene_dir / "frame-000000.color.jpg", "--finetuned", finetuned[0], "--out", out],
        "generate": ["generate", out, "--num-scenes", "1", "--num-views", "2", "--width", "16", "--height", "12"],
        "probe": ["probe", "--task", "depth", "--data", scene_dir, "--out", out, "--model-path", tiny_dino],
        "pipeline": ["pipeline", scene_dir, "--out", out, "--model-path", tiny_dino, "--device", "cpu"],
        "demo": ["demo", "--out", out, "--model-path", tiny_dino, "--device", "cpu"],
    }[command]


@pytest.mark.parametrize("case", ["a file in the way", "parent is a file"])
@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_out_is_refused_before_any_work(command, case, scene_dir, lifted, finetuned, tiny_dino, tmp_path,
                                                   capsys, no_model_load):
    """Was: finetune trained every step, then died in a FileExistsError traceback and the work was lost."""
    out, words = _write_cases(tmp_path)[case]
    rc, _, err = run_cli(capsys, *_argv(command, out, scene_dir, lifted, finetuned, tiny_dino))
    assert_clean_error(rc, err, out, words)
    assert (tmp_path / "a_file").read_text() == "the user's file\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_out_is_refused_before_any_work(command, scene_dir, lifted, finetuned, tiny_dino, tmp_path, capsys,
                                                  monkeypatch, no_model_load):
    """A read-only folder (simulated as a read-only mount, EROFS: permission bits do not stop root)."""
    import tempfile

    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and str(dir).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = ro / "out"
    rc, _, err = run_cli(capsys, *_argv(command, out, scene_dir, lifted, finetuned, tiny_dino))
    assert_clean_error(rc, err, out, "Read-only file system")
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the EROFS case covers it")
def test_read_only_folder_for_real(scene_dir, tiny_dino, tmp_path, capsys, no_model_load):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", ro / "out", *LIFT_OPTS, "--model-path", tiny_dino)
    finally:
        os.chmod(ro, 0o755)
    assert_clean_error(rc, err, ro / "out", "Permission denied")


# ------------------------------------------------------------------ --overwrite only removes what fit3d wrote
def test_lift_overwrite_never_replaces_a_folder_fit3d_did_not_write(scene_dir, tiny_dino, tmp_path, capsys,
                                                                     no_model_load):
    out = tmp_path / "out"
    users = out / "room"  # the user's own folder, named like the scene
    users.mkdir(parents=True)
    (users / "notes.txt").write_text("mine\n")
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", out, *LIFT_OPTS, "--model-path", tiny_dino, "--overwrite")
    assert_clean_error(rc, err, users, "did not write", "notes.txt")
    assert (users / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("command", ["finetune", "generate", "probe", "compare", "pipeline", "demo"])
def test_an_existing_folder_of_other_files_is_never_written(command, scene_dir, lifted, finetuned, tiny_dino, tmp_path,
                                                            capsys, no_model_load):
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    argv = _argv(command, out, scene_dir, lifted, finetuned, tiny_dino)
    rc, _, err = run_cli(capsys, *argv, *(["--overwrite"] if command in ("finetune", "generate") else []))
    assert_clean_error(rc, err, out, "did not write", "thesis.tex")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_a_refused_run_leaves_no_new_folder(scene_dir, tiny_dino, tmp_path, capsys):
    bad = copy_of(scene_dir, tmp_path / "room")
    (bad / "frame-000001.pose.txt").unlink()
    out = tmp_path / "new" / "out"
    rc, _, err = run_cli(capsys, "lift", bad, "--out", out, *LIFT_OPTS, "--model-path", tiny_dino)
    assert rc == 1 and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------ one run per output folder
def _hold_lock(folder):
    """Another process holding fit3d's lock on ``folder`` as ``fit3d.guard.lock_output`` takes it (flock on
    ``.fit3d.lock`` holding the pid), without importing fit3d (a quick start)."""
    code = ("import fcntl, json, os, sys, time; os.makedirs(sys.argv[1]); "
            "fd = os.open(os.path.join(sys.argv[1], '.fit3d.lock'), os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); "
            "os.write(fd, json.dumps({'pid': os.getpid(), 'command': 'lift'}).encode()); "
            "print('locked', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest.mark.parametrize("command", ["lift", "finetune"])
def test_a_second_run_into_a_folder_being_written_is_refused(command, scene_dir, lifted, finetuned, tiny_dino,
                                                             tmp_path, capsys):
    """Was: two runs into one --out with other settings both 'succeeded', the later replacing the first."""
    out = tmp_path / "out"
    other = _hold_lock(out)
    try:
        t0 = time.perf_counter()
        rc, _, err = run_cli(capsys, *_argv(command, out, scene_dir, lifted, finetuned, tiny_dino))
        assert_clean_error(rc, err, out, f"pid {other.pid}", "another fit3d run")
        assert time.perf_counter() - t0 < 30
    finally:
        other.kill()
        other.wait()
    rc, _, err = run_cli(capsys, *_argv(command, out, scene_dir, lifted, finetuned, tiny_dino))
    assert rc == 0, err  # once the other run is gone (even killed), the folder is free
    assert not (out / ".fit3d.lock").exists()


def test_lock_is_reentrant_and_released(tmp_path):
    from fit3d.guard import LOCK_FILE, lock_output, release_locks

    a = lock_output(tmp_path / "o", "x")
    b = lock_output(tmp_path / "o", "x")
    assert a is b and (tmp_path / "o" / LOCK_FILE).exists()
    release_locks()
    assert not (tmp_path / "o").exists()  # made by the lock and left empty: removed again


def test_write_inputs_and_outputs_unchanged_after_many_refusals(tmp_path, tiny_dino, capsys):
    """A scene generated in place and every refusal above in a row: the scene's bytes never change."""
    scene = write_sevenscenes(tmp_path / "s" / "room")
    before = digest(tmp_path / "s")
    for out in (tmp_path / "s", scene, scene / ".."):
        for extra in ([], ["--overwrite"]):
            rc, _, err = run_cli(capsys, "lift", scene, "--out", out, *LIFT_OPTS, "--model-path", tiny_dino, *extra)
            assert rc == 1 and "Traceback" not in err
    assert digest(tmp_path / "s") == before


def test_generate_rerun_with_other_settings_is_refused(tmp_path, capsys):
    """Was: a scene generated with other settings was silently replaced (without --overwrite)."""
    argv = ["generate", tmp_path / "g", "--num-scenes", "2", "--num-views", "2", "--width", "16", "--height", "12"]
    assert run_cli(capsys, *argv)[0] == 0
    before = digest(tmp_path / "g")
    rc, _, err = run_cli(capsys, *argv, "--fov-deg", "70")
    assert_clean_error(rc, err, tmp_path / "g" / "synthetic_0000", "fov_deg: 65.0 -> 70.0", "--overwrite")
    assert digest(tmp_path / "g") == before
    rc, _, err = run_cli(capsys, *argv, "--fov-deg", "70", "--overwrite")
    assert rc == 0, err
    assert digest(tmp_path / "g") != before


def test_probe_cache_dir_inside_the_data_is_refused(scene_dir, tiny_dino, tmp_path, capsys):
    data = copy_of(scene_dir, tmp_path / "data")
    before = digest(data)
    rc, _, err = run_cli(capsys, "probe", "--task", "depth", "--data", data, "--out", tmp_path / "p",
                         "--model-path", tiny_dino, "--cache-dir", data)
    assert_clean_error(rc, err, "--cache-dir", data)
    assert digest(data) == before


def test_clear_output_removes_only_fit3d_results(tmp_path):
    """What the bench scripts use for a fresh start (bench/lift_7scenes.py used to rmtree any --out)."""
    from fit3d.errors import OutputError
    from fit3d.guard import MARKER, clear_output

    mine = tmp_path / "mine"
    (mine / "room").mkdir(parents=True)
    (mine / MARKER).write_text("{}")
    (mine / "room" / "lift.json").write_text("{}")
    clear_output(mine)
    assert [p.name for p in mine.iterdir()] == [MARKER]
    users = tmp_path / "users"
    users.mkdir()
    (users / "data.csv").write_text("1,2\n")
    with pytest.raises(OutputError, match="did not write"):
        clear_output(users)
    assert (users / "data.csv").read_text() == "1,2\n"


def test_an_interrupted_overwrite_staging_folder_does_not_block_the_rerun(lifted, scene_dir, tmp_path, capsys):
    out = copy_of(lifted[0], tmp_path / "lifted")
    (out / ".room.new" / "cache").mkdir(parents=True)  # killed right after the old cache was linked in
    opts = [*lifted[1]]
    opts[opts.index("--feature-dim") + 1] = "8"
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", out, *opts, "--overwrite")
    assert rc == 0, err
    assert json.loads((out / "room" / "lift.json").read_text())["feature_dim"] == 8
