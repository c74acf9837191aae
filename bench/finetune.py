"""Stage 2 step cost: plain backbone training step vs the full fine-tuning step (render + decode + backbone).

    .venv/bin/python bench/finetune.py                 # shared DINOv2-S, batch 2, 7-Scenes, 224x168
    .venv/bin/python bench/finetune.py --lifted DIR    # any lifted scene (e.g. from `fit3d lift`)

Prints one table: median seconds per step of
  * plain   backbone forward + masked L1 + backward + clip + AdamW on a fixed batch (no data cost),
  * full    `fit3d.finetune.finetune` (DataLoader workers render + decode the next batch meanwhile),
            for each worker setting asked for, and its ratio to plain (target <= 1.25),
  * render  one item rendered + decoded in this process (what the workers must hide).
Without --lifted, a scene is built once by depth back-projection (no optimisation; features = the
backbone's own, projected to 64 dims) and cached under runs/bench_finetune/. Other processes share
the 2 cores, so timings are noisy: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fit3d.finetune import FinetuneConfig, finetune  # noqa: E402
from fit3d.finetune.data import RenderedViews, load_scenes, scene_memory  # noqa: E402
from fit3d.finetune.trainer import masked_l1  # noqa: E402
from fit3d.models import load_backbone  # noqa: E402
from fit3d.paths import shared_7scenes_dir, shared_model_dir  # noqa: E402


def cached_scene(bb, model_path: str, resolution, views: int, stride: int) -> Path:
    from fit3d.finetune.backprojected import backprojected_lift

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


def plain_steps(bb, batch: dict, steps: int, warmup: int, cfg: FinetuneConfig) -> list[float]:
    params = [p for p in bb.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    bb.train()
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = masked_l1(bb.tokens(batch["image"])[0], batch["target"], batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lifted", help="use this lifted scene instead of building one")
    ap.add_argument("--model-path", default=str(shared_model_dir()))
    ap.add_argument("--resolution", type=int, nargs=2, default=[224, 168], help="W H of the built scene")
    ap.add_argument("--views", type=int, default=40, help="training views of the built scene")
    ap.add_argument("--stride", type=int, default=6, help="back-project one Gaussian per stride x stride px")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="worker counts to time")
    ap.add_argument("--worker-threads", type=int, nargs="+", default=[1], help="torch threads per worker")
    ap.add_argument("--main-threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    args = ap.parse_args()
    if args.main_threads:
        torch.set_num_threads(args.main_threads)

    threads = torch.get_num_threads()
    bb = load_backbone("dinov2_small", model_path=args.model_path)
    lifted = Path(args.lifted) if args.lifted else cached_scene(bb, args.model_path, tuple(args.resolution),
                                                               args.views, args.stride)
    scenes = load_scenes([lifted], embed_dim=bb.embed_dim)
    mem = scene_memory(scenes)
    views = RenderedViews(scenes, bb.patch_size, flip_prob=0.5)
    W, H = views.sizes[0]
    need = (args.warmup + args.steps) * args.batch
    if len(views) < need:
        print(f"note: {len(views)} training views < {need}: the full runs wrap into a second epoch")

    # render + decode of one item in this process (2 threads), median of a few
    render_t = []
    for i in range(min(5, len(views))):
        t = time.perf_counter()
        views[i]
        render_t.append(time.perf_counter() - t)
    render_s = statistics.median(render_t[1:] if len(render_t) > 2 else render_t)

    items = [views[i] for i in range(args.batch)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "target", "mask")}
    cfg = FinetuneConfig(batch_size=args.batch)
    plain = statistics.median(plain_steps(bb, batch, args.steps, args.warmup, cfg))
    del bb

    rows = [("plain fwd+bwd+AdamW (fixed batch)", plain, 1.0, "")]
    for workers in args.workers:
        for wt in (args.worker_threads if workers else [threads]):
            with tempfile.TemporaryDirectory(dir=REPO / "runs") as tmp:
                c = FinetuneConfig(batch_size=args.batch, max_steps=args.warmup + args.steps, workers=workers,
                                   worker_threads=wt, evaluate=False, progress=False, checkpoint_every=0)
                m = finetune([lifted], "dinov2_small", Path(tmp) / "out", c, model_path=args.model_path)
            step = m["timing"]["median_step_s"]
            wait = m["timing"]["median_data_wait_s"]
            label = f"full step, {workers} worker(s)" + (f" x {wt} thread(s)" if workers else " (render inline)")
            rows.append((label, step, step / plain, f"waits {wait:.3f}s for data"))

    load = os.getloadavg()
    print(f"\nFiT3D Stage 2 step cost: DINOv2-S, batch {args.batch}, {W}x{H} -> {H // 14}x{W // 14} tokens, "
          f"{mem.num_gaussians:,} Gaussians ({mem.bytes_per_gaussian:.0f} B each), main process {threads} "
          f"torch threads, {os.cpu_count()} cores, load avg {load[0]:.1f}/{load[1]:.1f}")
    print(f"render+decode of one view in the main process: {render_s:.3f}s (median)")
    print(f"| {'setting':<42} | {'median s/step':>13} | {'ratio':>5} | note")
    print(f"|{'-' * 44}|{'-' * 15}|{'-' * 7}|------")
    for label, s, r, note in rows:
        print(f"| {label:<42} | {s:>13.3f} | {r:>5.2f} | {note}")
    return 0


if __name__ == "__main__":
    (REPO / "runs").mkdir(exist_ok=True)
    sys.exit(main())
