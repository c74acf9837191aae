"""fit3d probe: bad options stop before any model loads; damaged caches are recomputed, damaged labels named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reliability_kit import assert_clean_error, run_cli

PROBE_OPTS = ["--task", "depth", "--train-frames", "0-3", "--test-frames", "4-5", "--resolution", "16", "16",
              "--iterations", "3", "--batch-size", "2", "--figure", "0", "--device", "cpu"]

BAD = {
    "zero iterations": (["--iterations", "0"], "--iterations", 1),
    "one-value resolution": (["--resolution", "448"], "--resolution", 1),
    "zero batch": (["--batch-size", "0"], "--batch-size", 1),
    "max depth below min depth": (["--max-depth", "0.0001"], "--max-depth", 1),
    "unknown task": (["--task", "pose"], "--task", 2),
    "device that is not there": (["--device", "cuda:7"], "--device", 1),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_probe_option_stops_before_the_model_loads(case, scene_dir, tiny_dino, tmp_path, capsys, monkeypatch):
    import fit3d.probe.sources as sources

    extra, name, status = BAD[case]
    monkeypatch.setattr(sources, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    rc, _, err = run_cli(capsys, "probe", "--data", scene_dir, "--model-path", tiny_dino, "--out", tmp_path / "p",
                         *PROBE_OPTS, *extra)
    assert_clean_error(rc, err, name, status=status)
    assert not (tmp_path / "p").exists()


def test_truncated_feature_cache_is_recomputed(scene_dir, tiny_dino, tmp_path, capsys):
    args = ["probe", "--data", scene_dir, "--model-path", tiny_dino, "--out", tmp_path / "p", *PROBE_OPTS]
    rc, _, err = run_cli(capsys, *args)
    assert rc == 0, err
    first = (tmp_path / "p" / "probe.json").read_text()
    caches = sorted((tmp_path / "p" / "cache").glob("*.safetensors"))
    assert caches
    for c in caches:
        c.write_bytes(c.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable token cache entry"):
        rc, _, err = run_cli(capsys, *args)
    assert rc == 0, err
    assert all(c.stat().st_size > 100 for c in caches)  # rewritten whole
    assert (tmp_path / "p" / "probe.json").read_text().count('"rmse"') == first.count('"rmse"')


def test_truncated_label_png_names_the_file(tmp_path):
    from fit3d.errors import SceneError
    from fit3d.probe.datasets import read_index_png

    bad = tmp_path / "frame-000004.label.png"
    Image.fromarray(np.arange(1200, dtype=np.uint8).reshape(30, 40)).save(bad)
    assert read_index_png(bad).shape == (30, 40)
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(SceneError, match="frame-000004.label.png"):
        read_index_png(bad)
