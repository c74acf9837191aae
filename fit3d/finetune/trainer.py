"""Stage 2 training loop: masked L1 between the backbone's patch tokens and rendered 3D-aware targets.

Single process (CPU or one GPU) or ``torchrun`` (DistributedDataParallel: gloo on CPU, nccl on CUDA,
views sharded by :class:`~fit3d.finetune.data.ResumableSampler`; rank 0 writes). Checkpoints every
``checkpoint_every`` steps hold model, optimiser, sampler position and RNG state, so rerunning the same
command after an interruption resumes at the same step with the same result.

Output folder::

    OUT/model/          save_pretrained of the fine-tuned transformers model (AutoModel-loadable)
    OUT/fit3d.json      manifest: backbone, original_model_path, config, steps, metrics, memory, timing
    OUT/losses.json     the per-step training loss
    OUT/checkpoint.safetensors  while running (removed once the manifest is written; see fit3d.run)

``fit3d.json`` records the settings that determine the result (``settings``: the non-volatile config
fields, backbone, model source, scenes, world size); a rerun with the same ones returns the finished run,
with others it stops naming the differing fields (``overwrite=True`` rebuilds beside and swaps).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fit3d.config import to_dict
from fit3d.device import DistInfo, adamw, dist_info, resolve_device, resolve_precision
from fit3d.errors import Fit3DError, NonFiniteError
from fit3d.finetune.adapters import add_lora, merge_lora
from fit3d.finetune.anchor import AnchorReference
from fit3d.finetune.averaging import WeightAverage, trained_parameters
from fit3d.models.cls_branch import transformer_blocks  # noqa: F401 - re-exported (benches, tests)
from fit3d.finetune.config import FinetuneConfig
from fit3d.finetune.data import (RenderedViews, ResumableSampler, load_scenes, make_worker_init,
                                 render_plan, scene_memory)
from fit3d.finetune.residual import decoder_subspace, subspace_target, with_view_mean
from fit3d.finetune.wise import interpolate_weights
from fit3d.guard import check_not_input, check_replaceable, model_inputs
from fit3d.io import atomic_dir, clean_stale_temps, read_json_dict, write_json
from fit3d.lift.lifted import DECODER_FILE, GAUSSIANS_FILE, META_FILE
from fit3d.models import load_backbone
from fit3d.models.identity import folder_fingerprint, model_identity
from fit3d.run import (Interrupt, capture_rng, check_resume, commit_staged, load_checkpoint, recover_staged,
                       restore_rng, result_settings, save_checkpoint, staged_dir, workers_can_spawn)

log = logging.getLogger(__name__)

MANIFEST_FILE = "fit3d.json"
MODEL_DIR = "model"
CHECKPOINT_FILE = "checkpoint.safetensors"
OLD_CHECKPOINT_FILE = "checkpoint.pt"  # pickled (fit3d < this version): never loaded
LOSSES_FILE = "losses.json"
SCENE_CACHE_DIR = "scene_columns"  # the lifted scenes' Gaussians as mapped columns (fit3d.finetune.store), while running


# ----------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def freeze_first_blocks(model: nn.Module, k: int) -> int:
    """Freeze the patch embedding and the first ``k`` blocks (k < 0: all but the last ``-k`` blocks, none
    when the model has no more than ``-k``); returns the number of frozen tensors."""
    if k == 0:
        return 0
    blocks = transformer_blocks(model)
    if k < 0:
        k = max(0, len(blocks) + k)
        if k == 0:
            return 0
    if k > len(blocks):
        raise Fit3DError(f"--freeze-blocks {k}: the backbone has only {len(blocks)} blocks (set --freeze-blocks, "
                         f"or pick a --recipe that freezes fewer, e.g. fit3d)")
    frozen = [b for b in blocks[:k]]
    for name, m in model.named_modules():
        if name.split(".")[-1] == "embeddings":
            frozen.append(m)
            break
    n = 0
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
            n += 1
    return n


def freeze_last_blocks(model: nn.Module, k: int) -> int:
    """Freeze the last ``k`` transformer blocks (their parameters still trainable so far); returns how many
    tensors were newly frozen."""
    if k <= 0:
        return 0
    blocks = transformer_blocks(model)
    if k > len(blocks):
        raise Fit3DError(f"--freeze-last-blocks {k}: the backbone has only {len(blocks)} blocks")
    n = 0
    for b in blocks[-k:]:
        for p in b.parameters():
            n += int(p.requires_grad)
            p.requires_grad_(False)
    return n


class PatchTokens(nn.Module):
    """``backbone.tokens(images)[0]`` as a module (what DDP wraps): [B, 3, H, W] -> [B, D, h, w]; with
    ``with_cls`` the whole ``Tokens`` (patch [B, D, h, w], cls [B, D])."""

    def __init__(self, backbone: nn.Module, with_cls: bool = False):
        super().__init__()
        self.backbone, self.with_cls = backbone, with_cls

    def forward(self, images: Tensor):
        out = self.backbone.tokens(images)
        return out if self.with_cls else out[0]


def masked_l1(tokens: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |tokens - target| over channels and the masked tokens. tokens/target [B, D, h, w], mask [B, h, w]."""
    diff = (tokens.float() - target.float()).abs().mean(1)  # [B, h, w]
    m = mask.to(diff.dtype)
    return (diff * m).sum() / m.sum().clamp_min(1.0)


