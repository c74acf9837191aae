"""One short, prepared check of every CUDA path, for a GPU machine with no network and minutes of time.

    python bench/gpu_check.py prepare [--assets .gpu]        # on a CPU machine with the package index and shared/
    python bench/gpu_check.py run [--assets .gpu] [--out DIR] [--budget 540]   # on the GPU machine

``prepare`` writes everything the GPU machine lacks into ``--assets`` (git-ignored, under 64 MiB): the wheels
of gsplat and plyfile, DINOv2-S's config (the check builds a seeded random-init DINOv2-S there: throughput,
bf16 numerics and nccl do not depend on the weights, and the weights would not fit), two small lifted rooms
(lifted here with that random model) and 7-Scenes RedKitchen frames 0, 4, ..., 396 for a ``solve`` lift.

``run`` with CUDA: installs the wheels into a private folder, then (each section timed, skipped once
``--budget`` seconds are spent, the table rewritten after each):

1. builds gsplat's CUDA extension (its first JIT compilation, timed; the backbone throughput runs meanwhile);
2. ``pytest -m cuda``: gsplat against the torch backend and against the float64 reference;
3. rasterizer forward+backward, gsplat and torch backends, 50k Gaussians / 128x128 / 67 channels and
   1M / 876x584 (ScanNet++'s size) / 67 channels;
4. backbone images per second (DINOv2-S, 224x224, fp32 and bf16 autocast, inference and training);
5. Stage 2 (``fit3d finetune``) on the small rooms in bf16 and fp32, same steps: per-step loss difference,
   and steps per second with 0 / 2 render workers;
6. ``torchrun --nproc_per_node 1 -m fit3d finetune`` with nccl;
7. ``fit3d lift --method solve`` of RedKitchen on the GPU.

It writes ``gpu_check.md`` (the table for docs/gpu.md) and ``gpu_check.json`` to ``--out`` (default: $OUT,
else runs/gpu_check). Without CUDA it says so, checks that everything it would run exists (test files and
their ``cuda`` marks, modules, subcommands and the options it passes, torchrun, the assets if prepared) and
exits 0, or 1 naming what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WHEELS = ("gsplat==1.5.3", "plyfile")
ROOMS = 2                      # small lifted rooms for Stage 2
MAX_FRAME, FRAME_STEP = 398, 4  # RedKitchen frames 0, 4, ..., 396 (the lift range; 100 views: 64 MiB carry limit)
CUDA_TESTS = ["tests/splat/test_rasterize_cuda.py", "tests/splat/test_geometry_channels.py",
              "tests/finetune/test_data.py"]
MIN_CUDA_TESTS = 6
# subcommand -> options this script passes to it (checked against --help where no GPU is present)
OPTIONS = {"finetune": ["--scenes", "--out", "--max-steps", "--amp", "--workers", "--device", "--model-path",
                        "--no-amp", "--no-evaluate", "--checkpoint-every", "--render-on"],
           "lift": ["--method", "--out", "--device", "--model-path", "--max-frame"],
           "generate": ["--num-scenes", "--num-views", "--width", "--height"],
           "demo": ["--out", "--model-path", "--device", "--train-scenes", "--test-scenes", "--num-views",
                    "--probe.iterations", "--bootstrap"]}
CARRY_LIMIT = 64 * 2**20


# ---------------------------------------------------------------------------------------------- helpers
def sh(cmd: list[str], *, env: dict | None = None, timeout: float | None = None) -> tuple[int, str, float]:
    """Run ``cmd`` from the repo root; (returncode, last 20000 characters of stdout+stderr, seconds)."""
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        def text(x) -> str:
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        tail = (text(e.stdout) + text(e.stderr))[-2000:]
        rc, out = 124, f"{tail}\ntimed out after {timeout:.0f} s (the check's budget)"
    return rc, out[-20000:], time.perf_counter() - t


def fit3d_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fit3d", *args]


def random_dinov2(config_dir: Path, out: Path, seed: int = 0) -> Path:
    """A DINOv2 with ``config_dir``'s architecture and seeded random weights, saved with save_pretrained."""
    import torch
    from transformers import AutoConfig, Dinov2Model

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    Dinov2Model(AutoConfig.from_pretrained(str(config_dir))).save_pretrained(str(out))
    for name in ("preprocessor_config.json",):
        if (config_dir / name).exists():
            shutil.copy(config_dir / name, out / name)
    return out


