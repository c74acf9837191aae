"""Damaged scene files: ``fit3d lift`` exits 1 with one line naming the file, before the backbone loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from reliability_kit import LIFT_OPTS, assert_clean_error, run_cli


def _truncate(p, frac=0.5):
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * frac)])


# (case, damage(scene folder) -> file the message must name, words the message must hold)
CASES = {
    "truncated JPEG (decoded partially by OpenCV)": (
        lambda d: (_truncate(d / "frame-000002.color.jpg"), d / "frame-000002.color.jpg")[1], "truncated"),
    "truncated depth PNG": (lambda d: (_truncate(d / "frame-000003.depth.png"), d / "frame-000003.depth.png")[1],
                            "truncated"),
    "colour file that is not an image": (
        lambda d: ((d / "frame-000001.color.jpg").write_bytes(b"not an image"), d / "frame-000001.color.jpg")[1],
        "unreadable"),
    "missing pose": (lambda d: ((d / "frame-000004.pose.txt").unlink(), d / "frame-000004.pose.txt")[1], "missing"),
    "pose text garbage": (lambda d: ((d / "frame-000004.pose.txt").write_text("1 2 x\n"),
                                     d / "frame-000004.pose.txt")[1], "unreadable"),
    "non-rigid pose": (lambda d: (np.savetxt(d / "frame-000001.pose.txt", np.diag([2.0, 1, 1, 1])),
                                  d / "frame-000001.pose.txt")[1], "rigid"),
    "empty intrinsics": (lambda d: ((d / "camera-intrinsics.txt").write_text(""), d / "camera-intrinsics.txt")[1],
                         "empty"),
    "NaN focal length": (lambda d: (np.savetxt(d / "camera-intrinsics.txt", [[np.nan, 0, 20], [0, 34, 15], [0, 0, 1]]),
                                    d / "camera-intrinsics.txt")[1], "finite"),
    "principal point outside the image": (
        lambda d: (np.savetxt(d / "camera-intrinsics.txt", [[36, 0, 320], [0, 34, 240], [0, 0, 1]]),
                   d / "frame-000000.color.jpg")[1], "principal point"),
    "intrinsics with a bad last row": (
        lambda d: (np.savetxt(d / "camera-intrinsics.txt", [[36, 0, 20], [0, 34, 15], [0, 1, 1]]),
                   d / "camera-intrinsics.txt")[1], "[0, 0, 1]"),
    "no frames (unknown layout)": (
        lambda d: ([p.unlink() for p in d.glob("*.color.jpg")], d)[1], "unknown layout"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_scene_file_is_named(case, scene_dir, tiny_dino, tmp_path, capsys, monkeypatch):
    import fit3d.lift.stage as stage

    damage, word = CASES[case]
    d = shutil.copytree(scene_dir, tmp_path / "room")
    named = damage(d)
    loads = []
    monkeypatch.setattr(stage, "load_backbone", lambda *a, **k: loads.append(1))  # must not be reached
    rc, _, err = run_cli(capsys, "lift", d, "--out", tmp_path / "out", *LIFT_OPTS, "--model-path", tiny_dino)
    assert_clean_error(rc, err, named, word)
    assert not loads and not (tmp_path / "out" / "room" / "lift.json").exists()


def test_missing_scene_folder(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "lift", tmp_path / "nope", "--out", tmp_path / "o", *LIFT_OPTS)
    assert_clean_error(rc, err, tmp_path / "nope", "does not exist")


def test_nerfstudio_paths_that_leave_the_scene_are_warned(scene_dir, tmp_path):
    from fit3d.data import read_scene

    d = tmp_path / "ns"
    d.mkdir()
    outside = tmp_path / "elsewhere"
    shutil.copytree(scene_dir, outside)
    frames = [{"file_path": f"../elsewhere/frame-{i:06d}.color.jpg",
               "transform_matrix": np.loadtxt(outside / f"frame-{i:06d}.pose.txt").tolist()} for i in range(3)]
    (d / "transforms.json").write_text(json.dumps({"fl_x": 36, "fl_y": 34, "cx": 20, "cy": 15, "frames": frames}))
    with pytest.warns(UserWarning, match=r"point outside .*frames\[0\]\.file_path"):
        scene = read_scene(d)
    assert len(scene) == 3


def test_corrupt_transforms_json_is_named(tmp_path, capsys):
    d = tmp_path / "ns"
    d.mkdir()
    (d / "transforms.json").write_text('{"frames": [')
    rc, _, err = run_cli(capsys, "lift", d, "--out", tmp_path / "o", *LIFT_OPTS)
    assert_clean_error(rc, err, d / "transforms.json", "not valid JSON")