def anchor_token_weights(mask: Tensor, alpha: Tensor | None, at: str, spread: Tensor | None = None,
                         spread_scale: float = 0.25) -> Tensor:
    """Per-token weight [B, h, w] of the anchor term: ``opacity`` 1 - alpha, ``everywhere`` 1, ``unmasked``
    1 where the 3D loss is masked out, ``spread`` max(1 - alpha, min(1, spread / spread_scale)): where the
    target is absent or its contributors disagree (the multi-view spread of :func:`feature_spread`)."""
    if at == "spread":
        if alpha is None or spread is None:
            raise Fit3DError("anchor_at=spread needs the rendered opacity and spread in the batch ('alpha', 'spread')")
        return torch.maximum(1.0 - alpha.float(), spread.float() / spread_scale).clamp(0, 1)
    if at == "opacity":
        if alpha is None:
            raise Fit3DError("anchor_at=opacity needs the rendered opacity in the batch ('alpha')")
        return (1.0 - alpha.float()).clamp(0, 1)
    if at == "everywhere":
        return torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    if at == "unmasked":
        return (~mask.bool()).float()
    raise Fit3DError(f"anchor_at = {at!r}: expected opacity, everywhere, unmasked or spread")


def anchor_l1(tokens: Tensor, reference: Tensor, weight: Tensor) -> Tensor:
    """sum(weight * mean_D |tokens - reference|) / number of tokens: [B, D, h, w] x2, weight [B, h, w]. Divided
    by all tokens, not by sum(weight), so the term fades where the 3D target is everywhere reliable."""
    diff = (tokens.float() - reference.float()).abs().mean(1)
    return (diff * weight).sum() / weight.numel()


@dataclass
class LossTerms:
    """What a Stage 2 loss adds to FiT3D's masked L1 to the rendered target (all optional).

    original       the frozen original Backbone (its tokens: residual / projection targets, the anchor's reference)
    subspaces      per scene U [D, r] (``fit3d.finetune.residual``), indexed by the batch's "scene"
    target_mode    rendered / residual / projection
    anchor_weight, anchor_at, anchor_spread   the anchor term (``anchor_token_weights``)
    teacher        the anchor's reference when not the original (the EMA teacher Backbone)
    cls_weight     an L1 term keeping the [CLS] token at the original's (the module must return ``Tokens``)
    target_mean    target / original: whose per-view mean token the target carries (``with_view_mean``)
    """

    original: object | None = None
    subspaces: list | None = None
    target_mode: str = "rendered"
    anchor_weight: float = 0.0
    anchor_at: str = "opacity"
    anchor_spread: float = 0.25
    teacher: object | None = None
    cls_weight: float = 0.0
    target_mean: str = "target"


