"""The one token cache (fit3d.models.tokens) across commands: an image Stage 1 ran through the backbone at an
input size is not run again by a probe at that size (``--cache-dir`` shared), with the probe's numbers the
same as without the cache; a damaged entry is recomputed with a warning."""

from __future__ import annotations

import json

import pytest
import torch

from reliability_kit import LIFT_OPTS, run_cli

PROBE = ["--task", "depth", "--train-frames", "0-3", "--test-frames", "4-5", "--iterations", "3", "--batch-size", "2",
         "--figure", "0", "--device", "cpu", "--features", "original"]


@pytest.fixture
def forwards(monkeypatch):
    """Images through the backbone's forward, counted."""
    from fit3d.models.backbone import Backbone

    seen, tokens = [], Backbone.tokens

    def counting(self, images, layers=None):
        seen.append(int(images.shape[0]))
        return tokens(self, images, layers)

    monkeypatch.setattr(Backbone, "tokens", counting)
    return seen


def _tensors(cache) -> dict:
    from safetensors.torch import load_file

    return {f"{e.name}:{k}": t.clone() for e in sorted(cache.glob("*.safetensors")) for k, t in load_file(e).items()}


def _lift_opts(cache):
    opts = list(LIFT_OPTS)
    opts[opts.index("--feature-size") + 1] = "32"  # 40x30 frames -> a 32x24 backbone input (4x3 tokens of 8 px)
    return [*opts, "--cache-dir", cache]


def test_an_image_lifted_and_probed_at_one_size_runs_once(scene_dir, tiny_dino, tmp_path, capsys, forwards):
    cache = tmp_path / "tokens"
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", tmp_path / "lifted", "--model-path", tiny_dino,
                         *_lift_opts(cache))
    assert rc == 0, err
    assert sum(forwards) == 6  # the scene's six views, once
    lifted = json.loads((tmp_path / "lifted" / "room" / "lift.json").read_text())
    assert lifted["targets_computed"] == 6
    forwards.clear()
    probe = ["probe", "--data", scene_dir, "--model-path", tiny_dino, *PROBE]
    rc, _, err = run_cli(capsys, *probe, "--resolution", "32", "24", "--out", tmp_path / "p", "--cache-dir", cache)
    assert rc == 0, err
    assert sum(forwards) == 0  # every probe image is one the lift ran at this input size
    rc, _, err = run_cli(capsys, *probe, "--resolution", "32", "24", "--out", tmp_path / "q", "--cache-dir", "none")
    assert rc == 0, err
    assert sum(forwards) == 6  # without the cache: computed
    metrics = [json.loads((tmp_path / d / "probe.json").read_text())["metrics"] for d in ("p", "q")]
    assert metrics[0] == metrics[1]
    forwards.clear()
    rc, _, err = run_cli(capsys, *probe, "--resolution", "16", "16", "--out", tmp_path / "r", "--cache-dir", cache)
    assert rc == 0, err
    assert sum(forwards) == 6  # another input size: other tokens


def test_a_damaged_or_foreign_entry_is_recomputed(scene_dir, tiny_dino, tmp_path, capsys, forwards):
    cache = tmp_path / "tokens"
    args = ["lift", scene_dir, "--model-path", tiny_dino, *_lift_opts(cache)]
    assert run_cli(capsys, *args, "--out", tmp_path / "a")[0] == 0
    entries = sorted(cache.glob("*.safetensors"))
    assert len(entries) == 6
    first = _tensors(cache)
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated
    entries[1].write_bytes(entries[2].read_bytes())  # another image's entry under this name
    forwards.clear()
    with pytest.warns(UserWarning, match="unreadable token cache entry"):
        rc, _, err = run_cli(capsys, *args, "--out", tmp_path / "b")
    assert rc == 0, err
    assert sum(forwards) == 2
    again = _tensors(cache)  # rewritten whole, the same numbers (up to float rounding: 2 images a batch, not 4 + 2)
    assert again.keys() == first.keys()
    for k in first:
        torch.testing.assert_close(again[k], first[k])
    a, b = (json.loads((tmp_path / d / "room" / "lift.json").read_text())["heldout"] for d in ("a", "b"))
    assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5) for k in a)
