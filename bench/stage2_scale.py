"""Stage 2 at dataset scale: peak memory per process and step time vs the number of lifted scenes.

    .venv/bin/python bench/stage2_scale.py --work /tmp/stage2_scale [--scenes 10 50 230] [--gaussians 1000000]
    .venv/bin/python bench/stage2_scale.py ... --baseline-src /tmp/base   # also "today's" code at the smallest count

Synthetic lifted scenes in the real on-disk format (``gaussians.ply`` + ``decoder.safetensors`` +
``lift.json``; no lifting): ``--gaussians`` random Gaussians each, on the surfaces of one generated room
(its depth back-projected at random pixels: a view sees part of the scene, as in a real lift), SH degree
3, 64-d features, a random 3x3 decoder to 384 channels; every scene lists the room's views as its training
views. ``--distinct`` PLYs are written; scene k's folder holds a hard link to PLY k mod distinct and its
own decoder and record, so 230 scenes of 1M Gaussians take the disk of ``--distinct`` (230 distinct
files would need ~113 GB, the PLYs alone). Memory per process is what the bench measures, and a process
that loaded its scenes whole holds each folder's Gaussians separately, hard-linked or not; the page cache,
though, holds one copy of a linked file, so reads are cheaper than with distinct files (``--distinct``
= the count removes that difference where the disk allows).

For each scene count, ``fit3d.finetune.finetune`` runs ``--steps`` steps of the default recipe (DINOv2-S,
batch 2, 224x168, no held-out evaluation) in a fresh process, then under ``torchrun`` with 2 ranks (gloo);
each rank reports its peak resident set (``ru_maxrss``: includes the pages of mapped files while
mapped), its median step time and the scenes its steps drew from. The columnar copies the run maps
(``fit3d.finetune.store``) are made first in a process of their own (the trainer would make the missing
ones itself; made apart, their peak, about one scene's PLY, is reported in its own column and the
training processes' peaks are the steps' own). "vs smallest count" is a process's peak RSS relative to
the same rank at the smallest scene count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------- scenes
def make_room(work: Path) -> Path:
    from fit3d.data.synthetic import SyntheticSceneConfig
    from fit3d.data.synthetic import generate_scenes

    return generate_scenes(work / "room", 1, SyntheticSceneConfig(num_views=24, width=224, height=168, seed=7),
                           progress=False)[0]


def random_gaussians(room: Path, n: int, seed: int):
    """``n`` Gaussians on the room's surfaces (depth back-projected at random pixels of random views)."""
    import torch

    from fit3d.data import read_scene
    from fit3d.splat.gaussians import FeatureGaussians

    rng = np.random.default_rng(seed)
    scene = read_scene(room)
    pts = []
    per = n // len(scene.views) + 1
    for v in scene.views:
        ys, xs = rng.integers(0, v.height, per), rng.integers(0, v.width, per)
        z = v.depth[ys, xs]
        ok = z > 0
        uv1 = np.stack([xs[ok] + 0.5, ys[ok] + 0.5, np.ones(ok.sum())], 1)
        cam = (np.linalg.inv(v.K) @ uv1.T).T * z[ok, None]
        pts.append(cam @ v.c2w[:3, :3].T + v.c2w[:3, 3])
    means = np.concatenate(pts)
    means = means[rng.choice(len(means), n, replace=len(means) < n)]
    means += rng.normal(0, 0.005, means.shape)
    f = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    return FeatureGaussians(means=torch.from_numpy(means.astype(np.float32)), quats=f(n, 4),
                            log_scales=torch.full((n, 3), float(np.log(0.01))) + 0.3 * f(n, 3),
                            opacity_logits=1.0 + f(n), sh=0.1 * f(n, 16, 3), features=f(n, 64), sh_degree=3)


