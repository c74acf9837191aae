"""Every file of an output folder, fed back damaged, gives a one-line error naming it (never a traceback,
never unpickled code), or, for a cache, is recomputed."""

from __future__ import annotations

import pickle
import shutil

import pytest

from reliability_kit import FINETUNE_OPTS, LIFT_OPTS, assert_clean_error, copy_of, run_cli


def _truncate(p):
    p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)])


def _garbage(p):
    p.write_bytes(b"\x00garbage\xff" * 10)


class _Planted:
    """Unpickling this runs ``open(path, "w")``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


DAMAGES = {"truncated": _truncate, "garbage": _garbage, "empty": lambda p: p.write_bytes(b"")}

# lifted-folder files read by `fit3d finetune --scenes`: (file, words of the message)
LIFTED_FILES = {"lift.json": "lifted scene record", "gaussians.ply": "Gaussians", "decoder.safetensors": "decoder"}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", list(LIFTED_FILES))
def test_damaged_lifted_file_fed_to_finetune(name, damage, lifted, tiny_dino, tmp_path, capsys):
    d = copy_of(lifted[0] / "room", tmp_path / "room")
    DAMAGES[damage](d / name)
    rc, _, err = run_cli(capsys, "finetune", "--scenes", d, "--out", tmp_path / "ft", "--model-path", tiny_dino,
                         *FINETUNE_OPTS)
    assert_clean_error(rc, err, d / name)
    assert not (tmp_path / "ft" / "fit3d.json").exists()


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_finetune_manifest_fed_back(damage, finetuned, tmp_path, capsys):
    out = copy_of(finetuned[0], tmp_path / "ft")
    DAMAGES[damage](out / "fit3d.json")
    rc, _, err = run_cli(capsys, "finetune", "--out", out, *finetuned[1])
    assert_clean_error(rc, err, out / "fit3d.json")


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_lift_json_of_a_finished_scene(damage, lifted, scene_dir, tmp_path, capsys):
    out = copy_of(lifted[0], tmp_path / "lifted")
    DAMAGES[damage](out / "room" / "lift.json")
    before = (out / "room" / "gaussians.ply").read_bytes()
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", out, *lifted[1])
    assert_clean_error(rc, err, out / "room" / "lift.json")
    assert (out / "room" / "gaussians.ply").read_bytes() == before


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_lift_checkpoint(damage, scene_dir, tiny_dino, tmp_path, capsys):
    out = tmp_path / "lifted"
    (out / "room").mkdir(parents=True)
    ck = out / "room" / "checkpoint.safetensors"
    ck.write_bytes(b"x" * 100)
    DAMAGES[damage](ck)
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", out, *LIFT_OPTS, "--model-path", tiny_dino)
    assert_clean_error(rc, err, ck, "checkpoint")


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_finetune_checkpoint(damage, lifted, tiny_dino, tmp_path, capsys):
    out = tmp_path / "ft"
    out.mkdir()
    ck = out / "checkpoint.safetensors"
    ck.write_bytes(b"x" * 100)
    DAMAGES[damage](ck)
    rc, _, err = run_cli(capsys, "finetune", "--scenes", lifted[0] / "room", "--out", out, "--model-path",
                         tiny_dino, *FINETUNE_OPTS)
    assert_clean_error(rc, err, ck, "checkpoint")


@pytest.mark.parametrize("stage", ["lift", "finetune"])
def test_planted_pickle_checkpoint_is_never_run(stage, lifted, scene_dir, tiny_dino, tmp_path, capsys):
    """Defect 3: a checkpoint.pt planted in an output folder ran arbitrary code (torch.load weights_only=False)."""
    proof = tmp_path / "pwned"
    if stage == "lift":
        folder = tmp_path / "lifted" / "room"
        argv = ["lift", scene_dir, "--out", tmp_path / "lifted", *LIFT_OPTS, "--model-path", tiny_dino]
    else:
        folder = tmp_path / "ft"
        argv = ["finetune", "--scenes", lifted[0] / "room", "--out", folder, "--model-path", tiny_dino,
                *FINETUNE_OPTS]
    from fit3d.guard import MARKER

    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(pickle.dumps(_Planted(proof)))
    rc, _, err = run_cli(capsys, *argv)  # a folder fit3d never marked: the output guard refuses it
    assert_clean_error(rc, err, folder, "did not write")
    (folder / MARKER).write_text("{}")  # planted into a folder fit3d made
    rc, _, err = run_cli(capsys, *argv)
    assert_clean_error(rc, err, folder / "checkpoint.pt", "never loaded")
    assert not proof.exists()


def test_corrupt_target_cache_is_recomputed(lifted, scene_dir, tmp_path, capsys):
    import json

    out = copy_of(lifted[0], tmp_path / "lifted")
    (out / "room" / "lift.json").unlink()  # unfinished: the rerun lifts, reusing the cache if it can
    entries = sorted((out / "room" / "cache").glob("*.safetensors"))
    assert len(entries) == 6
    for e in entries:
        _truncate(e)
    with pytest.warns(UserWarning, match="unreadable token cache entry"):
        rc, stdout, err = run_cli(capsys, "lift", scene_dir, "--out", out, *lifted[1])
    assert rc == 0, err
    assert json.loads((out / "room" / "lift.json").read_text())["targets_computed"] == 6  # rebuilt whole
    assert all(e.stat().st_size > 100 for e in entries)


@pytest.mark.parametrize("damage", ["config.json", "model.safetensors"])
def test_damaged_model_folder_is_named(damage, lifted, tiny_dino, tmp_path, capsys):
    weights = copy_of(tiny_dino, tmp_path / "weights")
    _truncate(weights / damage)
    rc, _, err = run_cli(capsys, "finetune", "--scenes", lifted[0] / "room", "--out", tmp_path / "ft",
                         "--model-path", weights, *FINETUNE_OPTS)
    assert_clean_error(rc, err, weights)
    assert not (tmp_path / "ft" / "fit3d.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "a JSON list", "no backbone"])
def test_damaged_finetune_manifest_fed_to_compare(damage, finetuned, scene_dir, tmp_path, capsys):
    out = copy_of(finetuned[0], tmp_path / "ft")
    f = out / "fit3d.json"
    if damage in DAMAGES:
        DAMAGES[damage](f)
    elif damage == "a JSON list":
        f.write_text("[1, 2]")
    else:
        f.write_text('{"steps": 2}')
    rc, _, err = run_cli(capsys, "compare", scene_dir / "frame-000000.color.jpg", "--finetuned", out, "--out",
                         tmp_path / "cmp")
    assert_clean_error(rc, err, f)


def test_truncated_image_fed_to_compare(finetuned, scene_dir, tmp_path, capsys):
    img = tmp_path / "cut.jpg"
    img.write_bytes((scene_dir / "frame-000000.color.jpg").read_bytes()[:300])
    rc, _, err = run_cli(capsys, "compare", img, "--finetuned", finetuned[0], "--out", tmp_path / "cmp")
    assert_clean_error(rc, err, img)
