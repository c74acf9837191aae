"""Backbone feature extraction on the CPU: which batch size, thread count, attention kernel, memory
format and dtype give the most images per CPU second, within tolerance of the float32 tokens?

    .venv/bin/python bench/extract_speed.py [--sizes 224x168 448x336] [--images 32]

DINOv2-S (the shared weights), ``Backbone.features`` under ``torch.inference_mode`` on random images.
Per setting: wall and CPU seconds per image (CPU: user + system of this process over all threads, what
other jobs on shared cores do not change) and the largest token difference to the float32 reference
(batch 8, sdpa, all threads). Settings: batch 1 / 4 / 8 / 16 / 32 (at the default threads), threads
1 / all, attention ``sdpa`` (transformers' default) / ``eager``, channels-last input, bf16 autocast; with
``--model-dir DIR`` also that model folder at batch 8 (e.g. a fine-tuned model with the original's [CLS] branch,
``fit3d.models.cls_branch``: its cost against the plain model; its token difference is the fine-tuning's, not rounding).
Each setting runs ``--repeats`` times in alternation with the reference; the median is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

from fit3d.clock import cpu_seconds, machine
from fit3d.models import load_backbone
from fit3d.paths import shared_model_dir


def run(bb, images: torch.Tensor, batch: int, channels_last: bool = False, bf16: bool = False) -> tuple[float, float, torch.Tensor]:
    """(wall s, CPU s, patch tokens) of ``bb.features`` over ``images`` in batches of ``batch``."""
    x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t, c = time.perf_counter(), cpu_seconds()
    with ctx:
        p = bb.features(x, batch_size=batch).patch
    return time.perf_counter() - t, cpu_seconds() - c, p.float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["224x168", "448x336"], help="W x H of the inputs")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-dir", default=None, help="also time this model folder (hub layout) at batch 8")
    args = ap.parse_args(argv)
    all_threads = torch.get_num_threads()
    path = str(shared_model_dir())
    sdpa = load_backbone("dinov2_small", model_path=path)
    eager = load_backbone("dinov2_small", model_path=path)
    eager.model.config._attn_implementation = "eager"
    for m in eager.model.modules():
        if hasattr(m, "config") and hasattr(m.config, "_attn_implementation"):
            m.config._attn_implementation = "eager"
    other = load_backbone("dinov2_small", model_path=args.model_dir) if args.model_dir else None
    branch = " (+ [CLS] branch)" if other is not None and other.cls_branch is not None else ""
    rows = []
    for size in args.sizes:
        W, H = (int(v) for v in size.split("x"))
        images = torch.rand(args.images, 3, H, W, generator=torch.Generator().manual_seed(0))
        settings = {f"batch {b}": dict(batch=b) for b in (1, 4, 8, 16, 32)}
        settings.update({"batch 8, 1 thread": dict(batch=8, threads=1), "batch 8, eager attention": dict(batch=8, bb=eager),
                         "batch 8, channels-last": dict(batch=8, channels_last=True),
                         "batch 8, bf16 autocast": dict(batch=8, bf16=True)})
        if other is not None:
            settings[f"batch 8, --model-dir{branch}"] = dict(batch=8, bb=other)
        run(sdpa, images[:8], 8)  # warm-up
        ref = run(sdpa, images, 8)[2]
        res = {k: [] for k in settings}
        for _ in range(args.repeats):
            for name, s in settings.items():
                torch.set_num_threads(s.get("threads", all_threads))
                wall, cpu, p = run(s.get("bb", sdpa), images, s["batch"], s.get("channels_last", False), s.get("bf16", False))
                torch.set_num_threads(all_threads)
                res[name].append((wall, cpu, float((p - ref).abs().max() / ref.abs().max())))
        for name, r in res.items():
            rows.append((size, name, statistics.median(x[0] for x in r) / args.images,
                         statistics.median(x[1] for x in r) / args.images, max(x[2] for x in r)))
        print(f"{size} done", flush=True)
    m = machine()
    print(f"\nDINOv2-S features on the CPU, {args.images} random images per run, median of {args.repeats}; "
          f"{all_threads} torch threads by default, {m['cpus']} cores, load {m['load']}")
    print("| input | setting | wall s / image | CPU s / image | CPU vs batch 8 | max token diff / max token |")
    print("|---|---|---|---|---|---|")
    for size, name, wall, cpu, diff in rows:
        base = next(r[3] for r in rows if r[0] == size and r[1] == "batch 8")
        print(f"| {size} | {name} | {wall:.4f} | {cpu:.4f} | {cpu / base:.2f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
