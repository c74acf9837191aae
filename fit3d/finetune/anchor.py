"""The anchor's reference tokens (the frozen original's) for the fine-tuning step, at the least cost.

The anchor term pulls the fine-tuned tokens toward the frozen original's on the same images, so each step
needs one more forward of the original. When the recipe freezes the patch embedding and the first ``k``
blocks (``freeze_blocks``), the fine-tuned model's hidden state after block ``k`` *is* the original's:
same weights, same input. :class:`AnchorReference` captures that state during the fine-tuned model's own
forward (a hook on block ``k``) and runs only the original's remaining blocks and final norm on it (no
grad): for the ``default`` recipe (last 6 of 12 blocks trained) half the original's forward.

The tail runs in the original's ``precision`` (``fit3d finetune --precision``: bf16 autocast where the device has
bf16 hardware; no gradient flows through it). The first call checks the shortcut in float32 against the original's
full forward on that batch and falls back to
the full forward for the rest of the run if they differ (e.g. a family whose blocks take more than the
hidden state, or dropout in the frozen blocks); ``shortcut`` says which path is in use.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from fit3d.device import resolve_precision
from fit3d.models.backbone import using_precision
from fit3d.models.cls_branch import block_output, run_tail

log = logging.getLogger(__name__)


def frozen_prefix(model: nn.Module, blocks: nn.ModuleList) -> int:
    """Number of leading blocks whose parameters are all frozen (0 if the patch embedding is trained)."""
    for name, m in model.named_modules():
        if name.split(".")[-1] == "embeddings" and any(p.requires_grad for p in m.parameters()):
            return 0
    k = 0
    for b in blocks:
        if any(p.requires_grad for p in b.parameters()):
            break
        k += 1
    return k


class AnchorReference:
    """``reference(images)`` -> the original's patch tokens [B, D, h, w] (``reference.features(images)``: and its
    [CLS] [B, D]; no grad), reusing the fine-tuned model's frozen prefix when it has one; call it right after
    the fine-tuned forward on ``images``."""

    def __init__(self, original, trained, blocks_of, check_atol: float = 1e-4):
        """original / trained: ``Backbone``s; ``blocks_of(model) -> nn.ModuleList`` of transformer blocks."""
        self.original, self.trained, self.check_atol = original, trained, check_atol
        self.shortcut = False
        self._hidden: Tensor | None = None
        self._tail_bf16: nn.ModuleList | None = None
        self._checked = False
        self._handle = None
        try:
            tb, ob = blocks_of(trained.model), blocks_of(original.model)
        except Exception:  # noqa: BLE001 - no block list: the plain path
            return
        self.k = frozen_prefix(trained.model, tb)
        self.norm = getattr(original.model, getattr(original._family, "norm_attr", ""), None)
        if 0 < self.k < len(tb) and len(ob) == len(tb) and self.norm is not None:
            self.tail = ob[self.k:]
            self._handle = tb[self.k - 1].register_forward_hook(self._capture)
            self.shortcut = True

    def _capture(self, module, args, out) -> None:
        self._hidden = block_output(out).detach()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _bf16_tail(self) -> nn.ModuleList:
        """The tail with its Linear layers' weights and biases stored in bf16 (a copy, made once). Under bf16
        autocast a Linear rounds its float32 weight to bf16 on every call (a frozen weight's cast is not cached):
        the same numbers, but on the CPU those casts took most of what bf16 saved."""
        if self._tail_bf16 is None:
            self._tail_bf16 = copy.deepcopy(self.tail)
            for m in self._tail_bf16.modules():
                if isinstance(m, nn.Linear):
                    m.to(torch.bfloat16)
        return self._tail_bf16

    def _in_bf16(self) -> bool:
        """Whether the original's ``precision`` resolves to bf16 on the captured hidden state's device."""
        return resolve_precision(self.original.precision, self._hidden.device) == "bf16"

    @torch.no_grad()
    def _tail(self, images: Tensor) -> tuple[Tensor, Tensor]:
        s = run_tail(self._bf16_tail() if self._in_bf16() else self.tail, self.norm, self._hidden)
        o = self.original
        B, _, H, W = images.shape
        gh, gw = o.grid_size(H, W)
        return s[:, o.num_prefix_tokens:].transpose(1, 2).reshape(B, s.shape[-1], gh, gw).float(), s[:, 0].float()

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The original's (patch [B, D, h, w], cls [B, D]) on ``images`` (no grad), in the original's ``precision``:
        what ``forward_loss`` reads of a reference model's ``features``."""
        if not self.shortcut or self._hidden is None or self._hidden.shape[0] != images.shape[0]:
            return tuple(self.original.features(images))
        was = self.original.training
        self.original.eval()
        try:
            if not self._checked:  # the shortcut against the full forward, both in float32 (the check is of the
                self._checked = True  # path, not of a precision's rounding)
                with using_precision(self.original, "fp32"):
                    ref, full = self._tail(images), tuple(self.original.features(images))
                if any(f.shape != r.shape or not torch.allclose(f, r, atol=self.check_atol, rtol=0)
                       for f, r in zip(full, ref)):
                    log.info("anchor reference: the frozen-prefix shortcut differs from the original's forward (max "
                             "%.2e); full forward from now on", max(float((f - r).abs().max()) if f.shape == r.shape
                                                                    else float("nan") for f, r in zip(full, ref)))
                    self._disable()
                    return full
                if not self._in_bf16():
                    return ref  # the run's own precision: no second tail
            with self.original._autocast():
                return self._tail(images)
        except Exception as e:  # noqa: BLE001 - a family whose blocks need more than the hidden state
            log.info("anchor reference: the frozen-prefix shortcut failed (%s); full forward of the original", e)
            self._disable()
            return tuple(self.original.features(images))
        finally:
            self.original.train(was)
            self._hidden = None

    def __call__(self, images: Tensor) -> Tensor:
        """The original's patch tokens [B, D, h, w] (``features``' first)."""
        return self.features(images)[0]

    def _disable(self) -> None:
        self.shortcut = False
        self.close()
