"""A full disk or another OS error while writing (issue 22): one line naming the path, no traceback, nothing
half-written left, the previous result intact. A full disk is simulated portably (no root, no special mount)
with a file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as ENOSPC would; only the soft limit is
lowered, so it can be raised back), or with an OS error injected into the write."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal

import pytest

from reliability_kit import FINETUNE_OPTS, LIFT_OPTS, assert_clean_error, copy_of, digest, run_cli


def _fit3d_limited(capsys, argv, limit: int) -> tuple[int, str]:
    """``fit3d ARGV`` in this process with every file it writes limited to ``limit`` bytes: (status, stderr)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        rc, _, err = run_cli(capsys, *argv)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    return rc, err


def _temporaries(folder):
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_lift_overwrite_on_a_full_disk_keeps_the_previous_lift(lifted, scene_dir, tmp_path, capsys):
    out = copy_of(lifted[0], tmp_path / "lifted")
    before = digest(out / "room")
    opts = [*lifted[1]]
    opts[opts.index("--feature-dim") + 1] = "8"
    rc, err = _fit3d_limited(capsys, ["lift", scene_dir, "--out", out, *opts, "--overwrite"], limit=20_000)
    assert_clean_error(rc, err, "File too large", "could not write", "previous version is intact")
    assert digest(out / "room") == before
    assert _temporaries(out.parent) == []


def test_finetune_overwrite_on_a_full_disk_keeps_the_previous_model(finetuned, tmp_path, capsys):
    out = copy_of(finetuned[0], tmp_path / "ft")
    before = digest(out)
    opts = [*finetuned[1]]
    opts[opts.index("--lr") + 1] = "0.01"
    rc, err = _fit3d_limited(capsys, ["finetune", "--out", out, *opts, "--overwrite"], limit=8_000)
    assert_clean_error(rc, err, "File too large", "could not write")
    assert digest(out) == before and json.loads((out / "fit3d.json").read_text())["settings"]["lr"] == 0.001
    assert _temporaries(out.parent) == []


@pytest.mark.parametrize("command", ["compare", "generate"])
def test_no_space_left_while_writing(command, finetuned, scene_dir, tmp_path, capsys, monkeypatch):
    """ENOSPC reported by the file system when the data is flushed / the folder renamed into place."""
    out = tmp_path / "o"
    if command == "compare":
        argv = ["compare", scene_dir / "frame-000000.color.jpg", "--finetuned", finetuned[0], "--out", out,
                "--device", "cpu"]
        name = "fsync"
    else:
        argv = ["generate", out, "--num-scenes", "1", "--num-views", "2", "--width", "16", "--height", "12"]
        name = "replace"
    real = getattr(os, name)

    def no_space(*a, **k):
        if str(a[0]).startswith(str(out)) or (isinstance(a[0], int)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(os, name, no_space)
    rc, _, err = run_cli(capsys, *argv)
    assert_clean_error(rc, err, out, "No space left on device")
    assert _temporaries(tmp_path) == []


def test_os_error_outside_the_atomic_writers_is_one_line(tmp_path, capsys, monkeypatch):
    """The CLI's last resort: any OSError a command meets is one line naming its path."""
    import fit3d.data.synthetic.cli as gen

    def broken(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "g" / "x"))

    monkeypatch.setattr(gen, "generate_scenes", broken)
    rc, _, err = run_cli(capsys, "generate", tmp_path / "g", "--num-scenes", "1")
    assert_clean_error(rc, err, tmp_path / "g" / "x", "Permission denied")


def test_folder_swap_that_fails_half_way_puts_the_previous_folder_back(tmp_path, monkeypatch):
    from fit3d.errors import OutputError
    from fit3d.io import atomic_dir

    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "w.bin").write_bytes(b"old")
    real = os.replace
    calls = []

    def second_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(a, b)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OutputError, match="model: could not write"):
        with atomic_dir(dest) as tmp:
            (tmp / "w.bin").write_bytes(b"new")
    monkeypatch.setattr(os, "replace", real)
    assert (dest / "w.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
