"""``fit3d prepare`` on bad input: clean errors before the costly phases, partial reconstructions reported."""

from __future__ import annotations

import cv2
import pytest
from prepare_testkit import noise_image, scene_frames

from fit3d.cli import main
from fit3d.errors import SceneError
from fit3d.prepare import PrepareConfig, prepare_scene
from fit3d.prepare.stage import _check_registered
from fit3d.run import SettingsMismatch

FAST = dict(sift_max_size=320, max_features=1024, threads=2, progress=False)


def _folder(path, images: dict):
    path.mkdir(parents=True, exist_ok=True)
    for name, im in images.items():
        cv2.imwrite(str(path / name), im)
    return path


def test_unreadable_video_is_a_clean_cli_error(tmp_path, capsys):
    bad = tmp_path / "holiday.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    assert main(["prepare", str(bad), "--out", str(tmp_path / "scene"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "holiday.mp4: cannot read the video" in err and "Traceback" not in err


def test_too_few_images(tmp_path):
    photos = _folder(tmp_path / "two", {f"{i}.jpg": noise_image(i) for i in range(2)})
    with pytest.raises(SceneError, match=r"too few images: 2 photo\(s\)"):
        prepare_scene(photos, tmp_path / "a", PrepareConfig(**FAST))
    with pytest.raises(SceneError, match="too few images: the input is one image"):
        prepare_scene(photos / "0.jpg", tmp_path / "b", PrepareConfig(**FAST))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unreadable_photo_is_named(tmp_path):
    photos = _folder(tmp_path / "in", {f"{i}.jpg": noise_image(i) for i in range(3)})
    (photos / "3.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(SceneError, match=r"3\.jpg: not a readable image"):
        prepare_scene(photos, tmp_path / "scene", PrepareConfig(**FAST))


def test_mixed_cameras_stop_before_any_matching(tmp_path):
    ims = {f"{i}.jpg": noise_image(i) for i in range(3)}
    ims["portrait.jpg"] = noise_image(9, (240, 320))
    photos = _folder(tmp_path / "in", ims)
    with pytest.raises(SceneError, match=r"mixed cameras.*3 x \(320x240.*1 x \(240x320.*--camera per-image"):
        prepare_scene(photos, tmp_path / "scene", PrepareConfig(**FAST))
    assert not (tmp_path / "scene" / "work" / "database.db").exists()


def test_images_that_do_not_overlap_stop_before_mapping(tmp_path):
    photos = _folder(tmp_path / "in", {f"{i}.jpg": noise_image(i) for i in range(4)})
    with pytest.raises(SceneError, match="do not overlap: at most 0 of 4 images could register"):
        prepare_scene(photos, tmp_path / "scene", PrepareConfig(**FAST))
    assert not (tmp_path / "scene" / "work" / "sparse").exists()  # the mapper never ran


def test_too_few_registered_names_the_dropped_images():
    names = [f"{i}.jpg" for i in range(10)]
    mapping = {"registered": names[:3], "dropped": names[3:]}
    with pytest.raises(SceneError, match=r"only 3 of 10 images registered.*dropped: 3\.jpg, 4\.jpg"):
        _check_registered("in", names, mapping, PrepareConfig())


def test_output_may_not_hold_the_input(tmp_path):
    photos = _folder(tmp_path / "in", {f"{i}.jpg": noise_image(i) for i in range(3)})
    for out in (photos, tmp_path):
        with pytest.raises(SceneError, match="would hold the input"):
            prepare_scene(photos, out, PrepareConfig(**FAST))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(SceneError, match="not a fit3d prepare output"):
        prepare_scene(photos, foreign, PrepareConfig(**FAST))
    assert (foreign / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_partial_reconstruction_is_reported_and_resumes(icl_path, tmp_path, capsys):
    """Ten overlapping living-room photos and two unrelated ones: the scene keeps the ten and names the two."""
    frames = scene_frames(icl_path, range(0, 40, 4))
    ims = {f"room-{i:02d}.jpg": f for i, f in enumerate(frames)}
    ims.update({"zz-other-1.jpg": noise_image(1), "zz-other-2.jpg": noise_image(2)})
    photos = _folder(tmp_path / "in", ims)
    out = tmp_path / "scene"
    rec = prepare_scene(photos, out, PrepareConfig(**FAST))
    assert rec["matching"] == "exhaustive" and rec["camera"] == "single" and rec["images"] == 12
    assert rec["dropped"] == ["zz-other-1.jpg", "zz-other-2.jpg"] and rec["registered"] == 10
    assert "partial reconstruction, 2 of 12 images did not register" in capsys.readouterr().err

    from fit3d.data.readers import read_scene

    scene = read_scene(out, resolution=(80, 60))
    assert len(scene.views) == 10 and scene.points is not None and len(scene.points) == rec["points"]

    assert prepare_scene(photos, out, PrepareConfig(**FAST))["reused"]  # same settings: the finished scene
    with pytest.raises(SettingsMismatch, match="max_features: 1024 -> 512"):
        prepare_scene(photos, out, PrepareConfig(**{**FAST, "max_features": 512}))

    (out / "prepare.json").unlink()  # as if killed while undistorting: the rerun finishes from the mapping
    again = prepare_scene(photos, out, PrepareConfig(**FAST))
    assert again["dropped"] == rec["dropped"] and again["points"] == rec["points"]
    assert again["timings"]["mapping"]["cpu_s"] < 1.0

    # the command line (output guard: marker, lock): --overwrite swaps a new scene in, a rerun reuses it
    cli = ["prepare", str(photos), "--out", str(out), "--sift-max-size", "320", "--threads", "2", "--no-progress"]
    capsys.readouterr()
    assert main([*cli, "--max-features", "512", "--overwrite"]) == 0
    assert "10/12 images registered" in capsys.readouterr().out
    assert not (tmp_path / ".scene.new").exists() and read_scene(out, resolution=(80, 60)).points is not None
    assert main([*cli, "--max-features", "512"]) == 0
    assert "already prepared" in capsys.readouterr().out
