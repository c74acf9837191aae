"""An exponential moving average of the trained weights over a run (Polyak averaging; ``--finetune.weight-average``).

Stage 2 is one epoch at a constant learning rate, so the weights after the last step carry the noise of the last
views drawn: two seeds differ in which scenes came last. An average over the last part of the run keeps what
every step agrees on (the averaged weights of SWA, Izmailov et al. 2018; the EMA models of timm and of
Splat-and-Distill's teacher). It is one ``lerp`` per trained tensor a step, kept beside the optimiser's state.

    avg = WeightAverage.start(named_trainable, fraction=0.2, steps=495)   # time constant 0.2 x 495 steps
    avg.update()    # after every optimiser step
    avg.copy_to()   # the saved model's weights

The decay of the t-th update (t = 0, 1, ...) is min(m, t / (t + 1)) with m = 1 - 1 / (fraction x steps): the plain
mean of the weights after each step until the time constant is reached, the EMA after it, so the average never
holds the initial weights (TensorFlow's ``num_updates`` warm-up, (1 + t) / (10 + t), would keep the horizon near
t / 9 for a whole short run instead of the asked one).
Written here rather than taken from ``torch.optim.swa_utils.AveragedModel``: that one deep-copies the whole module
(the frozen half too, and our Backbone carries hooks); this keeps only the trained tensors, in the checkpoint's
flat ``{name: tensor}`` layout.
"""

from __future__ import annotations

import torch


class WeightAverage:
    """The running average ``tensors`` {name: float32 copy} of the named trained parameters ``params`` (the live
    tensors it reads after each step and writes at the end)."""

    def __init__(self, params: dict[str, torch.Tensor], momentum: float):
        self.params, self.momentum, self.updates = params, float(momentum), 0
        self.tensors = {k: v.detach().float().clone() for k, v in params.items()}

    @classmethod
    def start(cls, params: dict[str, torch.Tensor], fraction: float, steps: int) -> "WeightAverage":
        """Start from the current weights; time constant ``fraction`` x ``steps`` optimiser steps (at least 1)."""
        return cls(params, 1.0 - 1.0 / max(1.0, float(fraction) * int(steps)))

    def decay(self) -> float:
        """This update's decay: min(momentum, t / (t + 1)), t = updates so far (a plain mean until the horizon)."""
        return min(self.momentum, self.updates / (self.updates + 1.0))

    @torch.no_grad()
    def update(self) -> None:
        """avg = d * avg + (1 - d) * weights, d = :meth:`decay`."""
        d = self.decay()
        for k, v in self.params.items():
            self.tensors[k].lerp_(v.detach().float(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self) -> None:
        """Write the average into the parameters (in place, in their dtype)."""
        for k, v in self.params.items():
            v.copy_(self.tensors[k].to(v.dtype))

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, json-able meta) for a checkpoint."""
        return dict(self.tensors), {"momentum": self.momentum, "updates": self.updates}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Continue from :meth:`state` of an interrupted run (``KeyError`` for a tensor it lacks)."""
        self.tensors = {k: tensors[k].float() for k in self.params}
        self.momentum, self.updates = float(meta["momentum"]), int(meta["updates"])


def trained_parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: parameter}`` of every parameter that requires a gradient, in ``named_parameters`` order."""
    return {k: p for k, p in module.named_parameters() if p.requires_grad}