def relocate(assets: Path, dst: Path) -> list[str]:
    """Copy the prepared lifted rooms to ``dst``, pointing their records at the rooms' images on this machine
    (a lifted scene records its source folder's absolute path, which differs where the assets travel)."""
    scenes = []
    for src in sorted((assets / "lifted").iterdir()):
        if not (src / "lift.json").exists():
            continue
        shutil.copytree(src, dst / src.name)
        meta = json.loads((src / "lift.json").read_text())
        meta["scene"]["path"] = str((assets / "rooms" / src.name).resolve())
        (dst / src.name / "lift.json").write_text(json.dumps(meta, indent=1))
        scenes.append(str(dst / src.name))
    return scenes


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------- prepare
def prepare(assets: Path) -> int:
    """Write the wheels, the model config, two lifted rooms and every 4th RedKitchen frame of 0-398 into ``assets``."""
    from fit3d.paths import shared_7scenes_dir, shared_model_dir

    assets.mkdir(parents=True, exist_ok=True)
    wheels = assets / "wheels"
    wheels.mkdir(exist_ok=True)
    for spec in WHEELS:
        rc, out, _ = sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                         "-d", str(wheels), spec])
        if rc:
            print(f"pip download {spec} failed:\n{out}")
            return 1
    cfg = assets / "model_config"
    cfg.mkdir(exist_ok=True)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(shared_model_dir() / name, cfg / name)
    model = random_dinov2(cfg, assets / "tmp_model")  # lifts the rooms here; rebuilt (not carried) there
    rooms = assets / "rooms"
    steps = [lambda: fit3d_cmd("generate", str(rooms), "--num-scenes", str(ROOMS), "--num-views", "12",
                               "--width", "224", "--height", "168"),
             lambda: fit3d_cmd("lift", *sorted(str(p) for p in rooms.iterdir() if p.is_dir()), "--method", "solve",
                               "--solve-max-gaussians", "6000", "--model-path", str(model),
                               "--out", str(assets / "lifted"))]
    for make in steps:  # the lift's arguments exist only once `generate` has run
        cmd = make()
        rc, out, secs = sh(cmd)
        print(f"fit3d {cmd[3]}: {secs:.0f} s")
        if rc:
            print(out)
            return 1
    shutil.rmtree(assets / "tmp_model")
    for d in (assets / "lifted").iterdir():  # Stage 2 reads the Gaussians, the decoder and the room's images
        shutil.rmtree(d / "cache", ignore_errors=True)
    kitchen = assets / "redkitchen"
    kitchen.mkdir(exist_ok=True)
    src = shared_7scenes_dir()
    for f in src.iterdir():
        num = f.name.split(".")[0].removeprefix("frame-")
        if not f.name.startswith("frame-") or (num.isdigit() and int(num) <= MAX_FRAME and int(num) % FRAME_STEP == 0):
            shutil.copy(f, kitchen / f.name)
    size = folder_bytes(assets)
    (assets / "manifest.json").write_text(json.dumps({"wheels": sorted(p.name for p in wheels.iterdir()),
                                                      "rooms": sorted(p.name for p in (assets / "lifted").iterdir()),
                                                      "bytes": size}, indent=1))
    print(f"{assets}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the working tree)")
    return 0 if size < CARRY_LIMIT else 1


# ---------------------------------------------------------------------------------------------- no CUDA
def subcommand_help(name: str) -> str:
    """``fit3d NAME --help``'s text, built in this process."""
    import argparse as ap

    from fit3d.cli import build_parser

    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, ap._SubParsersAction))
    return sub.choices[name].format_help()


