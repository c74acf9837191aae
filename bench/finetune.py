"""Stage 2 step cost: plain backbone training step vs the full fine-tuning step (render + decode + backbone).

    .venv/bin/python bench/finetune.py                 # shared DINOv2-S, batch 2, 7-Scenes, 224x168
    .venv/bin/python bench/finetune.py --target-at lift train   # also time FiT3D's full-size target render
    .venv/bin/python bench/finetune.py --lifted DIR    # any lifted scene (e.g. from `fit3d lift`)

Prints one table, median seconds per step of
  * plain   backbone forward + masked L1 + backward + clip + AdamW on a fixed batch (no data cost);
  * full    the trainer's own step (``forward_loss`` + ``backward_step``) on batches from the trainer's
            DataLoader: inline (0 workers) or rendered ahead by spawned workers; ratio to plain
            (target <= 1.25). Targets render at the scene's lift resolution (``--target-at lift``, the
            default of ``fit3d finetune``) or at the training resolution (``train``, as FiT3D).
The settings run in alternating blocks (plain, full..., plain, full...) so that load from other
processes on the shared cores hits them alike; the first steps of each block are not timed (a worker
block starts with batches prefetched during the previous block). Without --lifted, a scene is built
once by depth back-projection (features = the backbone's own, projected to 64 dims) at the default lift
resolution of ``fit3d lift`` (96x72, ~30k Gaussians like a real lift) and cached under runs/bench_finetune/.
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

from fit3d.finetune import FinetuneConfig  # noqa: E402
from fit3d.finetune.data import RenderedViews, load_scenes, make_worker_init, scene_memory  # noqa: E402
from fit3d.finetune.trainer import PatchTokens, backward_step, forward_loss  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lifted", help="use this lifted scene instead of building one")
    ap.add_argument("--model-path", default=str(shared_model_dir()))
    ap.add_argument("--resolution", type=int, nargs=2, default=[224, 168], help="W H of training (backbone input)")
    ap.add_argument("--lift-resolution", type=int, nargs=2, default=[96, 72],
                    help="W H the built scene is lifted at (fit3d lift's default)")
    ap.add_argument("--views", type=int, default=40, help="training views of the built scene")
    ap.add_argument("--stride", type=int, default=3, help="back-project one Gaussian per stride x stride px")
    ap.add_argument("--target-at", nargs="+", default=["lift"], choices=["lift", "train"],
                    help="target render resolutions to time (FinetuneConfig.target_at)")
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

    bb = load_backbone("dinov2_small", model_path=args.model_path)
    lifted = Path(args.lifted) if args.lifted else cached_scene(bb, args.model_path, tuple(args.lift_resolution),
                                                               args.views, args.stride)
    scenes = load_scenes([lifted], embed_dim=bb.embed_dim)
    mem = scene_memory(scenes)
    cfg = FinetuneConfig(batch_size=args.batch)

    loaders, render_sizes = {}, {}
    for t in args.target_at:
        views = RenderedViews(scenes, bb.patch_size, resolution=args.resolution, flip_prob=0.5, target_at=t)
        render_sizes[t] = views.render_size(0)
        for w in args.workers:
            dl = DataLoader(views, batch_size=args.batch, sampler=Endless(len(views)), num_workers=w,
                            worker_init_fn=make_worker_init(args.worker_threads) if w else None,
                            prefetch_factor=cfg.prefetch if w else None, persistent_workers=w > 0,
                            multiprocessing_context=cfg.worker_start if w else None)
            loaders[f"w{w}-{t}"] = iter(dl)
    W, H = views.sizes[0]
    fixed = next(loaders[next(iter(loaders))])

    bb.train()
    module = PatchTokens(bb)
    params = [p for p in bb.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dev = torch.device("cpu")
    settings = ["plain"] + list(loaders)
    times: dict[str, list[float]] = {s: [] for s in settings}
    waits: dict[str, list[float]] = {s: [] for s in settings}
    for name in loaders:  # warm up: worker start, numba compile, first backbone steps
        for _ in range(2):
            backward_step(forward_loss(module, next(loaders[name]), dev, False), opt, params, cfg.grad_clip)
    for r in range(args.rounds):
        for s in settings:
            skip = 1 if s == "plain" or s.startswith("w0-") else 1 + cfg.prefetch
            for k in range(args.block + skip):
                t = time.perf_counter()
                batch = fixed if s == "plain" else next(loaders[s])
                t_data = time.perf_counter()
                backward_step(forward_loss(module, batch, dev, False), opt, params, cfg.grad_clip)
                if k >= skip:
                    times[s].append(time.perf_counter() - t)
                    waits[s].append(t_data - t)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{s} {statistics.median(times[s]):.3f}s"
                                                          for s in settings), flush=True)
    del loaders

    plain = statistics.median(times["plain"])
    load = os.getloadavg()
    print(f"\nFiT3D Stage 2 step cost: DINOv2-S, batch {args.batch}, {W}x{H} -> {H // 14}x{W // 14} tokens, "
          f"{mem.num_gaussians:,} Gaussians ({mem.bytes_per_gaussian:.0f} B each) lifted at "
          f"{scenes[0].resolution[0]}x{scenes[0].resolution[1]}, main process {threads} "
          f"torch threads, workers {args.worker_threads} thread(s), {os.cpu_count()} cores, "
          f"load avg {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    print(f"| {'setting':<58} | {'median s/step':>13} | {'ratio':>5} | {'data wait':>9} | steps")
    print(f"|{'-' * 60}|{'-' * 15}|{'-' * 7}|{'-' * 11}|------")
    for s in settings:
        if s == "plain":
            label = "plain fwd+bwd+clip+AdamW (fixed batch)"
        else:
            w, t = s[1:].split("-")
            rw, rh = render_sizes[t]
            label = (f"full step, targets at {rw}x{rh} ({t}), "
                     + ("rendered inline" if w == "0" else f"{w} render worker(s)"))
        m = statistics.median(times[s])
        print(f"| {label:<58} | {m:>13.3f} | {m / plain:>5.2f} | {statistics.median(waits[s]):>8.3f}s | {len(times[s])}")
    return 0


if __name__ == "__main__":
    (REPO / "runs").mkdir(exist_ok=True)
    sys.exit(main())
