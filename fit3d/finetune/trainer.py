"""Stage 2 training loop: masked L1 between the backbone's patch tokens and rendered 3D-aware targets.

Single process (CPU or one GPU) or ``torchrun`` (DistributedDataParallel: gloo on CPU, nccl on CUDA,
views sharded by :class:`~fit3d.finetune.data.ResumableSampler`; rank 0 writes). Checkpoints every
``checkpoint_every`` steps hold model, optimiser, sampler position and RNG state, so rerunning the same
command after an interruption resumes at the same step with the same result.

Output folder::

    OUT/model/          save_pretrained of the fine-tuned transformers model (AutoModel-loadable)
    OUT/fit3d.json      manifest: backbone, original_model_path, config, steps, metrics, memory, timing
    OUT/losses.json     the per-step training loss
    OUT/checkpoint.pt   while running (removed once the manifest is written)
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fit3d.config import check_choices, to_dict
from fit3d.errors import Fit3DError, NonFiniteError
from fit3d.finetune.config import FinetuneConfig
from fit3d.finetune.data import (RenderedViews, ResumableSampler, load_scenes, make_worker_init,
                                 scene_memory)
from fit3d.io import read_json, torch_save, write_json

log = logging.getLogger(__name__)

MANIFEST_FILE = "fit3d.json"
MODEL_DIR = "model"
CHECKPOINT_FILE = "checkpoint.pt"
LOSSES_FILE = "losses.json"
# Config fields a resumed run must share with the run that wrote the checkpoint.
_RESUME_KEYS = ("lr", "weight_decay", "batch_size", "grad_clip", "epochs", "seed", "freeze_blocks",
                "resolution", "target_at", "alpha_threshold", "flip_prob")
_RESUME_KEYS += ("adapter", "lora_rank", "lora_alpha", "lora_targets", "anchor_weight", "anchor_at")  # recipe levers


# ----------------------------------------------------------------------------------------- helpers
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank / world size from the environment ``torchrun`` sets (1 process otherwise)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(cfg: FinetuneConfig, di: DistInfo) -> torch.device:
    if cfg.device:
        dev = torch.device(cfg.device)
        if dev.type == "cuda" and dev.index is None and di.active:
            dev = torch.device("cuda", di.local_rank)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", di.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer's list of blocks (the ``ModuleList`` with ``num_hidden_layers`` entries)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if n is not None:
        lists = [m for m in lists if len(m) == n] or lists
    if not lists:
        raise Fit3DError(f"{type(model).__name__}: no transformer block list found to freeze")
    return max(lists, key=len)


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
        raise Fit3DError(f"freeze_blocks={k} but the backbone has only {len(blocks)} blocks")
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


class PatchTokens(nn.Module):
    """``backbone.tokens(images)[0]`` as a module (what DDP wraps): [B, 3, H, W] -> [B, D, h, w]."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone.tokens(images)[0]


