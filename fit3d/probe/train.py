"""Training a probe head on cached features: AdamW, warmup + poly / cosine schedules, a fixed-seed loop.

Hand-written (a few lines) rather than mmcv/mmseg's runners, which the official code vendored.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from fit3d.device import adamw
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


def label_phase(stride: int, it: int) -> tuple[int, int]:
    """(row, column) offset of iteration ``it``'s label pixels in a strided loss (seg and depth heads): the
    stride x stride phases in turn, so every label pixel takes its turn."""
    k = it % (stride * stride)
    return k // stride, k % stride


def batch_order(n_train: int, batch_size: int, iterations: int, seed: int) -> Iterator[torch.Tensor]:
    """The training indices of each iteration: a seeded random permutation per epoch, ``batch_size``
    (at most ``n_train``) at a time; a partial last batch starts a new permutation. Shared by the separate
    and the batched trainers so one seed draws the same batches in both."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_train, generator=gen)
    pos = 0
    for _ in range(iterations):
        if pos + batch_size > n_train:
            order, pos = torch.randperm(n_train, generator=gen), 0
        idx = order[pos:pos + min(batch_size, n_train)]
        pos += len(idx)
        yield idx


def train_head(head: torch.nn.Module, n_train: int, step_loss: Callable[[torch.Tensor], torch.Tensor], *,
               iterations: int, batch_size: int, lr: float, weight_decay: float, schedule: str, warmup: int,
               seed: int, desc: str = "probe", validate: Callable[[], float] | None = None,
               val_every: int = 100) -> dict:
    """Train ``head`` for ``iterations`` steps; each step draws ``batch_size`` indices of the training set
    (a seeded random permutation per epoch) and minimises ``step_loss(indices)``.

    ``validate``: called (head in eval mode, no grad) every ``val_every`` iterations and at the end; returns
    a score to minimise. The head ends with the weights of the best score (the protocol's "best
    checkpoint", on a validation split instead of the test set).
    Returns {"losses": [float per iteration], "seconds": float} plus, with ``validate``,
    "val": [(iteration, score)], "best_iteration" and "best_val".
    """
    opt = adamw([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, iterations, warmup, schedule))
    head.train()
    losses: list[float] = []
    val: list[tuple[int, float]] = []
    best = None  # (iteration, score, state)
    t0 = time.perf_counter()
    batches = batch_order(n_train, batch_size, iterations, seed)
    for it, idx in enumerate(tqdm(batches, total=iterations, desc=desc, leave=False)):
        loss = step_loss(idx)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"{desc}: loss became {loss.item()} at iteration {it}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if validate is not None and ((it + 1) % max(1, val_every) == 0 or it + 1 == iterations):
            head.eval()
            with torch.no_grad():
                score = float(validate())
            head.train()
            val.append((it + 1, score))
            if best is None or score < best[1]:
                best = (it + 1, score, {k: v.detach().clone() for k, v in head.state_dict().items()})
    head.eval()
    out = {"losses": losses, "seconds": time.perf_counter() - t0}
    if validate is not None and best is not None:
        head.load_state_dict(best[2])
        out.update(val=val, best_iteration=best[0], best_val=best[1])
    return out
