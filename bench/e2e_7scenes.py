"""End-to-end proof on real frames: does FiT3D improve a pretrained DINOv2 on 7-Scenes?

1. lift frames 0-398 of 7-Scenes RedKitchen (Stage 1, CPU-friendly settings),
2. fine-tune DINOv2-S on those views (Stage 2),
3. on frames 400-498 (never seen by Stage 1 or 2): depth probe trained on frames 0-398 (frames 320-398
   of them held back to pick each head's checkpoint by abs rel, as the protocol's best checkpoint) and
   cross-view correspondence, for original / finetuned / concat features,
4. print one table and write it to docs/results.md (with the command and settings).

    python bench/e2e_7scenes.py [--eval-data DIR] [--json PATH] [--out runs/e2e_7scenes]

``--eval-data``: any folder in the same layout (e.g. other held-out frames of the scene); all its
frames are evaluated unless ``--test-frames`` says otherwise. ``--json`` writes depth_rmse,
depth_abs_rel, depth_delta1, corr_recall (each {original, finetuned, concat}) and seconds per stage, plus
plain_probe: depth rmse / abs_rel / delta1 of the same features under the plain probe protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import torch

from fit3d.clock import Clock
from fit3d.guard import guard_output
from fit3d.io import write_json, write_text
from fit3d.paths import REPO_ROOT, shared_7scenes_dir, shared_model_dir
from fit3d.finetune.config import FinetuneConfig
from fit3d.lift.config import LiftConfig
from fit3d.pipeline import SECONDS_FILE, PipelineConfig, results_markdown, run_pipeline
from fit3d.probe.config import ProbeConfig
from fit3d.probe.protocol import run_probe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(shared_7scenes_dir()), help="7-Scenes-layout folder (lift + probe train)")
    ap.add_argument("--eval-data", default=None, help="folder of evaluation frames (default: --data, frames 400-498)")
    ap.add_argument("--test-frames", default=None, help="frame range evaluated (default 400-498, or all of --eval-data)")
    ap.add_argument("--model-path", default=str(shared_model_dir()), help="DINOv2-S weights folder")
    ap.add_argument("--out", default=str(REPO_ROOT / "runs" / "e2e_7scenes"))
    ap.add_argument("--json", default=None, help="write the headline numbers as JSON here")
    ap.add_argument("--results-md", default=str(REPO_ROOT / "docs" / "results.md"), help="'' to skip")
    ap.add_argument("--lift-iterations", type=int, default=2000,
                    help="Stage 1 iterations (2000: ~5 min here, features closer to the tokens than LiftConfig's 500)")
    ap.add_argument("--lift-width", type=int, default=None, help="default: LiftConfig's")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-lr", type=float, default=1e-5)
    ap.add_argument("--finetune-resolution", type=int, nargs=2, default=None,
                    help="Stage 2 W H (default: the probe resolution)")
    ap.add_argument("--probe-iterations", type=int, default=3000)
    ap.add_argument("--val-frames", default="320-398",
                    help="training frames kept to pick each depth head's checkpoint by abs rel ('' = none)")
    ap.add_argument("--probe-resolution", type=int, nargs=2, default=[224, 168])
    ap.add_argument("--plain-probe-iterations", type=int, default=1000,
                    help="also probe depth with the plain protocol (this many iterations on all of 0-398, last "
                         "checkpoint) to show how much the numbers depend on the probe protocol (0: skip)")
    ap.add_argument("--probe-seeds", type=int, nargs="+", default=[0],
                    help="seeds of the validation-picked probe heads (one batched pass; mean and std in results)")
    ap.add_argument("--plain-probe-seeds", type=int, nargs="+", default=[0],
                    help="seeds of the plain-protocol depth heads (all trained in one batched pass; mean and std)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    test_frames = a.test_frames or ("0-999999999" if a.eval_data else "400-498")
    # seed=None: each stage keeps its own default seed (lift 0, fine-tune 42, probe 0), as in the documented runs.
    cfg = PipelineConfig(out=a.out, backbone="dinov2_small", model_path=a.model_path, device="cpu", seed=None,
                         tasks=["depth", "corr"], probe_data=a.data, eval_data=a.eval_data,
                         lift=LiftConfig(method="optimize", max_frame=398, iterations=a.lift_iterations,
                                         **({"width": a.lift_width} if a.lift_width else {})),
                         finetune=FinetuneConfig(epochs=a.finetune_epochs, lr=a.finetune_lr,
                                                 resolution=a.finetune_resolution),
                         probe=ProbeConfig(iterations=a.probe_iterations, resolution=list(a.probe_resolution),
                                           train_frames="0-398", test_frames=test_frames,
                                           val_frames=a.val_frames or None, seeds=a.probe_seeds))
    guard_output(a.out, [a.data, a.eval_data, a.model_path], command="bench/e2e_7scenes.py")
    clock = Clock(record=Path(a.out) / SECONDS_FILE)  # as run_pipeline's own: reused stages keep their seconds
    res = run_pipeline([a.data], cfg, clock=clock)
    plain = None
    if a.plain_probe_iterations:
        clock.start("probe_depth_plain")
        out = Path(a.out)
        pc = dataclasses.replace(cfg.probe_config("depth", a.data, str(out / "finetuned"), out / "probe"),
                                 iterations=a.plain_probe_iterations, val_frames=None, seeds=a.plain_probe_seeds,
                                 out=str(out / "probe" / "depth_plain"))
        plain = run_probe(pc, verbose=False)["metrics"]
        clock.stop()
    res.update(clock.results(total=True))
    headline = {
        "depth_rmse": res.get("depth_rmse"), "depth_abs_rel": res.get("depth_abs_rel"),
        "depth_delta1": res.get("depth_delta1"), "corr_recall": res.get("corr_recall1"),
        "seconds": res["seconds"],
    }
    if plain:
        headline["plain_probe"] = {m: {s: plain[s][m] for s in ("original", "finetuned", "concat")}
                                   for m in ("rmse", "abs_rel", "delta1")}
        headline["plain_probe_std"] = {m: {s: plain[s].get("std", {}).get(m) for s in ("original", "finetuned", "concat")}
                                       for m in ("rmse", "abs_rel", "delta1")}  # over --plain-probe-seeds
    command = "python bench/e2e_7scenes.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    table = results_markdown(res)
    print(table)
    o, c = headline["depth_rmse"]["original"], headline["depth_rmse"]["concat"]
    print(f"concat vs original depth RMSE: {(o - c) / o * 100:+.1f}% (target: >= +5%)")
    r = headline["corr_recall"]
    print(f"correspondence recall@1: finetuned {r['finetuned']:.4f} vs original {r['original']:.4f}")
    plain_md = []
    if plain:
        pr = headline["plain_probe"]["rmse"]
        plain_md = ["", f"The same features under the plain probe protocol ({a.plain_probe_iterations} head iterations on "
                    "all of frames 0-398, last checkpoint): depth RMSE original "
                    f"{pr['original']:.4f}, finetuned {pr['finetuned']:.4f}, concat {pr['concat']:.4f} "
                    + (f"(mean over seeds {' '.join(map(str, a.plain_probe_seeds))}; std "
                       + ", ".join(f"{k} {v:.4f}" for k, v in headline["plain_probe_std"]["rmse"].items()) + ") "
                       if len(a.plain_probe_seeds) > 1 else "")
                    + f"({(pr['original'] - pr['concat']) / pr['original'] * 100:+.1f}% concat vs original, "
                    f"{(pr['original'] - pr['finetuned']) / pr['original'] * 100:+.1f}% finetuned vs original)."]
        print(plain_md[-1])
    if a.json:
        write_json(a.json, headline)
    if a.results_md:
        md = ["# FiT3D on real frames: 7-Scenes RedKitchen, DINOv2-S (shared weights)", "",
              "Stage 1 and 2 see frames 0-398 only (every 8th held out from lifting); the depth probe trains on "
              + (f"frames 0-398 except {a.val_frames}, on which it picks each head's checkpoint by abs rel; "
                 if a.val_frames else "frames 0-398; ")
              + "every number below is measured on frames 400-498, which no stage saw.", "",
              "```", command, "```", "", table, "",
              f"concat vs original depth RMSE: {(o - c) / o * 100:+.1f}% (target +5%); correspondence recall@1 "
              f"finetuned {r['finetuned']:.4f} vs original {r['original']:.4f}.", *plain_md, "",
              "Settings:", "", "```json", json.dumps(res["config"], indent=2), "```", "",
              "Stage 1 held-out metrics and Stage 2 metrics:", "", "```json",
              json.dumps({"lift": res["lift"], "finetune": res["finetune"]}, indent=2, default=str), "```", ""]
        write_text(a.results_md, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
