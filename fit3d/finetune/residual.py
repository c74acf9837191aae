"""Stage 2 targets relative to a scene's lifted subspace (``FinetuneConfig.target_mode``).

A lifted scene's decoder maps f rendered features to the backbone's D channels, so every rendered target
lies (mostly) in an f-dimensional subspace U of the D-dim token space: for the back-projected lift exactly
(the decoder's centre tap is the scene's f main directions), for an optimised / solved decoder up to its
weaker directions. FiT3D's L1 to the rendered target therefore also teaches the backbone to *drop*
whatever of its tokens lies outside U (``bench/semantics_diagnosis.py`` measures how much that is).

- ``rendered``   FiT3D: the rendered, decoded target t.
- ``residual``   U U^T t + (I - U U^T) x: the 3D-consistent target inside U, the frozen original's tokens x
                 outside (the backbone is taught to change its features only where the lift says something).
- ``projection`` U U^T x: the original's own tokens, projected (a control: the bottleneck without any 3D
                 signal, to tell the cost of the bottleneck from the cost of the 3D targets).

``FinetuneConfig.target_mean`` "original" (:func:`with_view_mean`) then gives each view's target the frozen
original's mean token over the view (its unmasked tokens): the target's deviations from its own mean carry
the 3D signal, the view-level component stays the original's. A lifted feature is one value per surface
whatever the camera's distance, so a 3D-consistent target has no view-dependent global component of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fit3d.finetune.config import TARGET_MODES


@torch.no_grad()
def decoder_subspace(decoder, rank: int | None = None) -> Tensor:
    """Orthonormal basis U [D, r] of the directions a scene decoder emits: the top-``rank`` (default: its input
    width f) left singular vectors of its weight reshaped to [D, f k k]."""
    w = decoder.conv.weight.detach().double()
    W = w.reshape(w.shape[0], -1)  # [D, f*k*k]
    r = min(rank or decoder.in_dim, *W.shape)
    U = torch.linalg.svd(W, full_matrices=False).U[:, :r]
    return U.float().contiguous()


def subspace_target(target: Tensor, reference: Tensor, U: Tensor, mode: str) -> Tensor:
    """The Stage 2 target of ``mode`` (see the module doc). target / reference [B, D, h, w] (rendered target,
    frozen original's tokens), U [B, D, r] (each sample's scene subspace) -> [B, D, h, w]."""
    if mode == "rendered":
        return target
    U = U.to(target.dtype)

    def project(x: Tensor) -> Tensor:  # U U^T x per sample
        return torch.einsum("bdr,brhw->bdhw", U, torch.einsum("bdr,bdhw->brhw", U, x))

    ref = reference.to(target.dtype)
    if mode == "residual":
        return project(target) + ref - project(ref)
    if mode == "projection":
        return project(ref)
    raise ValueError(f"target mode {mode!r}: expected one of {', '.join(TARGET_MODES)}")


def with_view_mean(target: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """``target`` with each sample's mean token over its ``mask`` replaced by ``reference``'s mean over the same
    tokens: target - mean(target) + mean(reference). target / reference [B, D, h, w], mask [B, h, w] bool; a
    sample with no unmasked token is returned unchanged (the loss ignores it)."""
    m = mask.to(target.dtype)[:, None]  # [B, 1, h, w]
    n = m.sum((2, 3), keepdim=True).clamp_min(1.0)
    shift = ((reference.to(target.dtype) - target) * m).sum((2, 3), keepdim=True) / n  # [B, D, 1, 1]
    return target + shift