def check_only(assets: Path) -> int:
    """Everything ``run`` would run exists: test files and marks, modules, subcommands and options, torchrun."""
    import importlib
    import importlib.util
    import re

    problems, ok = [], 0
    missing = [t for t in CUDA_TESTS if not (ROOT / t).exists()]
    rc, out, _ = sh([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                     *CUDA_TESTS])
    n = sum(1 for line in out.splitlines() if "::" in line)
    if missing or n < MIN_CUDA_TESTS:
        problems.append(f"CUDA tests: missing {missing}, {n} collected (expected >= {MIN_CUDA_TESTS}): {out[-600:]}")
    ok += not (missing or n < MIN_CUDA_TESTS)
    for mod in ("fit3d.splat.raster_gsplat", "fit3d.finetune.trainer", "fit3d.lift", "fit3d.models", "fit3d.cli",
                "torch.distributed.run", "transformers"):
        try:
            importlib.import_module(mod)
            ok += 1
        except Exception as e:  # report every missing piece, not just the first
            problems.append(f"import {mod}: {type(e).__name__}: {e}")
    for sub, opts in OPTIONS.items():
        text = subcommand_help(sub)
        absent = [o for o in opts if not re.search(re.escape(o) + r"(?![\w-])", text)]
        problems += [f"fit3d {sub} has no option(s) {', '.join(absent)}"] if absent else []
        ok += not absent
    if (assets / "manifest.json").exists():
        m = json.loads((assets / "manifest.json").read_text())
        absent = [w for w in m["wheels"] if not (assets / "wheels" / w).exists()]
        absent += [r for r in m["rooms"] if not (assets / "lifted" / r / "lift.json").exists()]
        absent += [f"rooms/{r}" for r in m["rooms"] if not (assets / "rooms" / r).is_dir()]
        absent += [] if (assets / "redkitchen").is_dir() else ["redkitchen"]
        problems += [f"assets incomplete in {assets}: {', '.join(absent)}"] if absent else []
        ok += not absent
        print(f"assets: {assets} ({m['bytes'] / 2**20:.1f} MiB)")
    else:
        print(f"assets: not prepared in {assets} (run `python bench/gpu_check.py prepare` on a CPU machine first)")
    print(f"no CUDA device: nothing run on a GPU; {ok} checks passed"
          + (f", {len(problems)} failed:" if problems else ""))
    for p in problems:
        print(f"  - {p}")
    return 1 if problems else 0


