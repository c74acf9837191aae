"""Training a probe head on cached features: AdamW, warmup + poly / cosine schedules, a fixed-seed loop.

Hand-written (a few lines) rather than mmcv/mmseg's runners, which the official code vendored.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from tqdm import tqdm

from fit3d.errors import NonFiniteError


def lr_factor(it: int, total: int, warmup: int, schedule: str, power: float = 1.0) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based): linear warmup, then poly or cosine to 0."""
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    t = (it - warmup) / max(1, total - warmup)
    if schedule == "poly":
        return (1.0 - t) ** power
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown lr schedule {schedule!r}")


def train_head(head: torch.nn.Module, n_train: int, step_loss: Callable[[torch.Tensor], torch.Tensor], *,
               iterations: int, batch_size: int, lr: float, weight_decay: float, schedule: str, warmup: int,
               seed: int, desc: str = "probe") -> dict:
    """Train ``head`` for ``iterations`` steps; each step draws ``batch_size`` indices of the training set
    (a seeded random permutation per epoch) and minimises ``step_loss(indices)``.

    Returns {"losses": [float per iteration], "seconds": float}.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, iterations, warmup, schedule))
    head.train()
    losses: list[float] = []
    order = torch.randperm(n_train, generator=gen)
    pos = 0
    t0 = time.perf_counter()
    for it in tqdm(range(iterations), desc=desc, leave=False):
        if pos + batch_size > n_train:
            order, pos = torch.randperm(n_train, generator=gen), 0
        idx = order[pos:pos + min(batch_size, n_train)]
        pos += len(idx)
        loss = step_loss(idx)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"{desc}: loss became {loss.item()} at iteration {it}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    head.eval()
    return {"losses": losses, "seconds": time.perf_counter() - t0}