def forward_loss(module: nn.Module, batch: dict, device: torch.device, use_amp: bool,
                 terms: LossTerms | None = None) -> Tensor:
    """Masked L1 of one batch {"image" [B,3,H,W], "target" [B,D,h,w], "mask" [B,h,w], "alpha" [B,h,w], "scene" [B]}
    (bf16 autocast if use_amp) to the target of ``terms.target_mode``, plus ``anchor_weight * anchor_l1`` to the
    frozen original's (or the EMA teacher's) tokens when ``terms`` has an anchor, plus ``cls_weight`` x the mean
    |cls - original's cls| when it has a [CLS] anchor (``module`` then returns ``Tokens``)."""
    images = batch["image"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = module(images)
    tokens, cls = out if isinstance(out, tuple) else (out, None)
    t = terms or LossTerms()
    anchored = t.anchor_weight > 0
    reference = ref_cls = None
    if (t.target_mode != "rendered" or (anchored and t.teacher is None) or t.cls_weight > 0
            or t.target_mean != "target"):
        reference, ref_cls = t.original.features(images)  # [B, D, h, w], [B, D]; no grad
    if t.target_mode != "rendered":
        U = torch.stack([t.subspaces[int(i)] for i in batch["scene"]]).to(device)
        target = subspace_target(target.float(), reference.float(), U, t.target_mode)
    if t.target_mean == "original":
        target = with_view_mean(target.float(), reference.float(), mask)
    elif t.target_mean != "target":
        raise Fit3DError(f"target_mean {t.target_mean!r}: expected target or original")
    loss = masked_l1(tokens, target, mask)
    if anchored:
        alpha, spread = (batch.get(k) for k in ("alpha", "spread"))
        w = anchor_token_weights(mask, None if alpha is None else alpha.to(device, non_blocking=True), t.anchor_at,
                                 None if spread is None else spread.to(device, non_blocking=True), t.anchor_spread)
        ref = reference if t.teacher is None else t.teacher.features(images)[0]
        loss = loss + t.anchor_weight * anchor_l1(tokens, ref, w)
    if t.cls_weight > 0:
        if cls is None or ref_cls is None:
            raise Fit3DError("a [CLS] anchor needs the module's and the original's [CLS] tokens")
        loss = loss + t.cls_weight * (cls.float() - ref_cls.float()).abs().mean()
    return loss


def restore_loss(module: nn.Module, batch: dict, device: torch.device, use_amp: bool, held, original,
                 cls_weight: float) -> Tensor:
    """The [CLS]-restore step's loss on {"image" [B,3,H,W]}: mean |patch - held's patch| + ``cls_weight`` x mean
    |cls - original's cls|. ``module`` returns ``Tokens``; ``held`` (the frozen copy taken when the Stage 2 steps
    ended) and ``original`` give ``features(images) -> (patch, cls)`` with no grad (``AnchorReference``s: call them
    right after the module's forward)."""
    images = batch["image"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        tokens, cls = module(images)
    held_patch = held.features(images)[0]
    ref_cls = original.features(images)[1]
    return ((tokens.float() - held_patch.float()).abs().mean()
            + cls_weight * (cls.float() - ref_cls.float()).abs().mean())


@torch.no_grad()
def ema_update(teacher: nn.Module, model: nn.Module, momentum: float) -> None:
    """teacher = momentum * teacher + (1 - momentum) * model, parameter by parameter (same architecture)."""
    for pt, pm in zip(teacher.parameters(), model.parameters()):
        pt.lerp_(pm.detach().to(pt.dtype), 1.0 - momentum)


def build_trainable(bb, cfg: FinetuneConfig) -> tuple[list, int, object]:
    """Apply the recipe's model levers to backbone ``bb``: LoRA adapters (cfg.adapter) and frozen blocks.

    Returns (trainable parameters, number of frozen tensors, the PeftModel or None)."""
    peft_model = None
    if cfg.adapter == "lora":
        peft_model = add_lora(bb.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed)
    n_frozen = freeze_first_blocks(bb.model, cfg.freeze_blocks) + freeze_last_blocks(bb.model, cfg.freeze_last_blocks)
    params = [p for p in bb.parameters() if p.requires_grad]
    if not params:
        raise Fit3DError(f"nothing to train: freeze_blocks={cfg.freeze_blocks} / freeze_last_blocks="
                         f"{cfg.freeze_last_blocks} / adapter={cfg.adapter} leave "
                         f"no trainable parameter")
    return params, n_frozen, peft_model


def backward_step(loss: Tensor, opt: torch.optim.Optimizer, params: list, grad_clip: float) -> Tensor:
    """Backward, clip the global gradient norm to ``grad_clip`` (0: no clip), optimiser step; returns the
    norm. A non-finite norm skips the step (the caller stops the run with the weights untouched)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip and grad_clip > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if not torch.isfinite(gnorm):
            return gnorm
    else:
        gnorm = torch.zeros(())
    opt.step()
    return gnorm


def masked_cosine_distance(feats: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean (1 - cos) over the masked tokens. [B, D, h, w] x2, mask [B, h, w]."""
    cos = torch.nn.functional.cosine_similarity(feats.float(), target.float(), dim=1, eps=1e-8)
    m = mask.to(cos.dtype)
    return ((1 - cos) * m).sum() / m.sum().clamp_min(1.0)


def loss_summary(losses: list[float]) -> dict:
    """First / last tenth means, min, max of a loss curve."""
    if not losses:
        return {"steps": 0}
    k = max(1, len(losses) // 10)
    return {"steps": len(losses), "first": float(np.mean(losses[:k])), "last": float(np.mean(losses[-k:])),
            "min": float(np.min(losses)), "max": float(np.max(losses)), "window": k}


def _original_model_path(backbone, model_path) -> str | None:
    for cand in (model_path, getattr(backbone, "model_path", None), getattr(backbone, "source", None),
                 getattr(getattr(backbone, "model", None), "name_or_path", None)):
        if cand:
            return str(cand)
    return None


def _save_pretrained_atomic(model, dest: Path, cls_map=None, cls_branch=None) -> None:
    """save_pretrained into a temporary sibling folder, then swap it in (a crash never leaves half a model);
    ``cls_map`` (``fit3d.models.cls_map.ClsMap``) / ``cls_branch`` (``fit3d.models.cls_branch.ClsBranch``) are
    written beside the weights."""
    with atomic_dir(dest) as tmp:
        model.save_pretrained(str(tmp))
        for extra in (cls_map, cls_branch):
            if extra is not None:
                extra.save(tmp)


def _check_lifted(scene_dirs) -> None:
    """Every folder is a finished lifted scene (checked before the backbone loads)."""
    for d in scene_dirs:
        missing = [f for f in (GAUSSIANS_FILE, DECODER_FILE, META_FILE) if not (Path(d) / f).is_file()]
        if missing:
            raise Fit3DError(f"{d}: not a finished lifted scene (missing {', '.join(missing)}); run `fit3d lift` "
                             f"first")


def run_settings(scene_dirs, cfg: FinetuneConfig, world_size: int, device=None) -> dict:
    """What determines a fine-tuning result: the non-volatile config, ``precision`` resolved on ``device``
    (default: ``cfg.device``'s), backbone, the model's identity (``fit3d.models.identity``: resolved weights,
    fingerprint, architecture), scenes (and the settings each was lifted with), world size."""
    scenes = []
    for d in scene_dirs:
        meta = read_json_dict(Path(d) / "lift.json", "lifted scene record (lift.json)")
        scenes.append({"path": str(Path(d).resolve()), "lift": meta.get("settings", meta.get("config"))})
    device = device if device is not None else resolve_device(cfg.device)
    return {**result_settings(cfg), "precision": resolve_precision(cfg.precision, device),
            "model": model_identity(cfg.backbone, cfg.model_path),
            "scenes": scenes,
            "world_size": world_size}


def recorded_settings(recorded: dict | None, device) -> dict | None:
    """A run's recorded settings as this version compares them: one recorded before ``precision`` was a setting
    ran the original's forwards at the backbone's default on its device (``resolve_precision(None, device)``)."""
    if isinstance(recorded, dict) and "precision" not in recorded:
        return {**recorded, "precision": resolve_precision(None, device)}
    return recorded


def ranks_in_sync(model: nn.Module, device) -> bool:
    """All ranks hold the same weights (compares a float64 checksum of every parameter; collective)."""
    vec = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                       for p in model.parameters()]).flatten().to(device)
    gathered = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, vec)
    return all(torch.equal(g, gathered[0]) for g in gathered)


