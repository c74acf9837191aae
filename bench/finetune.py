"""Stage 2 step cost: a plain backbone training step vs the full fine-tuning step of a recipe.

    .venv/bin/python bench/finetune.py                 # shared DINOv2-S, recipe default, batch 2, 7-Scenes, 224x168
    .venv/bin/python bench/finetune.py --recipe fit3d  # FiT3D's recipe (whole backbone, no anchor)
    .venv/bin/python bench/finetune.py --target-at lift train   # also time FiT3D's full-size target render
    .venv/bin/python bench/finetune.py --lifted DIR    # any lifted scene (e.g. from `fit3d lift`)

Prints one table, median seconds per step (wall) and CPU seconds per step (this process and its render
workers, over all threads: what other jobs on the shared cores do not change), of
  * plain   the recipe's trainable parameters (e.g. its frozen blocks): backbone forward + masked L1 +
            backward + clip + AdamW on a fixed batch (no data, no anchor);
  * full    the trainer's own step (``forward_loss`` with the recipe's anchor + ``backward_step``) on batches
            from a DataLoader as the trainer builds it: rendered inline (0 workers) or ahead by spawned
            workers; the anchor's reference from the original's full forward (``anchor full``) or through the
            frozen prefix (``anchor prefix``, ``fit3d.finetune.anchor``, what the trainer runs), in float32 or in
            bf16 autocast (``--reference-precision``: ``fit3d finetune --precision``, whose default ``auto`` is
            bf16 on a CPU with bf16 hardware); ratio to plain.
            Targets render at the scene's lift resolution (``--target-at lift``, the default of ``fit3d
            finetune``) or at the training resolution (``train``, as FiT3D), with the spread channel when the
            recipe anchors at ``spread``.
The row marked ``(default)`` is what ``fit3d finetune --recipe R`` runs on this machine (workers chosen from
the cores, ``fit3d.finetune.data.render_workers``). The settings run in alternating blocks (plain,
full..., plain, full...) so that load from other processes on the shared cores hits them alike; the first
steps of each block are not timed (a worker block starts with batches prefetched during the previous
block). Without --lifted, a scene is built once by depth back-projection (features = the backbone's own,
projected to 64 dims) at the default lift resolution of ``fit3d lift`` (96x72, ~30k Gaussians like a real
lift) and cached under runs/bench_finetune/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fit3d.finetune.data import RenderedViews, load_scenes, make_worker_init, scene_memory  # noqa: E402
from fit3d.finetune.residual import decoder_subspace  # noqa: E402
from fit3d.finetune.trainer import LossTerms, PatchTokens, backward_step, forward_loss  # noqa: E402
from fit3d.models import load_backbone  # noqa: E402
from fit3d.paths import shared_7scenes_dir, shared_model_dir  # noqa: E402


def cached_scene(bb, model_path: str, resolution, views: int, stride: int) -> Path:
    """A back-projected lifted scene of 7-Scenes at ``resolution`` (W, H), built once."""
    from fit3d.lift.backprojected import backprojected_lift

    key = {"resolution": list(resolution), "views": views, "stride": stride, "model": model_path, "v": 1}
    out = REPO / "runs" / "bench_finetune" / f"redkitchen_{resolution[0]}x{resolution[1]}_v{views}_s{stride}"
    stamp = out / "bench_key.json"
    if stamp.exists() and json.loads(stamp.read_text()) == key:
        return out
    train = [f"frame-{i:06d}" for i in range(0, 4 * views, 4)]  # frames 0-398: the fine-tune range
    held = [f"frame-{i:06d}" for i in range(2, 4 * views, 16)]
    t = time.perf_counter()
    backprojected_lift(shared_7scenes_dir(), bb, out, train_views=train, heldout_views=held,
                       resolution=resolution, stride=stride, footprint=1.5, model_path=model_path)
    stamp.write_text(json.dumps(key))
    print(f"built {out} in {time.perf_counter() - t:.1f}s", flush=True)
    return out


class Endless(Sampler):
    """(index, epoch) keys forever, each epoch in a fixed shuffled order."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        epoch = 0
        while True:
            g = torch.Generator().manual_seed(epoch)
            for i in torch.randperm(self.n, generator=g).tolist():
                yield (i, epoch)
            epoch += 1


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live children (render workers), from /proc."""
    me = os.getpid()
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(d) == me or int(fields[1]) == me:  # fields[1]: the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> int:
    from fit3d.finetune.anchor import AnchorReference
    from fit3d.finetune.data import render_workers
    from fit3d.device import adamw, cpu_has_fast_bf16, resolve_precision
    from fit3d.finetune.recipes import DEFAULT_RECIPE, RECIPES, from_recipe
    from fit3d.finetune.trainer import build_trainable, transformer_blocks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lifted", help="use this lifted scene instead of building one")
    ap.add_argument("--model-path", default=str(shared_model_dir()))
    ap.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES), help="Stage 2 preset timed")
    ap.add_argument("--resolution", type=int, nargs=2, default=[224, 168], help="W H of training (backbone input)")
    ap.add_argument("--lift-resolution", type=int, nargs=2, default=[96, 72],
                    help="W H the built scene is lifted at (fit3d lift's default)")
    ap.add_argument("--views", type=int, default=40, help="training views of the built scene")
    ap.add_argument("--stride", type=int, default=3, help="back-project one Gaussian per stride x stride px")
    ap.add_argument("--target-at", nargs="+", default=["lift"], choices=["lift", "train"],
                    help="target render resolutions to time (FinetuneConfig.target_at)")
    ap.add_argument("--anchor", nargs="+", default=["prefix", "full"], choices=["prefix", "full"],
                    help="anchor reference paths to time (recipes with an anchor)")
    ap.add_argument("--reference-precision", nargs="+", choices=["fp32", "bf16"], default=None,
                    help="precisions of the original's reference forward to time (default: fp32, and bf16 where "
                         "the CPU has bf16 hardware)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds over the settings")
    ap.add_argument("--block", type=int, default=5, help="steps per setting per round")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="worker counts to time")
    ap.add_argument("--worker-threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--main-threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    args = ap.parse_args()
    if args.main_threads:
        torch.set_num_threads(args.main_threads)
    threads = torch.get_num_threads()

    cfg = from_recipe(args.recipe, batch_size=args.batch)
    bb = load_backbone("dinov2_small", model_path=args.model_path)
    lifted = Path(args.lifted) if args.lifted else cached_scene(bb, args.model_path, tuple(args.lift_resolution),
                                                               args.views, args.stride)
    scenes = load_scenes([lifted], embed_dim=bb.embed_dim)
    mem = scene_memory(scenes)
    spread = cfg.anchor_weight > 0 and cfg.anchor_at == "spread"
    default_workers = render_workers(cfg.workers)

    loaders, render_sizes = {}, {}
    for t in args.target_at:
        views = RenderedViews(scenes, bb.patch_size, resolution=args.resolution, flip_prob=0.5, target_at=t,
                              with_spread=spread)
        render_sizes[t] = views.render_size(0)
        for w in sorted(set(args.workers) | {default_workers}):
            dl = DataLoader(views, batch_size=args.batch, sampler=Endless(len(views)), num_workers=w,
                            worker_init_fn=make_worker_init(args.worker_threads) if w else None,
                            prefetch_factor=cfg.prefetch if w else None, persistent_workers=w > 0,
                            multiprocessing_context=cfg.worker_start if w else None)
            loaders[f"w{w}-{t}"] = iter(dl)
    W, H = views.sizes[0]
    fixed = next(loaders[next(iter(loaders))])

    bb.train()
    module = PatchTokens(bb)
    params, n_frozen, _ = build_trainable(bb, cfg)
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dev = torch.device("cpu")
    anchors = {"none": None}
    subspaces = [decoder_subspace(s.decoder, cfg.subspace_rank or None) for s in scenes] \
        if cfg.target_mode != "rendered" else None
    precisions = args.reference_precision or (["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"])
    if cfg.anchor_weight > 0 or subspaces is not None:  # the original's tokens: the anchor's / residual's reference
        for p in precisions:
            original = load_backbone("dinov2_small", model_path=args.model_path).eval().requires_grad_(False)
            original.precision = p
            for a in args.anchor:
                ref = original if a == "full" else AnchorReference(original, bb, transformer_blocks)
                anchors[a if p == "fp32" else f"{a} {p}"] = LossTerms(ref, subspaces, cfg.target_mode,
                                                                     cfg.anchor_weight, cfg.anchor_at, cfg.anchor_spread)
        prefixed = [k for k in anchors if k.startswith("prefix")]
        if prefixed and not anchors[prefixed[0]].original.shortcut:
            print(f"recipe {args.recipe}: no frozen prefix to reuse; 'anchor prefix' is the full forward")
    run_p = resolve_precision(cfg.precision, "cpu")  # what `fit3d finetune` runs here
    suffix = "" if run_p == "fp32" else f" {run_p}"
    default_anchor = next((k for k in ("prefix" + suffix, "full" + suffix) if k in anchors), "none")
    settings = [("plain", None, "none")] + [(k, k, a) for k in loaders for a in anchors if a != "none"
                                             or len(anchors) == 1]
    times: dict[tuple, list[float]] = {s: [] for s in settings}
    cpus: dict[tuple, list[float]] = {s: [] for s in settings}
    waits: dict[tuple, list[float]] = {s: [] for s in settings}
    for s in settings[1:]:  # warm up: worker start, numba compile, first backbone steps, the anchor's check
        for _ in range(2):
            backward_step(forward_loss(module, next(loaders[s[1]]), dev, False, anchors[s[2]]), opt, params,
                          cfg.grad_clip)
    for r in range(args.rounds):
        for s in settings:
            name, key, a = s
            skip = 1 if key is None or key.startswith("w0-") else 1 + cfg.prefetch
            for k in range(args.block + skip):
                t, c = time.perf_counter(), tree_cpu_seconds()
                batch = fixed if key is None else next(loaders[key])
                t_data = time.perf_counter()
                backward_step(forward_loss(module, batch, dev, False, anchors[a]), opt, params, cfg.grad_clip)
                if k >= skip:
                    times[s].append(time.perf_counter() - t)
                    cpus[s].append(tree_cpu_seconds() - c)
                    waits[s].append(t_data - t)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{s[0]}/{s[2]} {statistics.median(times[s]):.3f}s"
                                                          for s in settings), flush=True)
    del loaders

    plain, plain_cpu = statistics.median(times[settings[0]]), statistics.mean(cpus[settings[0]])
    load = os.getloadavg()
    print(f"\nFiT3D Stage 2 step cost, recipe {args.recipe} ({n_frozen} frozen tensors, "
          f"{sum(p.numel() for p in params) / 1e6:.1f}M trained parameters, target {cfg.target_mode}, anchor {cfg.anchor_weight} at "
          f"{cfg.anchor_at}): DINOv2-S, batch {args.batch}, {W}x{H} -> {H // 14}x{W // 14} tokens, "
          f"{mem.num_gaussians:,} Gaussians ({mem.bytes_per_gaussian:.0f} B each) lifted at "
          f"{scenes[0].resolution[0]}x{scenes[0].resolution[1]}, main process {threads} torch threads, workers "
          f"{args.worker_threads} thread(s), {os.cpu_count()} cores, load avg {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    print(f"| {'setting':<72} | {'median s/step':>13} | {'ratio':>5} | {'CPU s/step':>10} | {'CPU ratio':>9} | "
          f"{'data wait':>9} | steps")
    print(f"|{'-' * 74}|{'-' * 15}|{'-' * 7}|{'-' * 12}|{'-' * 11}|{'-' * 11}|------")
    for s in settings:
        name, key, a = s
        if key is None:
            label = "plain fwd+bwd+clip+AdamW (fixed batch)"
        else:
            w, t = key[1:].split("-")
            rw, rh = render_sizes[t]
            label = (f"full, targets at {rw}x{rh} ({t}), "
                     + ("inline" if w == "0" else f"{w} render worker(s)")
                     + ("" if a == "none" else f", anchor {a}")
                     + (" (default)" if int(w) == default_workers and t == cfg.target_at and a == default_anchor
                        else ""))
        m, c = statistics.median(times[s]), statistics.mean(cpus[s])
        print(f"| {label:<72} | {m:>13.3f} | {m / plain:>5.2f} | {c:>10.3f} | {c / plain_cpu:>9.2f} | "
              f"{statistics.median(waits[s]):>8.3f}s | {len(times[s])}")
    return 0


if __name__ == "__main__":
    (REPO / "runs").mkdir(exist_ok=True)
    sys.exit(main())
