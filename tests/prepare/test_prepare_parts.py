"""The pieces of ``fit3d prepare`` that need no structure from motion: pairs, frame sampling, photo copies,
camera groups, pose agreement, options."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from prepare_testkit import noise_image
from scipy.spatial.transform import Rotation

from fit3d.errors import Fit3DError, SceneError
from fit3d.prepare import PrepareConfig
from fit3d.prepare import photos, video
from fit3d.prepare.evaluate import mean_pose_baseline, pose_errors
from fit3d.prepare.pairs import components, exhaustive_pairs, sequential_pairs
from fit3d.prepare.video import write_video


def test_pairs_sequential_exhaustive_and_components():
    seq = sequential_pairs(40, overlap=3)
    assert {(0, 1), (0, 2), (0, 3), (0, 4), (10, 14)} <= set(seq)  # neighbours and the 2^k jumps (1, 2, 4)
    assert (0, 5) not in seq and all(i < j < 40 for i, j in seq)
    assert len(exhaustive_pairs(12)) == 66
    assert components(6, [(0, 1), (1, 2), (4, 5)]) == [[0, 1, 2], [4, 5], [3]]


def test_windows_cover_the_video_in_order():
    wins = video.windows(1000, 30)
    assert len(wins) == 30 and all(1 <= len(w) <= video.CANDIDATES for w in wins)
    flat = [i for w in wins for i in w]
    assert flat == sorted(set(flat)) and flat[0] == 0 and flat[-1] >= 990
    assert video.windows(5, 30) == [[0], [1], [2], [3], [4]]  # fewer frames than windows: every frame


def test_sampling_keeps_the_sharpest_frame_of_each_window(tmp_path):
    sharp = noise_image(0, (160, 120))
    frames = []
    for i in range(40):  # windows of 4 frames; frame 4k + 2 is the sharp one, the others motion-blurred
        blur = np.ones((1, 9), np.float32) / 9
        frames.append(sharp if i % 4 == 2 else cv2.filter2D(sharp, -1, blur))
    path = write_video(tmp_path / "clip.avi", frames, fps=20.0)
    info = video.probe(path)
    assert info.frames == 40 and info.size == (160, 120) and info.fps == pytest.approx(20.0)
    out = tmp_path / "frames"
    out.mkdir()
    kept = video.sample_frames(path, info, max_frames=10, max_size=80, out_dir=out)
    assert [f.index for f in kept] == [4 * k + 2 for k in range(10)]
    assert kept[3].name == "frame-000014.jpg" and kept[3].time == pytest.approx(14 / 20.0)
    assert cv2.imread(str(out / kept[0].name)).shape == (60, 80, 3)  # long side capped at max_size


def test_unreadable_video_fails_at_once(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(SceneError, match="cannot read the video"):
        video.probe(bad)


def _jpeg(path, size, exif: dict | None = None, seed: int = 0):
    im = Image.fromarray(noise_image(seed, size)[:, :, ::-1])
    ex = Image.Exif()
    for k, v in (exif or {}).items():
        ex[k] = v
    im.save(path, exif=ex)
    return path


def test_photo_copy_is_upright_and_downscaled(tmp_path):
    src = _jpeg(tmp_path / "p.jpg", (80, 40), {0x0112: 6, 0x010F: "Acme"})  # stored landscape, shown portrait
    info = photos.probe(src)
    assert info.size == (40, 80) and info.orientation == 6 and info.camera[0] == "Acme"
    size = photos.write_copy(info, tmp_path / "out" / "p.jpg", max_size=40)
    assert size == (20, 40)
    with Image.open(tmp_path / "out" / "p.jpg") as im:
        assert im.size == (20, 40) and im.getexif().get(0x0112, 1) == 1 and im.getexif().get(0x010F) == "Acme"
    plain = _jpeg(tmp_path / "q.jpg", (64, 48))
    photos.write_copy(photos.probe(plain), tmp_path / "out" / "q.jpg", max_size=1600)
    assert (tmp_path / "out" / "q.jpg").read_bytes() == plain.read_bytes()  # nothing to change: copied as is


def test_camera_groups_from_size_and_exif(tmp_path):
    a = [photos.probe(_jpeg(tmp_path / f"a{i}.jpg", (64, 48), {0x010F: "Acme", 0x0110: "One"})) for i in range(3)]
    b = photos.probe(_jpeg(tmp_path / "b.jpg", (64, 48), {0x010F: "Other", 0x0110: "Two"}))
    photos.check_one_camera(a, tmp_path, "--camera auto")  # one camera: fine
    assert len(photos.camera_groups(a + [b])) == 2
    with pytest.raises(SceneError, match="mixed cameras.*3 x .*Acme One.*1 x .*Other Two.*--camera per-image"):
        photos.check_one_camera(a + [b], tmp_path, "--camera auto")


def _random_poses(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        m = np.eye(4)
        m[:3, :3] = Rotation.random(random_state=seed + i).as_matrix()
        m[:3, 3] = rng.normal(size=3)
        out[f"v{i}"] = m
    return out


def test_pose_errors_are_invariant_to_a_similarity_and_see_an_offset():
    ref = _random_poses(12, 0)
    S = np.eye(4)
    S[:3, :3] = Rotation.from_euler("xyz", [20, -50, 110], degrees=True).as_matrix()
    S[:3, 3] = [3, -1, 2]
    est = {}
    for n, m in ref.items():  # the same poses in another frame, at 0.3x scale
        e = S @ m
        e[:3, 3] = 0.3 * (S[:3, :3] @ m[:3, 3]) + S[:3, 3]
        est[n] = e
    err = pose_errors(est, ref)
    assert err["views"] == 12 and err["median_rotation_deg"] < 1e-4 and err["median_centre_error_pct"] < 1e-4
    off = Rotation.from_euler("x", 3, degrees=True).as_matrix()
    for m in est.values():  # another sensor of the rig: a fixed 3-degree camera-side rotation
        m[:3, :3] = m[:3, :3] @ off
    err = pose_errors(est, ref)
    assert err["median_rotation_deg"] == pytest.approx(3.0, abs=1e-3)
    assert err["camera_offset_deg"] == pytest.approx(3.0, abs=1e-3) and err["median_rotation_deg_after_offset"] < 1e-3
    base = mean_pose_baseline(ref)
    assert base["median_rotation_deg"] > 30 and base["median_centre_error_pct"] > 30
    with pytest.raises(SceneError, match="at least 3 common views"):
        pose_errors({"v0": ref["v0"]}, ref)


@pytest.mark.parametrize("field,value,match", [("max_frames", 0, "--max-frames"), ("min_registered", 1.5, "--min-registered"),
                                               ("matching", "vocab", "--matching"), ("threads", 0, "--threads"),
                                               ("max_frames", 2, "--min-images")])
def test_options_are_checked(field, value, match):
    with pytest.raises(Fit3DError, match=match):
        PrepareConfig(**{field: value}).validate()