# ----------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_against_targets(views: RenderedViews, backbones: dict, device, batch_size: int = 2,
                             progress: bool = False) -> dict:
    """L1 and cosine distance of each backbone's patch tokens to the rendered targets of ``views``.

    backbones: {label: Backbone}. Returns {"num_views", label: {"l1", "cosine_distance"}}, masked means
    over all valid tokens of all views.
    """
    sums = {k: {"l1": 0.0, "cosine_distance": 0.0} for k in backbones}
    count = 0.0
    for start in tqdm(range(0, len(views), batch_size), desc="held-out eval", disable=not progress, leave=False):
        items = [views[(i, 0)] for i in range(start, min(len(views), start + batch_size))]
        for it in items:
            image, target, mask = it["image"][None].to(device), it["target"][None].to(device), it["mask"][None].to(device)
            n = float(mask.sum())
            if n == 0:
                continue
            for k, bb in backbones.items():
                feats = bb.features(image)[0].float()
                sums[k]["l1"] += float(masked_l1(feats, target, mask)) * n
                sums[k]["cosine_distance"] += float(masked_cosine_distance(feats, target, mask)) * n
            count += n
    out: dict = {"num_views": len(views), "num_tokens": int(count)}
    for k in backbones:
        out[k] = {m: (v / count if count else None) for m, v in sums[k].items()}
    return out


# ----------------------------------------------------------------------------------------- training
def finetune(scene_dirs, backbone: str | None, out, cfg: FinetuneConfig | None = None, model_path=None,
             overwrite: bool = False, how: str | None = None) -> dict:
    """Fine-tune ``cfg.backbone`` on the rendered features of the lifted ``scene_dirs``; returns the manifest.
    ``backbone`` / ``model_path``, when given, override ``cfg.backbone`` / ``cfg.model_path``.

    Resumes from ``out/checkpoint.safetensors`` when present; returns the existing manifest when ``out``
    already holds a finished run with the same settings, and raises ``SettingsMismatch`` naming the
    differing fields when its settings differ (``overwrite``: build the new run beside ``out``, then swap;
    ``how``: what that error tells the user to do, default ``--overwrite`` or another ``--out``).
    """
    cfg = cfg or FinetuneConfig()
    cfg = dataclasses.replace(cfg, backbone=backbone or cfg.backbone,
                              model_path=model_path if model_path is not None else cfg.model_path)
    cfg.validate()
    if not scene_dirs:
        raise Fit3DError("finetune: no lifted scenes given (--scenes)")
    _check_lifted(scene_dirs)
    out = Path(out)
    check_not_input(out, [*scene_dirs, *model_inputs(cfg.model_path)])  # also for Python callers: never over an input
    if overwrite:
        check_replaceable([out])
    di = dist_info()
    device = resolve_device(cfg.device, di.local_rank)
    if di.active and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(hours=2))
    try:
        settings = run_settings(scene_dirs, cfg, di.world_size, device)
        recover_staged(out)
        done = _finished(out, settings, overwrite, how, device)
        if done is not None:
            if di.is_main:
                log.info("%s: already fine-tuned (%d steps, same settings); nothing to do", out, done["steps"])
            return done
        work = staged_dir(out) if overwrite and out.exists() else out
        with Interrupt() as interrupt:
            result = _finetune(scene_dirs, work, cfg, di, device, settings, interrupt)
        if di.is_main and work != out:
            commit_staged(work, out)
        if di.active:
            # Every rank leaves together, once rank 0 has written the outputs: a rank that tears its
            # group down while a peer still works on it can abort (SIGABRT) at interpreter exit.
            dist.barrier()
        return result
    finally:
        if di.active and dist.is_initialized():
            gc.collect()  # frees the DDP reducer (cycles) while the process group is still alive
            dist.destroy_process_group()


def is_finished(out) -> bool:
    """True when ``out`` holds a finished fine-tuning run (its manifest and model), whatever its settings."""
    return (Path(out) / MANIFEST_FILE).exists() and (Path(out) / MODEL_DIR).exists()


def _finished(out: Path, settings: dict, overwrite: bool, how: str | None, device) -> dict | None:
    """The manifest of a finished run in ``out`` with ``settings``; None when there is none (or it is to be
    overwritten); ``SettingsMismatch`` when it was made with others (a record from before ``precision`` read as
    ``recorded_settings`` does on ``device``)."""
    if overwrite or not is_finished(out):
        return None
    done = read_json_dict(out / MANIFEST_FILE, "fine-tuning manifest", keys=("steps",))
    check_resume(recorded_settings(done.get("settings"), device), settings, "finished fine-tuning", out, how)
    return done


