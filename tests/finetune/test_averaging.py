"""The run's average of the trained weights (--finetune.weight-average, fit3d.finetune.averaging)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from fit3d.errors import Fit3DError
from fit3d.finetune import FinetuneConfig, finetune
from fit3d.finetune.averaging import WeightAverage, trained_parameters

BACKBONE = "dinov2_small"


def quick(**kw) -> FinetuneConfig:
    base = dict(lr=1e-3, workers=0, progress=False, evaluate=False, checkpoint_every=0, max_steps=4)
    base.update(kw)
    return FinetuneConfig(**base)


def test_decay_warms_up_to_the_momentum_of_the_time_constant():
    avg = WeightAverage.start({"w": torch.zeros(2)}, fraction=0.2, steps=500)  # time constant 100 steps
    assert avg.momentum == pytest.approx(0.99)
    seen = []
    for _ in range(200):
        seen.append(avg.decay())
        avg.update()
    assert seen[0] == 0.0 and seen[10] == pytest.approx(10 / 11)  # the plain mean of the weights so far ...
    assert seen[98] == pytest.approx(98 / 99) and seen[99] == seen[-1] == pytest.approx(0.99)  # ... then the EMA
    assert WeightAverage.start({"w": torch.zeros(1)}, 0.1, 3).momentum == 0.0  # horizon < 1 step: the last weights


def test_update_is_a_lerp_and_copy_to_writes_the_average():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    avg = WeightAverage.start({"p": p}, fraction=1.0, steps=1000)
    with torch.no_grad():
        p.fill_(3.0)
    d = avg.decay()
    avg.update()
    assert_close(avg.tensors["p"], d * torch.tensor([1.0, 2.0]) + (1 - d) * 3.0)
    avg.copy_to()
    assert_close(p.detach(), avg.tensors["p"])
    back = WeightAverage.start({"p": p}, fraction=0.5, steps=10)
    back.load_state(*avg.state())
    assert back.updates == 1 and back.momentum == avg.momentum and back.tensors["p"] is not None


def test_the_average_of_noisy_sgd_is_closer_to_the_optimum_than_its_last_step():
    """What the lever is for: on a quadratic with noisy gradients at a constant learning rate, the last iterate
    keeps the noise of the last steps, the average does not (mean over 20 seeds)."""
    last, averaged = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        w = torch.nn.Parameter(torch.full((16,), 5.0))
        opt = torch.optim.SGD([w], lr=0.1)
        avg = WeightAverage.start({"w": w}, fraction=0.2, steps=300)
        for _ in range(300):
            opt.zero_grad()
            loss = 0.5 * w.square().sum() + (w * torch.randn(16, generator=g)).sum()  # optimum 0, noisy gradient
            loss.backward()
            opt.step()
            avg.update()
        last.append(float(w.detach().norm()))
        averaged.append(float(avg.tensors["w"].norm()))
    assert sum(averaged) < 0.5 * sum(last)  # measured 0.35x


def test_trained_parameters_are_the_ones_with_gradients():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    m[0].requires_grad_(False)
    assert list(trained_parameters(m)) == ["1.weight", "1.bias"]


def test_a_run_saves_its_average_resumes_it_exactly_and_trains_the_same(tmp_path, lifted_dir, tiny_model_dir,
                                                                      killed_run):
    last = finetune([lifted_dir], BACKBONE, tmp_path / "last", quick(max_steps=5, freeze_blocks=-1),
                    model_path=str(tiny_model_dir))
    cfg = quick(max_steps=5, freeze_blocks=-1, weight_average=0.5, checkpoint_every=2)
    ref = finetune([lifted_dir], BACKBONE, tmp_path / "ref", cfg, model_path=str(tiny_model_dir))
    killed_run(tmp_path / "run", cfg)
    resumed = finetune([lifted_dir], BACKBONE, tmp_path / "run", cfg, model_path=str(tiny_model_dir))
    assert ref["config"]["weight_average"] == 0.5 and last["steps"] == ref["steps"] == resumed["steps"] == 5

    def losses(name):
        return json.loads((tmp_path / name / "losses.json").read_text())["loss"]

    def weights(name):
        return load_file(str(tmp_path / name / "model" / "model.safetensors"))

    assert losses("ref") == losses("last") == losses("run")  # the average does not change the trajectory
    w_last, w_ref, w_run = weights("last"), weights("ref"), weights("run")
    changed = [k for k in w_ref if not torch.equal(w_ref[k], w_last[k])]
    assert changed and all(".layer.1." in k or "layernorm" in k for k in changed)  # only the trained block moved
    for k in w_ref:  # the average came back from the checkpoint
        assert_close(w_run[k], w_ref[k], atol=1e-6, rtol=0)


def test_weight_average_is_checked():
    with pytest.raises(Fit3DError, match="weight-average"):
        FinetuneConfig(weight_average=1.5).validate()
    with pytest.raises(Fit3DError, match="weight-average.*adapter=none"):
        FinetuneConfig(weight_average=0.2, adapter="lora").validate()
    with pytest.raises(Fit3DError, match="weight-average.*cls_restore_steps"):
        FinetuneConfig(weight_average=0.2, cls_restore_steps=3).validate()