# ---------------------------------------------------------------------------------------------- GPU
class Report:
    """Rows of the result table, rewritten to OUT/gpu_check.{md,json} after every section."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget, self.t0 = out, budget, time.perf_counter()
        self.rows: list[dict] = []
        self.info: dict = {}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def add(self, section: str, what: str, value: str, status: str = "ok", note: str = "") -> None:
        self.rows.append(dict(section=section, what=what, value=value, status=status, note=note))
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {section}: {what} = {value} ({status}) {note}", flush=True)
        self.write()

    def write(self) -> None:
        lines = ["| section | what | value | status | note |", "|---|---|---|---|---|"]
        lines += [f"| {r['section']} | {r['what']} | {r['value']} | {r['status']} | {r['note']} |" for r in self.rows]
        head = "\n".join(f"- {k}: {v}" for k, v in self.info.items())
        (self.out / "gpu_check.md").write_text(f"# fit3d GPU check\n\n{head}\n\n" + "\n".join(lines) + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps({"info": self.info, "rows": self.rows}, indent=1))


@dataclass
class Scale:
    """Sizes of one run: the GPU check's, or ``--simulate-cpu``'s small ones (the same code paths on the CPU)."""

    device: str = "cuda"
    raster: tuple = ((50_000, 128, 128), (1_000_000, 876, 584))
    batch: int = 64            # backbone throughput
    steps: int = 30            # Stage 2 steps per run
    workers: int = 2           # render workers of the third Stage 2 run
    lift_args: tuple = ()      # extra `fit3d lift` options
    demo_args: tuple = ("--train-scenes", "2", "--test-scenes", "1", "--num-views", "8", "--probe.iterations", "50",
                        "--bootstrap", "200")  # a small demo: every stage, seconds not minutes


SIMULATE = Scale(device="cpu", raster=((20_000, 96, 96),), batch=4, steps=6, workers=1, lift_args=("--max-frame", "60"))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_raster(n: int, W: int, H: int, C: int, backend: str, device: str, runs: int = 10) -> tuple[float, float]:
    """Median forward and forward+backward milliseconds of ``rasterize`` (random frustum scene)."""
    import torch

    from fit3d.splat.rasterize import rasterize

    g = torch.Generator().manual_seed(0)
    f = 0.9 * W
    z = torch.rand(n, generator=g) * 4 + 2
    uv = (torch.rand(n, 2, generator=g) * 1.2 - 0.1) * torch.tensor([W, H]) - torch.tensor([W, H]) / 2
    means = torch.cat([uv * z[:, None] / f, z[:, None]], 1)
    scales = torch.exp(torch.empty(n, 3).uniform_(-1, 1.4, generator=g)) * z[:, None] / f
    params = [means, torch.randn(n, 4, generator=g), scales, torch.rand(n, generator=g) * 0.5 + 0.5,
              torch.rand(n, C, generator=g)]
    params = [p.to(device) for p in params]
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]], device=device)
    V = torch.eye(4, device=device)
    leaves = [p.clone().requires_grad_(True) for p in params]

    def fwd():
        with torch.no_grad():
            rasterize(*params, V, K, W, H, backend=backend)

    def fwd_bwd():
        img, depth, alpha = rasterize(*leaves, V, K, W, H, backend=backend)
        (img.sum() + depth.sum() + alpha.sum()).backward()

    res = []
    for fn in (fwd, fwd_bwd):
        fn()
        ts = []
        for _ in range(runs):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t)
        res.append(1e3 * sorted(ts)[len(ts) // 2])
    return res[0], res[1]


def backbone_throughput(model_dir: Path, device: str, batch: int) -> dict:
    """Images per second of DINOv2-S at 224x224: inference and a training step, fp32 and bf16 autocast."""
    import torch

    from fit3d.models import load_backbone

    bb = load_backbone("dinov2_small", model_path=str(model_dir), device=device)
    x = torch.rand(batch, 3, 224, 224, device=device)
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-5)
    out = {}
    for amp in (False, True):
        for mode in ("inference", "train"):
            def step():
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
                    if mode == "inference":
                        with torch.no_grad():
                            bb.tokens(bb.prepare(x))
                        return
                    patch, _ = bb.tokens(bb.prepare(x))
                    loss = patch.float().abs().mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            for _ in range(3):
                step()
            sync(device)
            t, k = time.perf_counter(), 10
            for _ in range(k):
                step()
            sync(device)
            out[f"{mode} {'bf16' if amp else 'fp32'}"] = batch * k / (time.perf_counter() - t)
    return out


def finetune_run(rep: Report, scenes: list[str], model: Path, out: Path, sc: Scale, *, amp: bool, workers: int,
                 steps: int, env: dict, torchrun: bool = False, render_on: str = "auto") -> dict | None:
    """``fit3d finetune`` for ``steps`` steps; its manifest, with the per-step losses as ``losses``."""
    args = ["finetune", "--scenes", *scenes, "--out", str(out), "--max-steps", str(steps), "--device", sc.device,
            "--model-path", str(model), "--workers", str(workers), "--checkpoint-every", "0", "--no-evaluate",
            "--amp" if amp else "--no-amp", "--render-on", render_on]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "fit3d", *args] if torchrun
           else fit3d_cmd(*args))
    rc, log, secs = sh(cmd, env=env, timeout=max(30.0, rep.left()))
    if rc:
        name = "torchrun" if torchrun else f"finetune amp={amp} workers={workers}"
        rep.add("stage2", name, f"exit {rc}", "FAIL", log.strip().splitlines()[-1][:200] if log.strip() else "")
        (rep.out / f"fail_{out.name}.log").write_text(log)
        return None
    m = json.loads((out / "fit3d.json").read_text())
    m["losses"] = json.loads((out / "losses.json").read_text())["loss"]
    m["wall_s"] = secs
    return m


def start_gsplat_build(env: dict) -> subprocess.Popen:
    """gsplat's first JIT build, in the background: the sections that need no gsplat run meanwhile."""
    return subprocess.Popen([sys.executable, "-c", "import time; t = time.perf_counter(); "
                             "from gsplat.cuda._backend import _C; assert _C is not None; "
                             "print(f'built {time.perf_counter() - t:.1f}')"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def section_backbone(rep: Report, model: Path, sc: Scale, note: str) -> None:
    try:
        for k, v in backbone_throughput(model, sc.device, sc.batch).items():
            rep.add("backbone", f"DINOv2-S 224x224 batch {sc.batch}, {k}", f"{v:.3g} img/s", note=note)
    except Exception as e:  # keep going: every section reports on its own
        rep.add("backbone", "throughput", type(e).__name__, "FAIL", str(e)[:200])


def finish_gsplat_build(rep: Report, build: subprocess.Popen | None, reserve: float) -> bool:
    """Wait for the build while more than ``reserve`` seconds are left; True if gsplat's extension loads."""
    if build is None:
        rep.add("gsplat", "first JIT compilation", "skipped", "SKIP", "no CUDA")
        return False
    try:
        log, _ = build.communicate(timeout=max(10.0, rep.left() - reserve))
    except subprocess.TimeoutExpired:
        build.kill()
        rep.add("gsplat", "first JIT compilation", "not finished", "FAIL", "killed to leave time for the rest")
        return False
    ok = build.returncode == 0
    rep.add("gsplat", "first JIT compilation (gsplat 1.5.3)",
            log.strip().splitlines()[-1] + " s" if ok else f"exit {build.returncode}", "ok" if ok else "FAIL",
            "" if ok else log[-200:].replace("\n", " "))
    if not ok:
        (rep.out / "fail_gsplat_build.log").write_text(log)
    return ok


def section_cuda_tests(rep: Report, env: dict) -> None:
    rc, log, secs = sh([sys.executable, "-m", "pytest", "-q", "--tb=short", "-m", "cuda", "-p", "no:cacheprovider", *CUDA_TESTS],
                       env=env, timeout=max(30.0, rep.left() - 200))
    (rep.out / "cuda_tests.log").write_text(log)
    rep.add("tests", "pytest -m cuda", log.strip().splitlines()[-1][:120] if log.strip() else "?",
            "ok" if rc == 0 else "FAIL", f"{secs:.0f} s")


def section_raster(rep: Report, sc: Scale, backends: list[str]) -> None:
    import torch

    for n, W, H in sc.raster:
        for backend in backends:
            if rep.left() < 60 or (backend == "torch" and n > 100_000):
                continue
            try:
                f, fb = timed_raster(n, W, H, 67, backend, sc.device)
                rep.add("raster", f"{backend} {n:,} Gaussians {W}x{H} 67 ch", f"fwd {f:.2f} ms, fwd+bwd {fb:.2f} ms")
            except Exception as e:
                rep.add("raster", f"{backend} {n:,} {W}x{H}", type(e).__name__, "FAIL", str(e)[:200])
            if sc.device.startswith("cuda"):
                torch.cuda.empty_cache()


def max_rel_diff(a: list[float], b: list[float]) -> float:
    """The largest |a_i - b_i| / |a_i| of two runs' per-step losses (the same steps)."""
    return max(abs(x - y) / max(abs(x), 1e-8) for x, y in zip(a, b))


def section_stage2(rep: Report, scenes: list[str], model: Path, work: Path, sc: Scale, env: dict, *,
                   runs: tuple[tuple[bool, int, str], ...], raster: str, note: str = "") -> None:
    """``fit3d finetune`` runs of (amp, render workers, --render-on) with the rasterizer ``env`` gives on the
    GPU (``raster`` names it); fp32 and bf16 on the same steps (the first two runs, both rendering on the device)
    compared by their per-step losses."""
    done = {}
    for amp, workers, where in runs:
        label = f"{'bf16' if amp else 'fp32'}, {workers} render workers, targets on {where}"
        label += f" ({raster})" if where == "device" else " (numba)"
        if rep.left() < 60:
            rep.add("stage2", label, "skipped", "SKIP", "budget spent")
            continue
        m = finetune_run(rep, scenes, model, work / f"ft_{raster}_amp{int(amp)}_w{workers}_{where}", sc, amp=amp,
                         workers=workers, steps=sc.steps, env=env, render_on=where)
        if m:
            done[(amp, workers, where)] = m
            step = m["timing"]["median_step_s"]
            rep.add("stage2", f"fit3d finetune, {label}", f"{1 / step:.1f} steps/s",
                    note=f"median step {1e3 * step:.0f} ms, data wait {1e3 * m['timing']['median_data_wait_s']:.0f} ms, "
                         f"batch {m['config']['batch_size']}{note}")
    if (False, 0, "device") in done and (True, 0, "device") in done:
        a, b = done[(False, 0, "device")]["losses"], done[(True, 0, "device")]["losses"]
        rel = max_rel_diff(a, b)
        amp_on = done[(True, 0, "device")]["device"].startswith("cuda")  # fit3d uses bf16 autocast on CUDA only
        rep.add("stage2", f"bf16 vs fp32 loss, same {len(a)} steps ({raster})", f"max rel. diff {rel:.3g}",
                "ok" if rel < 0.05 and (rel > 0 or not amp_on) else "FAIL",
                f"fp32 {a[0]:.4f} -> {a[-1]:.4f}, bf16 {b[0]:.4f} -> {b[-1]:.4f}" + ("" if amp_on else " (CPU: no autocast)"))
    if (True, 0, "device") in done and (True, 0, "cpu") in done:
        a, b = done[(True, 0, "cpu")]["losses"], done[(True, 0, "device")]["losses"]
        rel = max_rel_diff(a, b)
        rep.add("stage2", f"targets on the device vs the CPU, same {len(a)} steps ({raster})",
                f"max rel. loss diff {rel:.3g}", "ok" if rel < 0.05 else "FAIL")


def section_torchrun(rep: Report, scenes: list[str], model: Path, work: Path, sc: Scale, env: dict, raster: str) -> None:
    if rep.left() < 45:
        rep.add("torchrun", "torchrun --nproc_per_node 1", "skipped", "SKIP", "budget spent")
        return
    m = finetune_run(rep, scenes, model, work / "ft_torchrun", sc, amp=True, workers=0, steps=5, env=env, torchrun=True)
    if m:
        backend = "nccl" if sc.device.startswith("cuda") else "gloo"
        rep.add("torchrun", f"torchrun --nproc_per_node 1 -m fit3d finetune ({backend}, {raster} raster)",
                f"{m['steps']} steps", "ok" if m.get("world_size") == 1 and m["steps"] == 5 else "FAIL",
                f"device {m.get('device')}")


def section_lift(rep: Report, assets: Path, model: Path, work: Path, sc: Scale, env: dict, note: str = "",
                 raster: str = "torch", reserve: float = 10.0) -> None:
    """``fit3d lift --method solve`` of the prepared RedKitchen frames, leaving ``reserve`` seconds of the budget."""
    if rep.left() < 60:
        rep.add("lift", "fit3d lift --method solve", "skipped", "SKIP", "budget spent")
        return
    lifted = work / f"lift_redkitchen_{raster}"
    rc, log, secs = sh(fit3d_cmd("lift", str(assets / "redkitchen"), "--method", "solve", "--device", sc.device,
                                 "--model-path", str(model), "--out", str(lifted), *sc.lift_args),
                       env=env, timeout=max(30.0, rep.left() - reserve))
    meta = next(lifted.glob("*/lift.json"), None)
    extra, note = note, ""
    if rc == 0 and meta:
        d = json.loads(meta.read_text())
        note = ", ".join(f"{k} {v:.1f} s" for k, v in d.get("timings", {}).items() if isinstance(v, (int, float)))
    elif rc:
        (rep.out / "fail_lift.log").write_text(log)
        note = log.strip().splitlines()[-1][:200] if log.strip() else ""
    rep.add("lift", f"fit3d lift --method solve ({raster}), RedKitchen {' '.join(sc.lift_args) or f'0-{MAX_FRAME} every {FRAME_STEP}th'}",
            f"{secs:.0f} s wall" if rc == 0 else f"exit {rc}", "ok" if rc == 0 else "FAIL", note[:300] + extra)


def section_demo(rep: Report, model: Path, work: Path, sc: Scale, env: dict, raster: str) -> None:
    """A small ``fit3d demo`` end to end (generate, solve lift, Stage 2, seg / depth / corr probes, intervals,
    report) on the device: every stage a user's first command runs."""
    if rep.left() < 60:
        rep.add("demo", "fit3d demo (small)", "skipped", "SKIP", "budget spent")
        return
    out = work / f"demo_{raster}"
    rc, log, secs = sh(fit3d_cmd("demo", "--out", str(out), "--model-path", str(model), "--device", sc.device,
                                 *sc.demo_args), env=env, timeout=max(30.0, rep.left() - 10))
    note = ""
    if rc == 0 and (out / "results.json").exists():
        r = json.loads((out / "results.json").read_text())
        note = ", ".join(f"{k} {v:.0f} s" for k, v in r.get("seconds", {}).items())
    else:
        (rep.out / f"fail_demo_{raster}.log").write_text(log)
        note = log.strip().splitlines()[-1][:200] if log.strip() else ""
    rep.add("demo", f"fit3d demo ({raster} raster; {' '.join(sc.demo_args)})",
            f"{secs:.0f} s wall" if rc == 0 else f"exit {rc}", "ok" if rc == 0 else "FAIL", note[:300])


SECTIONS = ("gsplat", "raster", "stage2", "lift", "demo")  # gsplat: its build, its tests and every gsplat-backed run


def run_gpu(assets: Path, out: Path, budget: float, sc: Scale, sections: tuple[str, ...] = SECTIONS) -> int:
    """gsplat builds in the background while everything that needs no gsplat runs (its timings then carry a
    note: the build holds the CPU cores); once built, its tests and the gsplat-backed runs. A build that fails or
    outlasts the budget costs only the gsplat rows: the other sections ran without it."""
    import torch

    rep = Report(out, budget)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "fit3d_gpu_check"
    shutil.rmtree(work, ignore_errors=True)
    site, site_gs = work / "site", work / "site_gsplat"  # gsplat apart: runs before its build must not import it
    wheels = sorted((assets / "wheels").glob("*.whl"))
    for target, group in ((site, [w for w in wheels if not w.name.startswith("gsplat-")]),
                          (site_gs, [w for w in wheels if w.name.startswith("gsplat-")])):
        rc, log, _ = sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                         "--target", str(target), *map(str, group)]) if group else (0, "", 0.0)
        if rc:
            rep.add("setup", f"install wheels into {target.name}", f"exit {rc}", "FAIL", log[-200:])

    def env_with(*paths: Path) -> dict:
        return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *map(str, paths), os.environ.get("PYTHONPATH", "")]),
                    PYTHONUNBUFFERED="1", TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
                    MAX_JOBS=str(os.cpu_count() or 8), FIT3D_SHARED=str(work / "no_shared"))

    env_plain, env_gs = env_with(site), env_with(site, site_gs)
    sys.path.insert(1, str(site))
    cuda = sc.device.startswith("cuda")
    rep.info.update(torch=torch.__version__, cuda=torch.version.cuda,
                    device=torch.cuda.get_device_name(0) if cuda else "CPU (--simulate-cpu)",
                    cpus=os.cpu_count(), budget_s=budget)
    model = random_dinov2(assets / "model_config", work / "model")
    rep.info["model"] = "DINOv2-S architecture, seeded random weights (see bench/gpu_check.py)"
    build = start_gsplat_build(env_gs) if cuda and "gsplat" in sections else None
    busy = "; during gsplat's build" if build else ""
    section_backbone(rep, model, sc, busy.removeprefix("; "))
    scenes = relocate(assets, work / "lifted") if "stage2" in sections else []
    plain = "torch" if cuda else "auto"
    if "stage2" in sections:
        section_stage2(rep, scenes, model, work, sc, env_plain, runs=((False, 0, "device"), (True, 0, "device"),
                                                                      (True, 0, "cpu")), raster=plain, note=busy)
    if "lift" in sections:
        section_lift(rep, assets, model, work, sc, env_plain, note=busy, raster=plain, reserve=150 if build else 10)
    if "raster" in sections:
        section_raster(rep, sc, ["torch"])
    gsplat = finish_gsplat_build(rep, build, reserve=150) if "gsplat" in sections else False
    if gsplat:
        sys.path.insert(1, str(site_gs))
        section_cuda_tests(rep, env_gs)
        if "raster" in sections:
            section_raster(rep, sc, ["gsplat"])
        if "stage2" in sections:
            section_stage2(rep, scenes, model, work, sc, env_gs, runs=((True, 0, "device"), (True, 0, "cpu"),
                                                                       (True, sc.workers, "cpu")), raster="gsplat")
        if "lift" in sections:
            section_lift(rep, assets, model, work, sc, env_gs, raster="gsplat")
    if "demo" in sections:
        section_demo(rep, model, work, sc, env_gs if gsplat else env_plain, "gsplat" if gsplat else plain)
    if "stage2" in sections:
        section_torchrun(rep, scenes, model, work, sc, env_gs if gsplat else env_plain, "gsplat" if gsplat else plain)
    failed = [r for r in rep.rows if r["status"] == "FAIL"]
    print(f"\n{len(rep.rows) - len(failed)} ok, {len(failed)} failed; table: {out / 'gpu_check.md'}")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("prepare", "run"))
    ap.add_argument("--assets", default=str(ROOT / ".gpu"), help="folder of the prepared assets (default: .gpu)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check"),
                    help="where the table goes (default: $OUT, else runs/gpu_check)")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds after which remaining sections are skipped")
    ap.add_argument("--simulate-cpu", action="store_true",
                    help="run the GPU sections' code on the CPU at small sizes (no gsplat): a rehearsal of the script")
    ap.add_argument("--lift-max-frame", type=int, default=None,
                    help="lift RedKitchen frames up to this one only (default: every prepared frame, 0-396)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="the sections to run (default: all; a rerun of one after a fix)")
    args = ap.parse_args(argv)
    assets = Path(args.assets)
    if args.mode == "prepare":
        return prepare(assets)
    import torch

    if args.simulate_cpu:
        return run_gpu(assets, Path(args.out), args.budget, SIMULATE, tuple(args.sections))
    if not torch.cuda.is_available():
        return check_only(assets)
    lift_args = ("--max-frame", str(args.lift_max_frame)) if args.lift_max_frame is not None else ()
    return run_gpu(assets, Path(args.out), args.budget, Scale(lift_args=lift_args), tuple(args.sections))


if __name__ == "__main__":
    sys.exit(main())