@dataclass
class _Run:
    """One fine-tuning run's state: what is trained, on what, and how far it got (the checkpoint's content)."""

    cfg: FinetuneConfig
    out: Path
    di: DistInfo
    device: torch.device
    settings: dict
    bb: object                       # the Backbone being trained
    scenes: list
    views: RenderedViews
    sampler: ResumableSampler
    total: int                       # optimiser steps of the whole run (Stage 2's, then the [CLS]-restore steps)
    params: list
    opt: torch.optim.Optimizer
    n_frozen: int
    peft_model: object | None        # the PeftModel wrapping bb.model (adapter=lora), merged before saving
    original: object | None          # the frozen original (anchor reference; held-out baseline)
    mem: object
    anchor_ref: object | None = None  # AnchorReference: the original's tokens, reusing the frozen prefix
    teacher: object | None = None    # the EMA teacher (anchor_teacher=ema)
    subspaces: list | None = None    # per scene U [D, r] (target_mode residual / projection)
    held: object | None = None       # cls_restore_steps: the frozen copy of the model when the Stage 2 steps ended
    average: object | None = None    # weight_average: the WeightAverage of the trained weights
    step: int = 0
    epoch: int = 0
    consumed: int = 0                # samples of the current epoch already seen
    losses: list = field(default_factory=list)
    seen: list = field(default_factory=list)
    step_times: list = field(default_factory=list)
    wait_times: list = field(default_factory=list)

    @property
    def stage2_total(self) -> int:
        """Steps with the 3D targets (the rest of ``total`` are [CLS]-restore steps)."""
        return self.total - self.cfg.cls_restore_steps

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT_FILE

    @property
    def terms(self) -> LossTerms:
        c = self.cfg
        return LossTerms(self.anchor_ref or self.original, self.subspaces, c.target_mode, c.anchor_weight,
                         c.anchor_at, c.anchor_spread, self.teacher, c.anchor_cls, c.target_mean)


def _load_original(cfg: FinetuneConfig, device):
    original = load_backbone(cfg.backbone, model_path=cfg.model_path, device=str(device)).eval()
    original.requires_grad_(False)
    return original


def _prepare(scene_dirs, out: Path, cfg: FinetuneConfig, di: DistInfo, device, settings: dict) -> _Run:
    """Backbone, lifted scenes, rendered views, sampler, trainable parameters and optimiser."""
    seed_everything(cfg.seed)
    bb = load_backbone(cfg.backbone, model_path=cfg.model_path, device=str(device))
    if bb.cls_map is not None or bb.cls_branch is not None:  # made for those weights; Stage 2 changes them
        if di.is_main:
            log.warning("%s: its [CLS] map / branch is dropped: Stage 2 trains the weights it was made for (cls_align "
                        "makes a new one)", cfg.model_path)
        bb.cls_map = bb.cls_branch = None
    bb.train()
    scenes = load_scenes(scene_dirs, embed_dim=bb.embed_dim, backbone=cfg.backbone, cache_dir=out / SCENE_CACHE_DIR)
    mem = scene_memory(scenes)
    if di.is_main:
        log.info("%s", mem)
    views = RenderedViews(scenes, bb.patch_size, which="train", resolution=cfg.resolution,
                          alpha_threshold=cfg.alpha_threshold, target_at=cfg.target_at,
                          flip_prob=cfg.flip_prob, seed=cfg.seed, target_pool=cfg.target_pool,
                          with_spread=cfg.anchor_weight > 0 and cfg.anchor_at == "spread",
                          target_views=cfg.target_views)
    if len(views) == 0:
        raise Fit3DError(f"the lifted scenes {[str(s.path) for s in scenes]} list no training views")
    if cfg.batch_size > 1 and len(set(views.sizes)) > 1:  # the batch would not stack: say why, before any step
        by_size = {}
        for s, size in zip(scenes, views.sizes):
            by_size.setdefault(size, s.name)
        raise Fit3DError("the lifted scenes train at different sizes ("
                         + ", ".join(f"{w}x{h}: {n!r}" for (w, h), n in by_size.items())
                         + "; each scene's lift resolution, rounded to patches): set one resolution (fit3d finetune "
                           "--resolution W H; scenes of another aspect are centre-cropped to it) or a batch size of 1")
    sampler = ResumableSampler(views, num_replicas=di.world_size, rank=di.rank, shuffle=True, seed=cfg.seed,
                               groups=[si for si, _ in views.entries])
    for si in sorted({views.entries[i][0] for i in (sampler.shard or range(len(views)))}):
        scenes[si].ensure_columns()  # this rank's scenes as mapped columns, once (before any render worker starts)
    steps_per_epoch = math.ceil(sampler.num_samples / cfg.batch_size)
    total = (steps_per_epoch * cfg.epochs if cfg.max_steps is None else int(cfg.max_steps)) + cfg.cls_restore_steps
    params, n_frozen, peft_model = build_trainable(bb, cfg)
    needs_original = ((cfg.anchor_weight > 0 and cfg.anchor_teacher == "original") or cfg.target_mode != "rendered"
                      or cfg.anchor_cls > 0 or cfg.target_mean != "target" or cfg.cls_restore_steps > 0)
    original = _load_original(cfg, device) if needs_original else None
    if original is not None:  # the step's reference (residual target, anchor) in the run's precision
        original.precision = cfg.precision
    teacher = None
    if cfg.anchor_weight > 0 and cfg.anchor_teacher == "ema":  # starts as the model itself (= the original)
        teacher = _load_original(cfg, device)
    subspaces = None
    if cfg.target_mode != "rendered":
        subspaces = [decoder_subspace(s.decoder, cfg.subspace_rank or None) for s in scenes]
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    anchor_ref = AnchorReference(original, bb, transformer_blocks) if original is not None and peft_model is None \
        else None
    average = WeightAverage.start(trained_parameters(bb.model), cfg.weight_average, total) \
        if cfg.weight_average > 0 else None
    return _Run(cfg, out, di, device, settings, bb, scenes, views, sampler, total, params, opt, n_frozen,
                peft_model, original, mem, anchor_ref, teacher=teacher, subspaces=subspaces, average=average)