def masked_l1(tokens: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |tokens - target| over channels and the masked tokens. tokens/target [B, D, h, w], mask [B, h, w]."""
    diff = (tokens.float() - target.float()).abs().mean(1)  # [B, h, w]
    m = mask.to(diff.dtype)
    return (diff * m).sum() / m.sum().clamp_min(1.0)


def anchor_token_weights(mask: Tensor, alpha: Tensor | None, at: str) -> Tensor:
    """Per-token weight [B, h, w] of the anchor term: ``opacity`` 1 - alpha, ``everywhere`` 1, ``unmasked``
    1 where the 3D loss is masked out."""
    if at == "opacity":
        if alpha is None:
            raise Fit3DError("anchor_at=opacity needs the rendered opacity in the batch ('alpha')")
        return (1.0 - alpha.float()).clamp(0, 1)
    if at == "everywhere":
        return torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    if at == "unmasked":
        return (~mask.bool()).float()
    raise Fit3DError(f"anchor_at = {at!r}: expected opacity, everywhere or unmasked")


def anchor_l1(tokens: Tensor, reference: Tensor, weight: Tensor) -> Tensor:
    """sum(weight * mean_D |tokens - reference|) / number of tokens: [B, D, h, w] x2, weight [B, h, w]. Divided
    by all tokens, not by sum(weight), so the term fades where the 3D target is everywhere reliable."""
    diff = (tokens.float() - reference.float()).abs().mean(1)
    return (diff * weight).sum() / weight.numel()


def forward_loss(module: nn.Module, batch: dict, device: torch.device, use_amp: bool,
                 anchor: tuple | None = None) -> Tensor:
    """Masked L1 of one batch {"image" [B,3,H,W], "target" [B,D,h,w], "mask" [B,h,w], "alpha" [B,h,w]} (bf16
    autocast if use_amp), plus ``weight * anchor_l1`` to the frozen original's tokens when ``anchor`` =
    (original Backbone, weight, anchor_at) is given."""
    images = batch["image"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        tokens = module(images)
    loss = masked_l1(tokens, target, mask)
    if anchor is not None and anchor[1] > 0:
        original, weight, at = anchor
        alpha = batch.get("alpha")
        w = anchor_token_weights(mask, None if alpha is None else alpha.to(device, non_blocking=True), at)
        reference = original.features(images)[0]  # [B, D, h, w], no grad
        loss = loss + weight * anchor_l1(tokens, reference, w)
    return loss


def build_trainable(bb, cfg: FinetuneConfig) -> tuple[list, int, object]:
    """Apply the recipe's model levers to backbone ``bb``: LoRA adapters (cfg.adapter) and frozen blocks.

    Returns (trainable parameters, number of frozen tensors, the PeftModel or None)."""
    peft_model = None
    if cfg.adapter == "lora":
        from fit3d.finetune.adapters import add_lora

        peft_model = add_lora(bb.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed)
    n_frozen = freeze_first_blocks(bb.model, cfg.freeze_blocks)
    params = [p for p in bb.parameters() if p.requires_grad]
    if not params:
        raise Fit3DError(f"nothing to train: freeze_blocks={cfg.freeze_blocks} / adapter={cfg.adapter} leave "
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


def _save_pretrained_atomic(model, dest: Path) -> None:
    """save_pretrained into a temporary sibling folder, then swap it in (a crash never leaves half a model)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(str(tmp))
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


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
    from tqdm import tqdm

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
def finetune(scene_dirs, backbone: str, out, cfg: FinetuneConfig | None = None, model_path=None) -> dict:
    """Fine-tune ``backbone`` on the rendered features of the lifted ``scene_dirs``; returns the manifest.

    Resumes from ``out/checkpoint.pt`` when present; returns the existing manifest when ``out`` already
    holds a finished run with the same number of steps.
    """
    from tqdm import tqdm

    from fit3d.models import load_backbone

    cfg = cfg or FinetuneConfig()
    check_choices(cfg)
    out = Path(out)
    di = dist_info()
    device = pick_device(cfg, di)
    if di.active and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(hours=2))
    try:
        result = _finetune(scene_dirs, backbone, out, cfg, model_path, di, device, load_backbone, tqdm)
        if di.active:
            # Every rank leaves together, once rank 0 has written the outputs: a rank that tears its
            # group down while a peer still works on it can abort (SIGABRT) at interpreter exit.
            dist.barrier()
        return result
    finally:
        if di.active and dist.is_initialized():
            gc.collect()  # frees the DDP reducer (cycles) while the process group is still alive
            dist.destroy_process_group()


