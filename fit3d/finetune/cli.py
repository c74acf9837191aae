"""``fit3d finetune --scenes DIR [DIR ...] --backbone dinov2_small --out OUT``: Stage 2.

Runs single-process, or under ``torchrun --nproc_per_node N -m fit3d finetune ...`` with
DistributedDataParallel. Rerunning the same command resumes from OUT/checkpoint.safetensors, or returns
the finished run when its settings are the same; with other settings it stops naming them (``--overwrite``
builds the new run beside OUT and swaps it in once complete).
"""

from __future__ import annotations

import argparse
import logging

from fit3d.device import dist_info
from fit3d.finetune.config import FinetuneConfig
from fit3d.finetune.recipes import add_recipe_arguments, config_from_args
from fit3d.finetune.trainer import finetune
from fit3d.guard import guard_output, model_inputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", nargs="+", required=True, metavar="DIR",
                        help="lifted scene folders (outputs of `fit3d lift`)")
    parser.add_argument("--out", required=True, help="output folder: model/ (save_pretrained) + fit3d.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run made with other settings (the old one is kept until the new "
                             "one is complete)")
    add_recipe_arguments(parser, FinetuneConfig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = config_from_args(FinetuneConfig, args)
    cfg.validate()
    guard_output(args.out, [*args.scenes, *model_inputs(cfg.model_path)], command="finetune")
    m = finetune(args.scenes, None, args.out, cfg, overwrite=args.overwrite)
    if dist_info().is_main:
        _print_summary(m, args.out)
    return 0


def _print_summary(m: dict, out) -> None:
    mem = m.get("memory", {})
    loss = m.get("metrics", {}).get("loss", {})
    print(f"fine-tuned {m['backbone']} for {m['steps']} steps on {m.get('num_train_views')} views "
          f"({m.get('world_size', 1)} process(es)) -> {out}")
    if mem:
        print(f"  scenes in CPU memory: {mem['num_gaussians']:,} Gaussians x {mem['bytes_per_gaussian']:.0f} B "
              f"= {mem['gaussian_bytes'] / 2**20:.1f} MiB")
    if loss.get("steps"):
        print(f"  loss: first {loss['first']:.4f} -> last {loss['last']:.4f} (min {loss['min']:.4f})")
    held = m.get("metrics", {}).get("heldout")
    if held and held.get("num_tokens"):
        o, f = held["original"], held["finetuned"]
        print(f"  held-out views ({held['num_views']}), distance to rendered 3D-aware features: "
              f"L1 original {o['l1']:.4f} / fine-tuned {f['l1']:.4f}; "
              f"cosine original {o['cosine_distance']:.4f} / fine-tuned {f['cosine_distance']:.4f}")