def _resume(run: _Run) -> None:
    """Continue from ``run.out``'s checkpoint when there is one (made with the same settings)."""
    out, di, path = run.out, run.di, run.ckpt_path
    if (out / OLD_CHECKPOINT_FILE).exists():
        raise Fit3DError(f"{out / OLD_CHECKPOINT_FILE}: a pickled checkpoint of an older fit3d; it is never "
                         f"loaded (unpickling can run code): delete it to start over")
    if di.is_main:
        clean_stale_temps(out)
    if not path.exists():
        return
    ck_t, ck = load_checkpoint(path)
    check_resume(recorded_settings(ck.get("settings"), run.device), run.settings, "interrupted run's checkpoint", path,
                 how="rerun with the settings it was started with, or with --overwrite / another --out to "
                     "start over")
    try:
        run.bb.model.load_state_dict(ck_t["model"])
        run.opt.load_state_dict(ck_t["optimizer"])
        if run.teacher is not None:
            run.teacher.model.load_state_dict(ck_t["teacher"])
        if "held" in ck_t:
            run.held = _frozen_copy(run, ck_t["held"])
        if run.average is not None:
            run.average.load_state(ck_t["average"], ck["average"])
        run.step, run.epoch, run.consumed, run.losses = ck["step"], ck["epoch"], ck["consumed"], list(ck["losses"])
        restore_rng(ck["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise Fit3DError(f"{path}: checkpoint does not fit this model / run ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); delete it to start over") from None
    if di.is_main:
        log.info("resuming %s at step %d (epoch %d, %d samples in)", path, run.step, run.epoch, run.consumed)


def _checkpoint(run: _Run) -> None:
    if run.di.is_main:
        tensors = {"model": run.bb.model.state_dict(), "optimizer": run.opt.state_dict()}
        if run.teacher is not None:
            tensors["teacher"] = run.teacher.model.state_dict()
        if run.held is not None:
            tensors["held"] = run.held.model.state_dict()
        state = {"step": run.step, "epoch": run.epoch, "consumed": run.consumed, "losses": run.losses,
                 "rng": capture_rng(), "settings": run.settings}
        if run.average is not None:
            tensors["average"], state["average"] = run.average.state()
        save_checkpoint(run.ckpt_path, tensors, state)
    if run.di.active:
        dist.barrier()


def _stop_requested(run: _Run, interrupt: Interrupt) -> bool:
    """SIGTERM / SIGINT on any rank (one all-reduce, so every rank checkpoints together)."""
    flag = torch.tensor([1.0 if interrupt.requested else 0.0], device=run.device)
    if run.di.active:
        dist.all_reduce(flag)
    return bool(flag.item() > 0)


def _frozen_copy(run: _Run, state: dict):
    """A frozen Backbone holding ``state`` (the model's weights; a fresh load, not a deepcopy: the model carries
    the anchor's hooks)."""
    held = _load_original(run.cfg, run.device)
    held.model.load_state_dict(state)
    return held


def _make_loader(run: _Run, views: RenderedViews | None = None) -> DataLoader:
    """One loader for the whole run: its workers persist across epochs (a spawned worker pays its imports
    and the renderer's start-up once); the sampler, read in this process, sets epoch and position."""
    cfg = run.cfg
    views = views if views is not None else run.views
    workers, views.render_device = render_plan(cfg.workers, cfg.render_on, run.device)
    if workers:
        ok, why = workers_can_spawn(cfg.worker_start)
        if not ok:  # e.g. the README's snippet saved as a script: render here instead (same batches, slower)
            log.warning("fine-tuning renders in the main process (workers=0): %s; add the guard to use "
                        "--workers %d", why, workers)
            workers = 0
    return DataLoader(views, batch_size=cfg.batch_size, sampler=run.sampler,
                      num_workers=workers,
                      worker_init_fn=make_worker_init(cfg.worker_threads) if workers else None,
                      prefetch_factor=cfg.prefetch if workers else None,
                      persistent_workers=workers > 0,
                      multiprocessing_context=cfg.worker_start if workers else None,
                      pin_memory=run.device.type == "cuda", drop_last=False)


def _train_step(run: _Run, module: nn.Module, batch: dict, use_amp: bool, restore: tuple | None = None) -> float:
    """Forward, backward, optimiser step on one batch; returns the loss averaged over ranks. ``restore``: (held
    reference, original reference) of a [CLS]-restore step (``restore_loss``) instead of the Stage 2 loss."""
    if restore is None:
        loss = forward_loss(module, batch, run.device, use_amp, run.terms)
    else:
        loss = restore_loss(module, batch, run.device, use_amp, *restore, run.cfg.cls_restore_weight)
    # One all-reduce gives the mean loss for the log and stops every rank on a non-finite one.
    stat = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()])
    if run.di.active:
        dist.all_reduce(stat)
    if stat[1] > 0 or not torch.isfinite(stat[0]):
        where = ", ".join(run.views.describe(int(i)) for i in batch["index"])
        here = "" if torch.isfinite(loss) else f" on {where}"
        raise NonFiniteError(f"non-finite training loss ({float(loss.detach())}) at step {run.step + 1}{here}"
                             + ("" if here else " on another rank"))
    gnorm = backward_step(loss, run.opt, run.params, run.cfg.grad_clip)
    if not torch.isfinite(gnorm):
        where = ", ".join(run.views.describe(int(i)) for i in batch["index"])
        raise NonFiniteError(f"non-finite gradient norm at step {run.step + 1} on {where}")
    if run.teacher is not None and restore is None:
        ema_update(run.teacher.model, run.bb.model, run.cfg.ema_momentum)
    if run.average is not None and restore is None:
        run.average.update()
    return float(stat[0]) / run.di.world_size


