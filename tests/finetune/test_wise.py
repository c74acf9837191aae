"""fit3d.finetune.wise: weight-space interpolation (WiSE-FT) of the original and fine-tuned backbones."""

import json

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from fit3d.errors import Fit3DError
from fit3d.finetune import FinetuneConfig, finetune
from fit3d.finetune.assembled import interpolate_folder
from fit3d.finetune.wise import interpolate_weights

BACKBONE = "dinov2_small"


class _Net(nn.Module):
    def __init__(self, w: float):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        nn.init.constant_(self.lin.weight, w)
        self.register_buffer("count", torch.tensor([int(w)]))


def test_interpolate_weights_is_the_straight_line_between_the_models():
    a, b = _Net(0.0), _Net(4.0)
    b.lin.bias.data = a.lin.bias.data.clone()  # an equal tensor (a frozen one) stays as it is
    n = interpolate_weights(a, b, 0.25)
    assert n == 1
    assert_close(b.lin.weight, torch.full((2, 3), 1.0))
    assert_close(b.lin.bias, a.lin.bias)
    assert int(b.count) == 4  # integer buffers: the fine-tuned model's
    c = _Net(4.0)
    assert interpolate_weights(a, c, 1.0) == 0 and torch.equal(c.lin.weight, torch.full((2, 3), 4.0))


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5])
def test_interpolate_refuses_alpha_outside_0_1(alpha):
    with pytest.raises(Fit3DError, match="alpha"):
        interpolate_weights(_Net(0.0), _Net(1.0), alpha)
    with pytest.raises(Fit3DError, match="interpolate"):
        FinetuneConfig(interpolate=alpha).validate()


def test_interpolate_refuses_models_of_different_tensors():
    with pytest.raises(Fit3DError, match="differ"):
        interpolate_weights(_Net(0.0), nn.Linear(3, 2), 0.5)


def _quick(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**dict(lr=1e-3, workers=0, progress=False, evaluate=False, checkpoint_every=0,
                                    epochs=2), **kw})


def _state(model_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir)).state_dict()


def test_trainer_and_folder_interpolation_agree_and_keep_the_source(tmp_path, lifted_dir, tiny_model_dir):
    """A run with interpolate=0.5 saves the midpoint of the original and the same run at 1; interpolating the
    finished folder afterwards gives those weights too, records alpha, and loads as a fine-tuned folder."""
    import fit3d
    from fit3d.models.identity import folder_fingerprint

    full = tmp_path / "full"
    finetune([lifted_dir], BACKBONE, full, _quick(), model_path=str(tiny_model_dir))
    half = tmp_path / "half"
    m = finetune([lifted_dir], BACKBONE, half, _quick(interpolate=0.5, evaluate=True), model_path=str(tiny_model_dir))
    assert m["config"]["interpolate"] == 0.5 and m["settings"]["interpolate"] == 0.5
    # the held-out check measured the saved (interpolated) weights: between the original and the full run
    assert m["metrics"]["heldout"]["finetuned"]["l1"] < m["metrics"]["heldout"]["original"]["l1"]

    orig, tuned, mid = _state(tiny_model_dir), _state(full / "model"), _state(half / "model")
    moved = [k for k in orig if orig[k].is_floating_point() and not torch.equal(orig[k], tuned[k])]
    assert moved
    for k in moved:
        assert_close(mid[k], (orig[k] + tuned[k]) / 2, rtol=1e-5, atol=1e-6)

    before = folder_fingerprint(full / "model")
    post = tmp_path / "post"
    pm = interpolate_folder(full, post, 0.5)
    assert folder_fingerprint(full / "model") == before  # the source is never changed
    rec = json.loads((post / "fit3d.json").read_text())
    assert rec["config"]["interpolate"] == 0.5 and rec["interpolated_from"] == str(full.resolve())
    assert rec["finetuned_fingerprint"] == folder_fingerprint(post / "model") == pm["finetuned_fingerprint"]
    post_state = _state(post / "model")
    for k in moved:
        assert_close(post_state[k], mid[k], rtol=1e-5, atol=1e-6)
    fit3d.load(post)  # a fine-tuned folder like any other (its record checked against its weights)


def test_interpolate_folder_refuses_to_write_over_its_source(tmp_path, lifted_dir, tiny_model_dir):
    from fit3d.errors import OutputError

    out = tmp_path / "ft"
    finetune([lifted_dir], BACKBONE, out, _quick(epochs=1), model_path=str(tiny_model_dir))
    with pytest.raises(OutputError):
        interpolate_folder(out, out, 0.5)
