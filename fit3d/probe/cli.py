"""``fit3d probe``: linear seg / depth probes and cross-view correspondence on frozen features.

    fit3d probe --task depth --data ../shared/data/7scenes-redkitchen --backbone dinov2_small \\
        --features original --out runs/probe-7scenes
    fit3d probe --task seg --data NYU --dataset nyuv2 --finetuned runs/ft --features original finetuned concat \\
        --seeds 0 1 2 --out runs/probe-nyu
    fit3d probe --task corr --protocol probe3d --data ../shared/data/sun3d-office --test-frames 0-999999

Several feature sources (and seeds) in one call are evaluated on the same data and printed side by
side; their heads train together in one batched pass. Trained heads are kept as
``<out>/heads/<source label>.pt`` (``fit3d.probe.heads.load_depth_head``, ``fit3d compare --depth-probe``).
Features are computed once per (source, image set, resolution) and cached under ``--cache-dir``
(default ``<out>/cache``); the heads train on the cache (no augmentation). The protocol itself (options,
defaults, splits) is ``fit3d.probe.protocol``; this module is the argparse glue.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fit3d.config import add_arguments as add_config_arguments, from_args
from fit3d.guard import check_not_input, guard_output, model_inputs
from fit3d.probe.config import ProbeConfig, probe_settings
from fit3d.probe.cls import run_cls_probe
from fit3d.probe.protocol import run_probe
from fit3d.run import check_rerun


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ProbeConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(ProbeConfig, args)
    cfg.validate()
    inputs = [cfg.data, cfg.eval_data, cfg.finetuned, *model_inputs(cfg.model_path)]
    guard_output(cfg.out, inputs, command="probe")
    check_rerun(Path(cfg.out) / "probe.json", probe_settings(cfg), "earlier probe", overwrite=cfg.overwrite,
                key="config")
    if cfg.cache_dir and cfg.cache_dir.lower() != "none":
        check_not_input(cfg.cache_dir, inputs, option="--cache-dir")
    argv = sys.argv[1:]
    command = "fit3d " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["probe"] else None
    (run_cls_probe if cfg.task == "cls" else run_probe)(cfg, command=command)
    return 0