def _wrap(run: _Run, module: nn.Module) -> nn.Module:
    """``module`` under DDP when the run is distributed."""
    if not run.di.active:
        return module
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[run.device.index] if run.device.type == "cuda" else None,
        find_unused_parameters=True)  # e.g. DINOv2's mask token never receives a gradient


def _start_restore(run: _Run) -> tuple:
    """The [CLS]-restore steps' references (held copy, original), taking the frozen copy of the model now unless
    a resumed checkpoint had it, and their learning rate."""
    if run.held is None:
        run.held = _frozen_copy(run, run.bb.model.state_dict())
    for group in run.opt.param_groups:
        group["lr"] = run.cfg.cls_restore_lr
    held = AnchorReference(run.held, run.bb, transformer_blocks)  # both reuse the model's frozen prefix
    return held, run.anchor_ref or run.original


def _loop(run: _Run, interrupt: Interrupt, module: nn.Module, loader: DataLoader, until: int, bar,
          restore: tuple | None = None) -> None:
    """Steps until ``until``, checkpointing every ``checkpoint_every`` and on SIGTERM / SIGINT."""
    cfg, where = run.cfg, f"fine-tune {run.out}"
    use_amp = cfg.amp and run.device.type == "cuda"
    while run.step < until:
        run.sampler.set_epoch(run.epoch)
        run.sampler.set_start(run.consumed)
        it = iter(loader)
        t_prev = time.perf_counter()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except RuntimeError:  # Ctrl-C reaches the render workers too; they exit and the loader raises
                if not interrupt.requested:
                    raise
                _checkpoint(run)
                interrupt.stop(f"{where}: step {run.step}", run.ckpt_path)
            t_data = time.perf_counter()
            run.losses.append(_train_step(run, module, batch, use_amp, restore))
            run.step += 1
            run.consumed += len(batch["index"])
            run.seen.extend(int(i) for i in batch["index"])
            t_now = time.perf_counter()
            run.step_times.append(t_now - t_prev)
            run.wait_times.append(t_data - t_prev)
            t_prev = t_now
            bar.update(1)
            if cfg.log_every and run.step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{np.mean(run.losses[-cfg.log_every:]):.4f}")
            if _stop_requested(run, interrupt):
                _checkpoint(run)
                interrupt.stop(f"{where}: step {run.step}", run.ckpt_path)
            if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and run.step < run.total:
                _checkpoint(run)
            if run.step >= until:
                break
        del it
        if run.consumed >= run.sampler.num_samples:
            run.epoch, run.consumed = run.epoch + 1, 0


def _train(run: _Run, interrupt: Interrupt) -> None:
    """The Stage 2 steps, then the [CLS]-restore steps (``cls_restore_steps``) on the same views, images only."""
    cfg = run.cfg
    bar = tqdm(total=run.total, initial=run.step, desc="fine-tune", unit="step",
               disable=not (run.di.is_main and cfg.progress), dynamic_ncols=True)
    if run.step < run.stage2_total:
        module = _wrap(run, PatchTokens(run.bb, with_cls=cfg.anchor_cls > 0))
        loader = _make_loader(run)
        _loop(run, interrupt, module, loader, run.stage2_total, bar)
        del loader, module  # stops the workers; drops DDP's hold on the process group
    if run.step < run.total:
        held, original = _start_restore(run)
        images = RenderedViews(run.scenes, run.bb.patch_size, which="train", resolution=cfg.resolution,
                               flip_prob=cfg.flip_prob, seed=cfg.seed, images_only=True)
        module = _wrap(run, PatchTokens(run.bb, with_cls=True))
        loader = _make_loader(run, images)
        bar.set_description("fine-tune ([CLS] restore)")
        _loop(run, interrupt, module, loader, run.total, bar, restore=(held, original))
        held.close()
        del loader, module
    bar.close()
    if run.anchor_ref is not None:
        run.anchor_ref.close()


