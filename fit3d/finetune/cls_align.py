"""The fine-tuned model's [CLS] re-aligned to the original's after Stage 2 (``FinetuneConfig.cls_align``).

Stage 2 gives [CLS] no target but trains the blocks that make it, and the drifted [CLS] is the whole of the
fine-tuned model's metric-depth loss across scenes (``bench/cls_diagnosis.py``, docs/generalize.md). Pulling
it back through the blocks (an anchor during Stage 2, restore steps after it) also moves the patch tokens.
This lever moves nothing Stage 2 made: an affine map on the output [CLS] (``fit3d.models.cls_map.ClsMap``),
fitted in closed form on the Stage 2 training views (the frozen original's [CLS] from the fine-tuned one):

    min_{W, b}  sum_i |c_i W + b - o_i|^2 + lam |W - I|^2        (c_i fine-tuned, o_i original [CLS], [D])

a ridge regression shrunk toward the identity (lam -> inf: no change). ``lam`` is chosen from ``LAMBDAS`` by
cross-validation with the scenes as groups (each fold's map is scored on scenes it was not fitted on: the
mean relative error |c W + b - o| / |o|), so the choice asks how well the map carries to unseen scenes.
``cls_align = "shift"`` keeps W = I: one offset, the mean difference o - c over the views.
``cls_align = "original"`` fits nothing: the output [CLS] becomes the original's own, computed by the original's
blocks after the prefix Stage 2 froze (``fit3d.models.cls_branch``; 1.5x the forward with ``default``'s freeze).

A linear probe on the mapped [CLS] has the same function class as on the unmapped one (an invertible affine map
is absorbed by its weights); what changes is what the probe's optimiser and weight decay find. So the lever acts
through the probe's training, which is why it is judged on validation evals (docs/generalize.md).
Written here rather than taken from scikit-learn (not a dependency): a ridge toward a prior is one solve.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor

from fit3d.errors import Fit3DError
from fit3d.models.cls_map import ClsMap

log = logging.getLogger(__name__)

LAMBDAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)  # the ridge weights cross-validated
FOLDS = 4


def _solve(c: Tensor, o: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """(W [D, D], b [D]) of the ridge toward the identity on float64 pairs c / o [N, D]; the bias is not shrunk
    (it is fitted on centred data)."""
    cm, om = c.mean(0), o.mean(0)
    cc, oc = c - cm, o - om
    D = c.shape[1]
    eye = torch.eye(D, dtype=c.dtype)
    W = torch.linalg.solve(cc.T @ cc + lam * eye, cc.T @ oc + lam * eye)
    return W, om - cm @ W


def _rel_err(c: Tensor, o: Tensor, W: Tensor, b: Tensor) -> Tensor:
    return (c @ W + b - o).norm(dim=1) / o.norm(dim=1).clamp_min(1e-12)


def fit_cls_map(finetuned: Tensor, original: Tensor, groups: Tensor, lambdas=LAMBDAS,
                folds: int = FOLDS, kind: str = "ridge") -> tuple[ClsMap, dict]:
    """The map finetuned [N, D] -> original [N, D] ([CLS] tokens of the same images). ``kind`` "ridge": the affine
    map, its ridge weight chosen by cross-validation over ``groups`` [N] (scene ids: images of a scene share a
    fold; fewer than 2 groups: folds of images); "shift": the identity plus the mean difference (one offset for
    every image). Returns (ClsMap, info: lambda, the cross-validated error per lambda, the error with no map)."""
    c, o = finetuned.detach().double().cpu(), original.detach().double().cpu()
    if c.shape != o.shape or c.ndim != 2 or len(c) < 2:
        raise Fit3DError(f"[CLS] alignment needs matching [N, D] pairs with N >= 2, got {tuple(c.shape)} and "
                         f"{tuple(o.shape)}")
    eye = torch.eye(c.shape[1], dtype=c.dtype)
    none = float(_rel_err(c, o, eye, torch.zeros(c.shape[1], dtype=c.dtype)).mean())
    if kind == "shift":
        b = o.mean(0) - c.mean(0)
        info = {"kind": kind, "error": float(_rel_err(c, o, eye, b).mean()), "error_without_map": none,
                "pairs": len(c), "groups": int(len(torch.unique(torch.as_tensor(groups))))}
        return ClsMap(eye.float(), b.float(), {"kind": kind, "pairs": len(c)}), info
    if kind != "ridge":
        raise Fit3DError(f"[CLS] alignment kind {kind!r}: expected ridge or shift")
    g = torch.as_tensor(groups).long().cpu()
    ids = torch.unique(g)
    if len(ids) >= 2:
        fold_of = {int(k): i % folds for i, k in enumerate(ids.tolist())}
        fold = torch.tensor([fold_of[int(k)] for k in g.tolist()])
    else:
        fold = torch.arange(len(c)) % folds
    scores = {}
    for lam in lambdas:
        err = torch.zeros(len(c), dtype=torch.float64)
        for k in torch.unique(fold).tolist():
            te = fold == k
            if te.all():  # a single fold: nothing to fit on
                continue
            W, b = _solve(c[~te], o[~te], float(lam))
            err[te] = _rel_err(c[te], o[te], W, b)
        scores[float(lam)] = float(err.mean())
    lam = min(scores, key=scores.get)
    W, b = _solve(c, o, lam)
    info = {"kind": kind, "lambda": lam, "cv_error": scores, "error": scores[lam], "error_without_map": none,
            "pairs": len(c), "groups": len(ids)}
    return ClsMap(W.float(), b.float(), {"kind": kind, "lambda": lam, "pairs": len(c)}), info


@contextlib.contextmanager
def plain_cls(*backbones):
    """Within: the backbones' [CLS] maps and branches taken off (their own last [CLS]); put back after."""
    kept = [(b.cls_map, b.cls_branch) for b in backbones]
    for b in backbones:
        b.cls_map = b.cls_branch = None
    try:
        yield
    finally:
        for b, (m, br) in zip(backbones, kept):
            b.cls_map, b.cls_branch = m, br


