"""Benchmark fit3d.splat.rasterize: forward / forward+backward median seconds and peak extra memory.

    .venv/bin/python bench/rasterize.py            # full grid (N x image x C x scene)
    .venv/bin/python bench/rasterize.py --quick    # the two target configurations only
    .venv/bin/python bench/rasterize.py --n 50000 --size 128 --channels 67 --scene opaque low
    .venv/bin/python bench/rasterize.py --quick --geometry-channels 3 [--two-pass]   # lifting's render

Scenes are realistic for Stage 1: Gaussians spread through the view frustum at depths 2-6 with
per-axis pixel footprints (sigma) log-uniform in 0.5-4 px at 128x128 (3-sigma radius of a couple
to ~12 px; the world scene is the same at every resolution, so footprints scale with the image),
hundreds overlapping per pixel. ``opaque``: opacity U(0.5, 1) (pixels saturate, early exit);
``low-opacity``: U(0.02, 0.2) (long lists composited).

Memory: every configuration runs in a fresh subprocess; after a warm-up on a tiny scene (numba
kernels loaded, thread pools started) and just before the first forward+backward of the real scene,
the process' resident-set high-water mark is reset (``echo 5 > /proc/self/clear_refs``), and the
reported figure is ``VmHWM - VmRSS`` afterwards: the peak extra resident memory (torch CPU tensors
included, which tracemalloc cannot see) of one forward+backward, inputs and scene excluded.
Timings: median wall-clock seconds of ``--runs`` runs after one warm-up (which also compiles numba
kernels); ``cpu s`` is the process CPU time (all threads) of the median forward+backward, a figure
less distorted by other jobs on a shared machine. CPU threads set by ``--threads``.
``--geometry-channels K``: only the first K channels reach the geometry in the backward (Stage 1's
render, K = 3); with ``--two-pass`` the same gradients come from two passes (live geometry for the
first K channels, detached for the rest: what backends without a channel mask do).
Other jobs on a shared machine make timings noisy: report them with the load at the time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

TARGETS = {(50000, 128, 67): 0.35, (10000, 64, 67): 0.15, (10000, 64, 35): 0.15}


def make_scene(n: int, size: int, channels: int, scene: str, *, seed: int = 0, device: str = "cpu"):
    import torch

    g = torch.Generator().manual_seed(seed)
    f128 = 128.0
    # sample pixel positions at the 128 reference resolution (a margin outside), depth in [2, 6]
    uv = (torch.rand(n, 2, generator=g) * 1.2 - 0.1) * 128.0 - 64.0
    z = torch.rand(n, generator=g) * 4.0 + 2.0
    means = torch.cat([uv * z[:, None] / f128, z[:, None]], 1)
    sigma_px = torch.exp(torch.empty(n, 1).uniform_(math.log(0.5), math.log(4.0), generator=g))
    aniso = torch.rand(n, 3, generator=g) + 0.5
    scales = sigma_px * aniso * z[:, None] / f128
    quats = torch.randn(n, 4, generator=g)
    lo, hi = (0.5, 1.0) if scene == "opaque" else (0.02, 0.2)
    opac = torch.rand(n, generator=g) * (hi - lo) + lo
    colors = torch.rand(n, channels, generator=g)
    f = f128 * size / 128.0
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    viewmat = torch.eye(4)
    params = [t.to(device) for t in (means, quats, scales, opac, colors)]
    return params, viewmat.to(device), K.to(device)


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def run_one(args) -> dict:
    import torch

    from fit3d.splat.rasterize import rasterize as _rasterize, rasterize_two_pass

    def rasterize(*a, **kw):
        if args.two_pass:
            return rasterize_two_pass(*a, args.geometry_channels, **kw)
        return _rasterize(*a, geometry_channels=args.geometry_channels, **kw)

    torch.set_num_threads(args.threads)
    params, V, K = make_scene(args.n[0], args.size[0], args.channels[0], args.scene[0], device=args.device)
    size = args.size[0]
    leaves = [p.clone().requires_grad_(True) for p in params]

    def fwd():
        with torch.no_grad():
            return rasterize(*params, V, K, size, size, backend=args.backend)

    def fwd_bwd():
        for p in leaves:
            p.grad = None
        img, depth, alpha = rasterize(*leaves, V, K, size, size, backend=args.backend)
        (img.sum() + depth.sum() + alpha.sum()).backward()

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # load / compile kernels and start thread pools on a tiny scene first, so the memory figure is
    # the rasterizer's working memory, not one-time JIT and library start-up costs
    tp, tV, tK = make_scene(200, 32, args.channels[0], args.scene[0], device=args.device)
    tl = [p.clone().requires_grad_(True) for p in tp]
    ti, td, ta = rasterize(*tl, tV, tK, 32, 32, backend=args.backend)
    (ti.sum() + td.sum() + ta.sum()).backward()
    del tp, tl, ti, td, ta

    mem = None
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss0 = _status("VmRSS")
        fwd_bwd()
        mem = (_status("VmHWM") - rss0) / 2**20
    except OSError:
        fwd_bwd()
    alpha = fwd()[2]

    def median_time(fn):
        ts, cs = [], []
        for _ in range(args.runs):
            sync()
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
        return sorted(ts)[len(ts) // 2], sorted(cs)[len(cs) // 2]

    (t_f, _), (t_fb, c_fb) = median_time(fwd), median_time(fwd_bwd)
    return {"fwd": t_f, "fwd_bwd": t_fb, "fwd_bwd_cpu": c_fb, "mem_mb": mem, "mean_alpha": float(alpha.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 10000, 50000])
    ap.add_argument("--size", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--channels", type=int, nargs="+", default=[35, 67])
    ap.add_argument("--scene", nargs="+", default=["opaque", "low-opacity"], choices=["opaque", "low-opacity"])
    ap.add_argument("--quick", action="store_true", help="only 10k/64^2 and 50k/128^2 at 67 channels")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto", help="auto (numba on CPU) | torch | numba | gsplat")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--geometry-channels", type=int, default=None,
                    help="only the first K channels send gradients to the geometry (default: all)")
    ap.add_argument("--two-pass", action="store_true",
                    help="with --geometry-channels: two passes (live + detached geometry) instead of one")
    ap.add_argument("--omp-wait", default="PASSIVE",
                    help="OMP_WAIT_POLICY for the runs (PASSIVE: threads sleep instead of spinning at barriers, "
                         "which on an oversubscribed shared machine is up to ~50x faster for small torch ops)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.two_pass and args.geometry_channels is None:
        ap.error("--two-pass needs --geometry-channels")
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    if args.quick:
        configs = [(n, s, 67, sc) for n, s in ((10000, 64), (50000, 128)) for sc in args.scene]
    else:
        configs = [(n, s, c, sc) for n in args.n for s in args.size for c in args.channels for sc in args.scene]
    gc = "all" if args.geometry_channels is None else args.geometry_channels
    print(f"backend={args.backend} device={args.device} threads={args.threads} runs={args.runs} "
          f"geometry_channels={gc}{' (two passes)' if args.two_pass else ''} "
          f"OMP_WAIT_POLICY={args.omp_wait} loadavg={os.getloadavg()[0]:.1f}")
    hdr = f"{'N':>6} {'image':>7} {'C':>3} {'scene':>11} {'fwd s':>8} {'fwd+bwd s':>10} {'(cpu s)':>8} {'peak MB':>8} {'alpha':>6} target"
    print(hdr)
    print("-" * len(hdr))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for n, s, c, sc in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", "--n", str(n), "--size", str(s),
               "--channels", str(c), "--scene", sc, "--runs", str(args.runs), "--threads", str(args.threads),
               "--backend", args.backend, "--device", args.device]
        if args.geometry_channels is not None:
            cmd += ["--geometry-channels", str(args.geometry_channels)] + (["--two-pass"] if args.two_pass else [])
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_WAIT_POLICY=args.omp_wait)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(f"{n:>6} {s:>4}^2 {c:>3} {sc:>11}  FAILED: {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        tgt = TARGETS.get((n, s, c))
        mark = "" if tgt is None else f"<= {tgt:.2f} s {'ok' if r['fwd_bwd'] <= tgt else 'MISSED'}"
        mem = "n/a" if r["mem_mb"] is None else f"{r['mem_mb']:.0f}"
        print(f"{n:>6} {s:>4}^2 {c:>3} {sc:>11} {r['fwd']:>8.3f} {r['fwd_bwd']:>10.3f} {r['fwd_bwd_cpu']:>8.3f} {mem:>8} "
              f"{r['mean_alpha']:>6.2f} {mark}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