def _median_warm(times: list) -> float | None:
    """Median step time without the first (warm-up) steps."""
    warm = times[2:] if len(times) > 4 else times
    return statistics.median(warm) if warm else None


def _write_outputs(run: _Run, train_s: float, in_sync: bool | None) -> dict:
    """model/ (save_pretrained; LoRA merged in), losses.json, held-out metrics and the manifest (rank 0)."""
    cfg, bb, out = run.cfg, run.bb, run.out
    if run.peft_model is not None:  # adapters folded into the weights: model/ is a plain transformers model
        bb.model = merge_lora(run.peft_model)
        run.peft_model = None
    if run.average is not None:  # the saved (and evaluated) weights are the run's average (fit3d.finetune.averaging)
        run.average.copy_to()
    original = run.original
    if original is not None:  # the outputs' forwards (cls_align, held-out eval) at the backbone's default, as the
        original.precision = None  # fine-tuned model's own
    if cfg.interpolate != 1.0:  # WiSE-FT: the saved (and evaluated) weights part of the way back to the original
        original = original if original is not None else _load_original(cfg, run.device)
        interpolate_weights(original.model, bb.model, cfg.interpolate)
    align = None
    if cfg.cls_align != "none":  # the output [CLS] mapped back to the original's (fit3d.finetune.cls_align)
        from fit3d.finetune.cls_align import align_backbone

        original = original if original is not None else _load_original(cfg, run.device)
        bb.eval()
        align = align_backbone(original, bb, run.scenes, bb.patch_size, cfg.resolution, cfg.batch_size * 8,
                               cfg.progress, kind=cfg.cls_align, max_views=cfg.cls_align_views)
    _save_pretrained_atomic(bb.model, out / MODEL_DIR, cls_map=bb.cls_map, cls_branch=bb.cls_branch)
    finetuned_fp = folder_fingerprint(out / MODEL_DIR)
    write_json(out / LOSSES_FILE, {"loss": run.losses})
    metrics: dict = {"loss": loss_summary(run.losses[:run.stage2_total])}
    if cfg.cls_restore_steps:
        metrics["cls_restore_loss"] = loss_summary(run.losses[run.stage2_total:])
    if align is not None:
        metrics["cls_align"] = align
    if cfg.evaluate:
        bb.eval()
        original = original if original is not None else _load_original(cfg, run.device)
        held = RenderedViews(run.scenes, bb.patch_size, which="heldout", resolution=cfg.resolution,
                             alpha_threshold=cfg.alpha_threshold, target_at=cfg.target_at,
                             flip_prob=0.0, seed=cfg.seed, target_pool=cfg.target_pool,
                             render_device=render_plan(None, cfg.render_on, run.device)[1])
        metrics["heldout"] = evaluate_against_targets(held, {"original": original, "finetuned": bb}, run.device,
                                                      cfg.batch_size, progress=cfg.progress)
    manifest = {
        "format": "fit3d-finetuned/1",
        "backbone": cfg.backbone,
        "family": getattr(bb, "family", None),
        "original_model_path": _original_model_path(bb, cfg.model_path),
        "model": run.settings.get("model"),  # the original's identity (fit3d.models.identity)
        "finetuned_fingerprint": finetuned_fp,
        "model_dir": MODEL_DIR,
        "patch_size": bb.patch_size,
        "embed_dim": bb.embed_dim,
        "config": to_dict(cfg),
        "settings": run.settings,
        "scenes": [str(Path(s.path).resolve()) for s in run.scenes],
        "num_train_views": len(run.views),
        "steps": run.step,
        "epochs_completed": run.epoch,
        "world_size": run.di.world_size,
        "ranks_in_sync": in_sync,
        "device": str(run.device),
        "frozen_tensors": run.n_frozen,
        "trainable_parameters": sum(p.numel() for p in run.params),
        "memory": run.mem.as_dict(),
        "metrics": metrics,
        "timing": {"total_s": train_s, "steps_timed": len(run.step_times[2:] if len(run.step_times) > 4
                                                             else run.step_times),
                   "median_step_s": _median_warm(run.step_times), "median_data_wait_s": _median_warm(run.wait_times)},
    }
    write_json(out / MANIFEST_FILE, manifest)
    run.ckpt_path.unlink(missing_ok=True)
    shutil.rmtree(out / SCENE_CACHE_DIR, ignore_errors=True)  # the columnar copies: made again if ever needed
    return manifest


def _finetune(scene_dirs, out: Path, cfg: FinetuneConfig, di: DistInfo, device, settings: dict,
              interrupt: Interrupt) -> dict:
    """Prepare, resume, train, then (rank 0) write the outputs; returns the manifest (+ the samples seen)."""
    t_start = time.perf_counter()
    run = _prepare(scene_dirs, out, cfg, di, device, settings)
    _resume(run)
    _train(run, interrupt)
    train_s = time.perf_counter() - t_start
    in_sync = None
    if di.active:
        in_sync = ranks_in_sync(run.bb.model, device)
        if not in_sync:
            log.warning("rank %d: weights differ across ranks after training", di.rank)
    if not di.is_main:
        return {"rank": di.rank, "steps": run.step, "seen": run.seen, "ranks_in_sync": in_sync}
    return {**_write_outputs(run, train_s, in_sync), "seen": run.seen}