@torch.no_grad()
def cls_pairs(original, finetuned, views, batch_size: int = 16, progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(finetuned [N, D], original [N, D], scene [N]) [CLS] tokens of every item of ``views``
    (``RenderedViews(images_only=True)``), both models in eval mode, no maps applied to them."""
    from tqdm.auto import tqdm

    ft, orig, scene = [], [], []
    with plain_cls(original, finetuned):
        for s in tqdm(range(0, len(views), batch_size), desc="[CLS] alignment", unit="batch", disable=not progress):
            items = [views[i] for i in range(s, min(len(views), s + batch_size))]
            images = torch.stack([it["image"] for it in items])
            ft.append(finetuned.features(finetuned.prepare(images))[1].float().cpu())
            orig.append(original.features(original.prepare(images))[1].float().cpu())
            scene.append(torch.tensor([int(it["scene"]) for it in items]))
    return torch.cat(ft), torch.cat(orig), torch.cat(scene)


@torch.no_grad()
def _cls_fp32(backbone, images: Tensor) -> Tensor:
    """The last [CLS] [B, D] in float32 and eval mode on any device (``features`` autocasts to bf16 on CUDA, whose
    rounding would blur the exactness check below)."""
    was = backbone.training
    backbone.eval()
    try:
        return backbone.tokens(images)[1].float()
    finally:
        backbone.train(was)


@torch.no_grad()
def attach_original_cls(original, finetuned, atol: float = 1e-4) -> dict:
    """``cls_align = "original"``: set ``finetuned.cls_branch`` to the original's blocks after the prefix the two
    models share (``fit3d.models.cls_branch``; any [CLS] map of ``finetuned`` is dropped), checked on a random image
    against the original's own [CLS]; returns the branch's info (start block, its share of the blocks)."""
    from fit3d.models.cls_branch import ClsBranch, shared_prefix, transformer_blocks

    start = shared_prefix(original.model, finetuned.model)
    n = len(transformer_blocks(original.model))
    if start == 0:
        raise Fit3DError("cls_align=original: the fine-tuned model shares no leading block with the original (the "
                         "patch embedding or block 1 was trained); use a recipe that freezes the first blocks "
                         "(freeze_blocks > 0, as default does) or cls_align=shift")
    start = min(start, n - 1)  # every block equal (nothing trained): the branch is the last block
    norm_attr = getattr(finetuned._family, "norm_attr", None)
    if norm_attr is None or getattr(original.model, norm_attr, None) is None:
        raise Fit3DError(f"cls_align=original: backbone family '{finetuned.family}' has no final norm to branch from")
    finetuned.cls_map = None
    finetuned.cls_branch = ClsBranch.from_original(original.model, norm_attr, start,
                                                   {"kind": "original", "backbone": finetuned.name}).to(finetuned.device)
    p = finetuned.patch_size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 3 * p, 4 * p, generator=g)
    with plain_cls(original):
        want = _cls_fp32(original, image)
    got = _cls_fp32(finetuned, image)
    err = float((got - want).abs().max())
    if not err <= atol:
        finetuned.cls_branch = None
        raise Fit3DError(f"cls_align=original: the branch does not reproduce the original's [CLS] on family "
                         f"'{finetuned.family}' (max difference {err:.2e}); use cls_align=shift")
    info = {"kind": "original", "start_block": start, "branch_blocks": n - start, "blocks": n,
            "forward_cost": round(1 + (n - start) / n, 4), "check_max_abs": err}
    log.info("[CLS] from the original: its blocks %d-%d run beside the fine-tuned ones (%.2fx the forward)",
             start + 1, n, info["forward_cost"])
    return info


def picked_views(n: int, max_views: int = 0) -> list[int]:
    """Indices of ``max_views`` of ``n`` views, evenly spaced (the views are listed scene by scene, so every scene
    keeps its share); all of them when ``max_views`` is 0 or >= n."""
    if max_views <= 0 or max_views >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_views - 1)) for i in range(max_views)}) if max_views > 1 else [0]


def align_backbone(original, finetuned, scenes, patch_size: int, resolution, batch_size: int = 16,
                   progress: bool = False, kind: str = "ridge", max_views: int = 0) -> dict:
    """Fit the map (``kind``: see :func:`fit_cls_map`) on the training views of ``scenes`` (``SceneRef``s, or a
    function returning them, called only when a map is fitted; unflipped
    images at ``resolution``; ``max_views`` > 0: that many, :func:`picked_views`) and set it on ``finetuned``
    (``finetuned.cls_map``); returns the fit's info. ``kind`` original: :func:`attach_original_cls`, or where the
    model cannot have the branch (no shared block, a family whose blocks need more than the hidden state) the shift,
    with ``info["requested"]`` / ``info["fallback_reason"]`` saying so."""
    from torch.utils.data import Subset

    from fit3d.finetune.data import RenderedViews

    fallback = None
    if kind == "original":  # scenes are only read if the branch cannot be attached
        try:
            return attach_original_cls(original, finetuned)
        except Fit3DError as e:  # after a whole Stage 2: never lose it; the shift is the 1.0x model's [CLS] fix
            log.warning("%s; the [CLS] is shifted back instead (cls_align=shift)", e)
            kind, fallback = "shift", str(e)

    scenes = scenes() if callable(scenes) else scenes
    views = RenderedViews(scenes, patch_size, which="train", resolution=resolution, flip_prob=0.0, images_only=True)
    if len(views) == 0:
        raise Fit3DError("[CLS] alignment: the scenes list no training views")
    views = Subset(views, picked_views(len(views), max_views))
    c, o, g = cls_pairs(original, finetuned, views, batch_size, progress)
    finetuned.cls_map, info = fit_cls_map(c, o, g, kind=kind)
    if fallback is not None:
        info = {**info, "requested": "original", "fallback_reason": fallback}
    log.info("[CLS] alignment (%s): error %.4f (no map %.4f), %d views of %d scenes", kind, info["error"],
             info["error_without_map"], info["pairs"], info["groups"])
    return info