def make_scenes(work: Path, room: Path, count: int, distinct: int, n: int) -> list[Path]:
    """``count`` lifted scene folders (PLY k mod ``distinct`` hard-linked), made once."""
    import torch

    from fit3d.io import write_json
    from fit3d.lift.decoder import FeatureDecoder

    from fit3d.data import read_scene

    names = [v.name for v in read_scene(room, resolution=(32, 24), load_depth=False).views]
    plys = []
    for k in range(distinct):
        p = work / "plys" / f"g{k:03d}_{n}.ply"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            random_gaussians(room, n, seed=k).save_ply(p)
            print(f"wrote {p} ({p.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s", flush=True)
        plys.append(p)
    dirs = []
    for i in range(count):
        d = work / "scenes" / f"s{i:03d}_{n}"
        if not (d / "lift.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "gaussians.ply").exists():
                os.link(plys[i % distinct], d / "gaussians.ply")
            torch.manual_seed(i)
            FeatureDecoder(64, 384, 3).save(d / "decoder.safetensors")
            write_json(d / "lift.json", {"name": d.name, "backbone": "dinov2_small", "feature_dim": 64,
                                         "resolution": [96, 72], "settings": {"synthetic": i},
                                         "scene": {"path": str(room), "layout": "scannet", "train_views": names[1:],
                                                   "heldout_views": names[:1]}})
        dirs.append(d)
    return dirs


# ----------------------------------------------------------------------------------------- one run
def worker(args) -> None:
    """One process (or torchrun rank): fine-tune ``--steps`` steps, print a JSON line of what it measured."""
    from fit3d.finetune import finetune
    from fit3d.finetune.recipes import from_recipe
    from fit3d.paths import shared_model_dir

    dirs = [str(d) for d in sorted(Path(args.scene_dirs).iterdir()) if (d / "lift.json").exists()][:args.count]
    cfg = from_recipe("default", max_steps=args.steps, resolution=[224, 168], evaluate=False, progress=False,
                      checkpoint_every=0, workers=0, device="cpu")
    t = time.perf_counter()
    r = finetune(dirs, "dinov2_small", args.out, cfg, model_path=str(shared_model_dir()))
    wall = time.perf_counter() - t
    seen = r.get("seen", [])
    groups = []
    for i, d in enumerate(dirs):
        groups += [i] * len(json.loads((Path(d) / "lift.json").read_text())["scene"]["train_views"])
    touched = sorted({groups[j] for j in seen})
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    try:  # the scenes this rank's sampler draws from (all of them where views are sharded instead)
        from fit3d.finetune.data import shard_by_group

        shards = shard_by_group(groups, world) if world > 1 else None
        share = len(dirs) if shards is None else len({groups[j] for j in shards[rank]})
    except ImportError:  # a checkout without scene shards: every rank draws from every scene
        share = len(dirs)
    step = (r.get("timing") or {}).get("median_step_s")
    print("RESULT " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "count": len(dirs),
                                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  "median_step_s": step, "wall_s": wall, "scenes_touched": touched, "share": share,
                                  "steps": len(seen) // max(1, cfg.batch_size)}), flush=True)


def convert(args) -> None:
    """Make the columnar copies the fine-tuning run will map (``fit3d.finetune.store``), in this process."""
    from fit3d.finetune.store import SceneRef
    from fit3d.finetune.trainer import SCENE_CACHE_DIR

    dirs = [d for d in sorted(Path(args.scene_dirs).iterdir()) if (d / "lift.json").exists()][:args.count]
    for d in dirs:
        SceneRef(d, Path(args.out) / SCENE_CACHE_DIR).ensure_columns()
    print("RESULT " + json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_case(args, scene_dirs: Path, count: int, ranks: int, src: Path) -> list[dict]:
    out = Path(args.work) / "runs" / f"{src.name}_{count}_{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    conv = None
    if src == REPO:  # the columnar copies first, in their own process: made once per run, their peak apart
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--convert", "--scene-dirs", str(scene_dirs),
                            "--count", str(count), "--out", str(out)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(src)}, cwd=str(src))
        lines = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if r.returncode != 0 or not lines:
            print(r.stderr[-3000:], file=sys.stderr)
            raise SystemExit("converting the scenes failed")
        conv = lines[0]["peak_rss_mib"]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks)),
           "CUDA_VISIBLE_DEVICES": ""}
    me = [str(Path(__file__).resolve()), "--worker", "--scene-dirs", str(scene_dirs), "--count", str(count),
          "--steps", str(args.steps), "--out", str(out)]
    cmd = [sys.executable, *me] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(ranks), *me]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(src))
    rows = [json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode != 0 or len(rows) != ranks:
        print(r.stdout[-3000:], r.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"case {count} scenes x {ranks} rank(s) with {src} failed (exit {r.returncode})")
    shutil.rmtree(out, ignore_errors=True)
    for x in rows:
        x["convert_peak_rss_mib"] = conv
    return sorted(rows, key=lambda x: x["rank"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/stage2_scale", help="where the synthetic scenes go (needs disk: see --distinct)")
    ap.add_argument("--scenes", type=int, nargs="+", default=[10, 50, 230])
    ap.add_argument("--gaussians", type=int, default=1_000_000)
    ap.add_argument("--distinct", type=int, default=10, help="distinct PLY files (the rest hard links)")
    ap.add_argument("--steps", type=int, default=8, help="Stage 2 steps per run (batch 2)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--baseline-src", default=None, help="another fit3d checkout to run at the smallest count, 1 process")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--convert", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scene-dirs", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.convert:
        convert(args)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    need = args.distinct * args.gaussians * (492 + 492 + 64) / 2**30  # PLY + columns + slack, GiB
    free = shutil.disk_usage(work).free / 2**30
    print(f"disk: {free:.0f} GiB free under {work}; this bench needs about {need:.0f} GiB "
          f"({args.distinct} distinct PLYs of {args.gaussians:,} Gaussians and their columnar copies)", flush=True)
    if need > free * 0.8:
        raise SystemExit("not enough disk: lower --distinct or --gaussians")
    room = make_room(work)
    make_scenes(work, room, max(args.scenes), args.distinct, args.gaussians)
    scene_dirs = work / "scenes"
    results = []
    cases = [(c, r, REPO) for c in sorted(args.scenes) for r in args.ranks]
    if args.baseline_src:
        cases.insert(0, (min(args.scenes), 1, Path(args.baseline_src).resolve()))
    for count, ranks, src in cases:
        t = time.perf_counter()
        rows = run_case(args, scene_dirs, count, ranks, src)
        print(f"{count} scenes, {ranks} rank(s), {src}: {time.perf_counter() - t:.0f} s; "
              + "; ".join(f"rank {x['rank']} peak {x['peak_rss_mib']:.0f} MiB, step {x['median_step_s'] or 0:.2f} s, "
                          f"{len(x['scenes_touched'] or [])} scenes" for x in rows), flush=True)
        results.append((count, ranks, src, rows))
    base = {r: next(rows for c, rr, s, rows in results if rr == r and s == REPO) for r in args.ranks}
    print(f"\nStage 2 memory and step time vs scenes: {args.gaussians:,} random Gaussians per scene "
          f"({args.distinct} distinct PLYs, hard links for the rest), recipe default, batch 2, 224x168, "
          f"{args.steps} steps, workers 0, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| code | scenes | ranks | rank | peak RSS MiB | vs smallest count | median step s (rank 0) | scenes in its "
          "share | scenes its steps drew | conversion process peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for count, ranks, src, rows in results:
        for x in rows:
            ref = base[ranks][x["rank"]]["peak_rss_mib"] if src == REPO else float("nan")
            touched = x["scenes_touched"]
            conv = "-" if x["convert_peak_rss_mib"] is None else f"{x['convert_peak_rss_mib']:.0f}"
            print(f"| {'this' if src == REPO else src.name} | {count} | {ranks} | {x['rank']} | {x['peak_rss_mib']:.0f} | "
                  f"{x['peak_rss_mib'] / ref:.2f} | {x['median_step_s'] or float('nan'):.2f} | {x['share']} of {count} | "
                  f"{len(touched)} | {conv} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