def _finetune(scene_dirs, backbone_name, out: Path, cfg, model_path, di, device, load_backbone, tqdm) -> dict:
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    bb = load_backbone(backbone_name, model_path=model_path, device=str(device))
    bb.train()
    scenes = load_scenes(scene_dirs, embed_dim=bb.embed_dim, backbone=backbone_name)
    mem = scene_memory(scenes)
    if di.is_main:
        log.info("%s", mem)
    views = RenderedViews(scenes, bb.patch_size, which="train", resolution=cfg.resolution,
                          alpha_threshold=cfg.alpha_threshold, target_at=cfg.target_at,
                          flip_prob=cfg.flip_prob, seed=cfg.seed)
    if len(views) == 0:
        raise Fit3DError(f"the lifted scenes {[str(s.path) for s in scenes]} list no training views")
    sampler = ResumableSampler(views, num_replicas=di.world_size, rank=di.rank, shuffle=True, seed=cfg.seed)
    steps_per_epoch = math.ceil(sampler.num_samples / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else int(cfg.max_steps)

    manifest_path = out / MANIFEST_FILE
    if manifest_path.exists() and (out / MODEL_DIR).exists():
        done = read_json(manifest_path)
        if done.get("steps") == total and done.get("world_size", 1) == di.world_size:
            if di.is_main:
                log.info("%s: already fine-tuned (%d steps); nothing to do", out, total)
            return done

    params, n_frozen, peft_model = build_trainable(bb, cfg)
    n_trainable = sum(p.numel() for p in params)
    original = None  # the frozen original: the anchor's reference, and the held-out evaluation's baseline
    if cfg.anchor_weight > 0:
        original = load_backbone(backbone_name, model_path=model_path, device=str(device)).eval()
        original.requires_grad_(False)
    anchor = (original, cfg.anchor_weight, cfg.anchor_at) if original is not None else None
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ---- resume
    step, epoch, consumed, losses = 0, 0, 0, []
    ckpt_path = out / CHECKPOINT_FILE
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        diff = [k for k in _RESUME_KEYS if ck["config"].get(k) != to_dict(cfg).get(k)]
        if diff:
            raise Fit3DError(f"{ckpt_path}: written with different settings ({', '.join(diff)}); "
                             f"use another --out or delete the checkpoint to start over")
        if ck["world_size"] != di.world_size or ck["backbone"] != backbone_name:
            raise Fit3DError(f"{ckpt_path}: written by a run of {ck['backbone']!r} on {ck['world_size']} "
                             f"process(es), this is {backbone_name!r} on {di.world_size}")
        bb.model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, epoch, consumed, losses = ck["step"], ck["epoch"], ck["consumed"], list(ck["losses"])
        _set_rng_state(ck["rng"])
        if di.is_main:
            log.info("resuming %s at step %d (epoch %d, %d samples in)", ckpt_path, step, epoch, consumed)

    module: nn.Module = PatchTokens(bb)
    if di.active:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)  # e.g. DINOv2's mask token never receives a gradient
    use_amp = cfg.amp and device.type == "cuda"

    def save_checkpoint():
        if di.is_main:
            torch_save({"step": step, "epoch": epoch, "consumed": consumed, "losses": losses,
                        "model": bb.model.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(),
                        "config": to_dict(cfg), "world_size": di.world_size, "backbone": backbone_name},
                       ckpt_path)
        if di.active:
            dist.barrier()

    bar = tqdm(total=total, initial=step, desc="fine-tune", unit="step",
               disable=not (di.is_main and cfg.progress), dynamic_ncols=True)
    step_times, wait_times = [], []
    seen: list[int] = []
    # One loader for the whole run: its workers persist across epochs (a spawned worker pays its imports
    # and the renderer's start-up once); the sampler, read in this process, sets epoch and position.
    loader = DataLoader(views, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        worker_init_fn=make_worker_init(cfg.worker_threads) if cfg.workers else None,
                        prefetch_factor=cfg.prefetch if cfg.workers else None,
                        persistent_workers=cfg.workers > 0,
                        multiprocessing_context=cfg.worker_start if cfg.workers else None,
                        pin_memory=device.type == "cuda", drop_last=False)
    while step < total:
        sampler.set_epoch(epoch)
        sampler.set_start(consumed)
        it = iter(loader)
        t_prev = time.perf_counter()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            t_data = time.perf_counter()
            loss = forward_loss(module, batch, device, use_amp, anchor)
            # One all-reduce gives the mean loss for the log and stops every rank on a non-finite one.
            stat = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()])
            if di.active:
                dist.all_reduce(stat)
            if stat[1] > 0 or not torch.isfinite(stat[0]):
                where = ", ".join(views.describe(int(i)) for i in batch["index"])
                here = "" if torch.isfinite(loss) else f" on {where}"
                raise NonFiniteError(f"non-finite training loss ({float(loss.detach())}) at step {step + 1}{here}"
                                     + ("" if here else " on another rank"))
            gnorm = backward_step(loss, opt, params, cfg.grad_clip)
            if not torch.isfinite(gnorm):
                where = ", ".join(views.describe(int(i)) for i in batch["index"])
                raise NonFiniteError(f"non-finite gradient norm at step {step + 1} on {where}")
            step += 1
            consumed += len(batch["index"])
            seen.extend(int(i) for i in batch["index"])
            losses.append(float(stat[0]) / di.world_size)
            t_now = time.perf_counter()
            step_times.append(t_now - t_prev)
            wait_times.append(t_data - t_prev)
            t_prev = t_now
            bar.update(1)
            if cfg.log_every and step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.4f}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                save_checkpoint()
            if step >= total:
                break
        del it
        if consumed >= sampler.num_samples:
            epoch, consumed = epoch + 1, 0
    bar.close()
    del loader  # stops the workers
    del module  # drop DDP (and its hold on the process group) before the group is destroyed
    train_s = time.perf_counter() - t_start
    in_sync = None
    if di.active:
        in_sync = ranks_in_sync(bb.model, device)
        if not in_sync:
            log.warning("rank %d: weights differ across ranks after training", di.rank)
    if not di.is_main:
        return {"rank": di.rank, "steps": step, "seen": seen, "ranks_in_sync": in_sync}

    # ---- outputs (rank 0)
    if peft_model is not None:  # adapters folded into the weights: model/ is a plain transformers model
        from fit3d.finetune.adapters import merge_lora

        bb.model = merge_lora(peft_model)
        del peft_model
    _save_pretrained_atomic(bb.model, out / MODEL_DIR)
    write_json(out / LOSSES_FILE, {"loss": losses})
    metrics: dict = {"loss": loss_summary(losses)}
    if cfg.evaluate:
        bb.eval()
        if original is None:
            original = load_backbone(backbone_name, model_path=model_path, device=str(device)).eval()
        held = RenderedViews(scenes, bb.patch_size, which="heldout", resolution=cfg.resolution,
                             alpha_threshold=cfg.alpha_threshold, target_at=cfg.target_at,
                             flip_prob=0.0, seed=cfg.seed)
        metrics["heldout"] = evaluate_against_targets(held, {"original": original, "finetuned": bb}, device,
                                                      cfg.batch_size, progress=cfg.progress)
        del original
    warm = step_times[2:] if len(step_times) > 4 else step_times
    manifest = {
        "format": "fit3d-finetuned/1",
        "backbone": backbone_name,
        "family": getattr(bb, "family", None),
        "original_model_path": _original_model_path(bb, model_path),
        "model_dir": MODEL_DIR,
        "patch_size": bb.patch_size,
        "embed_dim": bb.embed_dim,
        "config": to_dict(cfg),
        "scenes": [str(Path(s.path).resolve()) for s in scenes],
        "num_train_views": len(views),
        "steps": step,
        "epochs_completed": epoch,
        "world_size": di.world_size,
        "ranks_in_sync": in_sync,
        "device": str(device),
        "frozen_tensors": n_frozen,
        "trainable_parameters": n_trainable,
        "memory": mem.as_dict(),
        "metrics": metrics,
        "timing": {"total_s": train_s, "steps_timed": len(warm),
                   "median_step_s": statistics.median(warm) if warm else None,
                   "median_data_wait_s": statistics.median(wait_times[2:] if len(wait_times) > 4 else wait_times)
                   if wait_times else None},
    }
    write_json(out / MANIFEST_FILE, manifest)
    if ckpt_path.exists():
        ckpt_path.unlink()
    return {**manifest, "seen": seen}
