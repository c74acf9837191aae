"""Benchmark Stage 1 on real data: lift 7-Scenes RedKitchen (frames 0-398, every 8th view held out) with the
shared DINOv2-S weights on CPU, and print one table row.

    .venv/bin/python bench/lift_7scenes.py [--iterations N] [--width W] [--threads 2] [--out DIR]

Target (issue 4): the whole lift, backbone features included, <= 15 min on 2 CPU cores, with the rendered
features beating both baselines (scene-mean feature, nearest training view) on the held-out views.
Also writes the held-out PCA picture to docs/lift-pca-redkitchen.png (--pca-out).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fit3d.paths import shared_7scenes_dir, shared_model_dir  # noqa: E402
from fit3d.lift import LiftConfig, lift_scene  # noqa: E402


def override(cfg: LiftConfig, items: list[str]) -> LiftConfig:
    """``cfg`` with FIELD=VALUE items applied (values parsed as the field's type)."""
    import dataclasses
    import typing

    from fit3d.config import _base_type

    hints = typing.get_type_hints(LiftConfig)
    changes = {}
    for item in items:
        k, _, v = item.partition("=")
        if k not in hints:
            raise SystemExit(f"--set {item}: LiftConfig has no field {k!r}")
        tp, _ = _base_type(hints[k])
        changes[k] = (v.lower() in ("1", "true", "yes")) if tp is bool else tp(v)
    return dataclasses.replace(cfg, **changes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=LiftConfig.iterations)
    ap.add_argument("--width", type=int, default=LiftConfig.width)
    ap.add_argument("--feature-size", type=int, default=LiftConfig.feature_size)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/fit3d-bench-lift/redkitchen")
    ap.add_argument("--resume", action="store_true", help="keep an existing output folder (resume / reuse cache)")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="other LiftConfig fields, e.g. --set feature_loss_at=render lr_features=0.01")
    ap.add_argument("--pca-out", default=str(ROOT / "docs" / "lift-pca-redkitchen.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    cfg = LiftConfig(model_path=str(shared_model_dir()), width=args.width, iterations=args.iterations,
                     feature_size=args.feature_size, max_frame=398, progress=False)
    cfg = override(cfg, args.set)
    t0 = time.perf_counter()
    meta = lift_scene(shared_7scenes_dir(), cfg, out)
    wall = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    h, t = meta["heldout"], meta["timings"]
    W, H = meta["resolution"]
    rows = [
        ("scene", f"7-Scenes RedKitchen frames 0-398: {len(meta['scene']['train_views'])} train / {h['views']} held out"),
        ("render resolution", f"{W}x{H} (targets {meta['target_grid'][1]}x{meta['target_grid'][0]} DINOv2-S tokens)"),
        ("threads", str(args.threads)),
        ("iterations", str(meta["iterations"])),
        ("settings changed", " ".join(args.set) or "none"),
        ("wall time (whole lift)", f"{wall:.0f} s  (features {t['features']:.0f} s, train {t['train']:.0f} s, eval {t['eval']:.0f} s)"),
        ("iterations/s (train)", f"{meta['iterations'] / t['train']:.2f}"),
        ("Gaussians (first log -> final)", f"{meta['history'][0]['gaussians']} -> {meta['gaussians']} (init: {meta['init']})"),
        ("peak memory (RSS)", f"{peak_gib:.2f} GiB"),
        ("held-out RGB PSNR", f"{h['psnr']:.2f} dB"),
        ("held-out depth abs rel", f"{h['depth_abs_rel']:.4f}"),
        ("held-out feature cosine", f"{h['feature_cosine']:.4f}"),
        ("  baseline: scene mean", f"{h['baseline_mean_cosine']:.4f}"),
        ("  baseline: nearest view", f"{h['baseline_nearest_cosine']:.4f}"),
        ("beats both baselines", str(h["feature_cosine"] > max(h["baseline_mean_cosine"], h["baseline_nearest_cosine"]))),
        ("within 15 min", str(wall <= 900)),
    ]
    w = max(len(k) for k, _ in rows)
    print(f"| {'metric'.ljust(w)} | value |\n|{'-' * (w + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(w)} | {v} |")
    pca = out / "heldout_pca.png"
    if pca.exists() and args.pca_out:
        shutil.copyfile(pca, args.pca_out)
        print(f"PCA picture (held-out image | DINOv2-S tokens | rendered decoded features): {args.pca_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
