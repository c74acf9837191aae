"""Weight-space ensembles of the original and the fine-tuned backbone (WiSE-FT, Wortsman et al., CVPR 2022).

    theta(a) = theta_original + a * (theta_finetuned - theta_original)      (a = 1: the fine-tuned model)

One model, the cost of one forward, no retraining: moving the trained weights part of the way back keeps
more of what the original knew (the features Stage 2 has no target for, such as [CLS]) while keeping part
of what Stage 2 taught. Every floating-point parameter and buffer is interpolated (tensors Stage 2 froze
are equal in both, so they stay as they are); integer buffers are taken from the fine-tuned model.

    interpolate_weights(original_module, finetuned_module, a)   # in place on the fine-tuned module

Written here rather than taken from a package: it is one ``torch.lerp`` per tensor (the WiSE-FT
repository's own ``wise_ft`` is a script, not an installable library). A finished fine-tuned folder is
interpolated by ``fit3d.finetune.assembled.interpolate_folder``.
"""

from __future__ import annotations

import torch
from torch import nn

from fit3d.errors import Fit3DError


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in (0, 1]; ``Fit3DError`` otherwise (0 would be the original itself)."""
    a = float(alpha)
    if not 0.0 < a <= 1.0:
        raise Fit3DError(f"weight interpolation alpha must be in (0, 1] (1 = the fine-tuned model), got {alpha}")
    return a


@torch.no_grad()
def interpolate_weights(original: nn.Module, finetuned: nn.Module, alpha: float) -> int:
    """Set every floating-point tensor of ``finetuned``'s state to original + alpha (finetuned - original),
    in place; returns how many tensors changed. The two modules must have the same state keys and shapes."""
    a = check_alpha(alpha)
    src, dst = original.state_dict(), finetuned.state_dict()
    if src.keys() != dst.keys():
        diff = sorted(set(src) ^ set(dst))
        raise Fit3DError(f"weight interpolation: the models' tensors differ ({', '.join(diff[:4])}...)")
    changed = 0
    for k, t in dst.items():
        o = src[k]
        if o.shape != t.shape:
            raise Fit3DError(f"weight interpolation: {k} is {tuple(o.shape)} in the original, {tuple(t.shape)} "
                             f"fine-tuned")
        if not t.is_floating_point() or a == 1.0 or torch.equal(o, t):
            continue
        t.copy_(torch.lerp(o.to(t.device, t.dtype), t, a))
        changed += 1
    return changed
