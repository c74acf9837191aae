"""Benchmark Stage 1 on real data: lift 7-Scenes RedKitchen (frames 0-398, every 8th view held out) with the
shared DINOv2-S weights on CPU with one or more methods, and print one table (a column per method).

    .venv/bin/python bench/lift_7scenes.py [--method solve optimize] [--scene DIR] [--iterations N]
        [--width W] [--threads 2] [--out DIR] [--set FIELD=VALUE ...]

Targets: issue 4 (optimize): the whole lift, backbone features included, <= 15 min on 2 CPU cores, with the
rendered features beating both baselines (scene-mean feature, nearest training view) on the held-out views;
issue 12 (solve): lifting (features excluded) <= 60 s, cosine above the nearest view (docs/lift-solve.md).
Methods after the first read its targets from the run's token cache, ``<out>/cache`` (their features time is
the cache read).
Also writes the held-out PCA picture to docs/lift-pca-redkitchen.png (--pca-out).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fit3d.paths import shared_7scenes_dir, shared_model_dir  # noqa: E402
from fit3d.config import set_fields  # noqa: E402
from fit3d.guard import clear_output, guard_output  # noqa: E402
from fit3d.lift import LiftConfig, lift_scene  # noqa: E402
from fit3d.lift.methods import METHODS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", nargs="+", default=[LiftConfig.method], choices=tuple(METHODS),
                    help="one or more Stage 1 methods, lifted one after the other on the same scene and cache")
    ap.add_argument("--scene", default=None, help="another scene folder (default: the shared 7-Scenes RedKitchen)")
    ap.add_argument("--max-frame", type=int, default=None,
                    help="last frame number lifted (default: 398 for RedKitchen, all frames for --scene)")
    ap.add_argument("--iterations", type=int, default=LiftConfig.iterations, help="optimize's iterations")
    ap.add_argument("--width", type=int, default=LiftConfig.width)
    ap.add_argument("--feature-size", type=int, default=LiftConfig.feature_size)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/fit3d-bench-lift/redkitchen")
    ap.add_argument("--resume", action="store_true", help="keep an existing output folder (resume / reuse cache)")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="other LiftConfig fields, e.g. --set feature_loss_at=render solve.cg_tol=0.02 (nested "
                         "fields dotted; the old flat spelling solve_cg_tol=0.02 still works)")
    ap.add_argument("--pca-out", default=None,
                    help="copy the first method's held-out PCA picture here ('': don't; default: "
                         "docs/lift-pca-redkitchen.png for optimize on RedKitchen, else nowhere)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scene = Path(args.scene) if args.scene else shared_7scenes_dir()
    if args.pca_out is None:
        args.pca_out = str(ROOT / "docs" / "lift-pca-redkitchen.png") if args.method[0] == "optimize" and not args.scene else ""
    max_frame = args.max_frame if args.max_frame is not None else (None if args.scene else 398)
    out = Path(args.out)
    guard_output(out, [scene, shared_model_dir()], command="bench/lift_7scenes.py")  # before any work, locked
    if not args.resume:
        clear_output(out)  # only ever fit3d's own earlier results
    metas, walls, cpus = [], [], []
    for method in args.method:
        cfg = LiftConfig(method=method, model_path=str(shared_model_dir()), width=args.width,
                         iterations=args.iterations, feature_size=args.feature_size, max_frame=max_frame,
                         progress=False, cache_dir=str(out / "cache"))  # one token cache: every method's targets
        cfg = set_fields(cfg, args.set)
        dst = out / method
        t0, c0 = time.perf_counter(), time.process_time()
        metas.append(lift_scene(scene, cfg, dst))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    print(f"load average during the run (1 / 5 / 15 min at the end): {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    m0 = metas[0]
    W, H = m0["resolution"]
    frames = f"frames <= {max_frame}" if max_frame is not None else "all frames"
    rows = [("scene", f"{scene.name} ({frames}): {len(m0['scene']['train_views'])} train / "
                      f"{m0['heldout']['views']} held out"),
            ("render resolution", f"{W}x{H} (targets {m0['target_grid'][1]}x{m0['target_grid'][0]} tokens)"),
            ("threads", str(args.threads)), ("settings changed", " ".join(args.set) or "none")]
    cpu_of = dict(zip(map(id, metas), cpus))
    per = {"wall time (whole lift)": lambda m, w: f"{w:.0f} s",
           "CPU time (whole lift, process, all threads)": lambda m, w: f"{cpu_of[id(m)]:.0f} s",
           "  backbone features": lambda m, w: f"{m['timings']['features']:.0f} s" + (" (cached)" if m is not m0 else ""),
           "  lifting (the rest, eval excluded)": lambda m, w: f"{_lifting(m):.0f} s",
           "  solve phases: fusion / colour / average / CG / decoder / refine / joint": lambda m, w: "-" if m["method"] != "solve"
           else " / ".join(f"{m['timings'].get(k, 0):.1f}" for k in ("fusion", "colour", "average", "cg", "decoder", "refine", "joint")) + " s",
           "  lifting CPU time (process, all threads)": lambda m, w: f"{m['timings']['lift_cpu']:.0f} s"
           if "lift_cpu" in m["timings"] else "-",
           "  held-out eval": lambda m, w: f"{m['timings']['eval']:.0f} s",
           "iterations": lambda m, w: str(m["iterations"]) if m["method"] == "optimize" else _solve_iterations(m),
           "Gaussians (final)": lambda m, w: f"{m['gaussians']} (init: {m['init']})",
           "held-out RGB PSNR": lambda m, w: f"{m['heldout']['psnr']:.2f} dB",
           "held-out depth abs rel": lambda m, w: "- (no depth)" if m["heldout"]["depth_abs_rel"] is None
           else f"{m['heldout']['depth_abs_rel']:.4f}",
           "held-out feature cosine": lambda m, w: f"{m['heldout']['feature_cosine']:.4f}",
           "  baseline: scene mean": lambda m, w: f"{m['heldout']['baseline_mean_cosine']:.4f}",
           "  baseline: nearest view": lambda m, w: f"{m['heldout']['baseline_nearest_cosine']:.4f}",
           "beats both baselines": lambda m, w: str(m["heldout"]["feature_cosine"] > max(
               m["heldout"]["baseline_mean_cosine"], m["heldout"]["baseline_nearest_cosine"]))}
    rows += [(k, " | ".join(f(m, w) for m, w in zip(metas, walls))) for k, f in per.items()]
    rows.append(("peak memory (RSS)", f"{peak_gib:.2f} GiB"))
    w = max(len(k) for k, _ in rows)
    print(f"| {'metric'.ljust(w)} | {' | '.join(args.method)} |\n|{'-' * (w + 2)}|{'---|' * len(args.method)}")
    for k, v in rows:
        print(f"| {k.ljust(w)} | {v} |")
    pca = out / args.method[0] / "heldout_pca.png"
    if pca.exists() and args.pca_out:
        shutil.copyfile(pca, args.pca_out)
        print(f"PCA picture (held-out image | tokens | rendered decoded features): {args.pca_out}")
    return 0


def _solve_iterations(meta: dict) -> str:
    """``solve``'s passes: colour iterations, CG iterations run (of the maximum), refine / joint iterations."""
    if meta["method"] != "solve":
        return "-"
    c, info = meta["config"]["solve"], meta.get("solve", {})
    cg = len(info.get("cg_residual", [None])) - 1
    out = f"{info.get('iterations', c['geometry_iterations'])} colour + {cg} CG (views every {c['view_stride']})"
    for k, name in (("refine_iterations", "refine"), ("joint_iterations", "joint")):
        out += f" + {c[k]} {name}" if c.get(k) else ""
    return out


def _lifting(meta: dict) -> float:
    """Seconds of lifting proper: the whole lift less reading, backbone features and the held-out eval."""
    t = meta["timings"]
    return t["total"] - t.get("read", 0) - t["features"] - t["eval"]


if __name__ == "__main__":
    sys.exit(main())
