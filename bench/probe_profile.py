"""Where the two largest probe stages of ``bench/generalize.py`` spend their CPU: a batched depth-head step
and the flowers classification probe.

    .venv/bin/python bench/probe_profile.py [--iterations 40] [--photos 128] [--threads 2]
    .venv/bin/python bench/probe_profile.py --autocast --iterations 20   # float32 vs bf16 autocast depth heads
    .venv/bin/python bench/probe_profile.py --heads --iterations 40      # an iteration of the depth / seg heads
    .venv/bin/python bench/probe_profile.py --loss --iterations 60       # the depth loss: tensor ops vs fused, A/B
    .venv/bin/python bench/probe_profile.py --rounding --iterations 400  # float32 rounding's reach in the heads

- depth: ``fit3d.probe.batched.train_depth_batched`` as the full-scale sun3d evals run it (3 seeds x 4 sources:
  original / fine-tuned 384 wide, concat / width control 768 wide and made of those two, as
  ``bench/generalize.py`` makes them; 12x16 tokens, 168x224 labels, batch 8,
  ``DepthSettings`` defaults) on random tokens, under cProfile (its own overhead lands in "everything else"):
  the share of the heads' products forward (matmuls and einsums), autograd's backward (their weight gradients
  and the loss's), the
  numba bin tail (``fit3d.probe.depth_bins``) and the rest (gathers, losses, AdamW, Python);
- flowers: decoding + DINO's resize / crop of ``--photos`` flowers photos, DINOv2-S [CLS] features of them at
  224x224 (batch 32), and the k-NN + linear heads of 4 sources x 3 seeds on random features of the full
  flowers split sizes.

Prints one table: wall and CPU seconds per part (CPU = user + system of this process).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from fit3d.clock import cpu_seconds, machine


def _timed(fn):
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, cpu_seconds() - c0


def sources(n: int = 64, g: torch.Generator | None = None) -> tuple[list, list]:
    """(patches, clss) of the four sources as ``bench/generalize.py`` builds them, on random tokens: original and
    fine-tuned 384 wide, concat = (original, fine-tuned) and the width control = (original, original) 768 wide,
    the last two with the original's [CLS]; 12 x 16 tokens (224 x 168)."""
    g = g or torch.Generator().manual_seed(0)
    o, f = (torch.randn(n, 384, 12, 16, generator=g) for _ in range(2))
    co, cf = (torch.randn(n, 384, generator=g) for _ in range(2))
    return [o, f, torch.cat([o, f], 1), torch.cat([o, o], 1)], [co, cf, co, co]


def depth_problem(iterations: int) -> tuple:
    """(patches, clss, depth, settings) of the full-scale sun3d evals' batched depth step, on random tokens."""
    from fit3d.probe.depth import DepthSettings

    g = torch.Generator().manual_seed(0)
    patches, clss = sources(64, g)
    depth = torch.rand(64, 168, 224, generator=g) * 5 + 0.5
    return patches, clss, depth, [DepthSettings(iterations=iterations, seed=s) for s in range(3)]


def loss_rows(iterations: int, rounds: int = 3) -> list[tuple]:
    """The depth-head step with the loss as tensor ops (``batched._depth_losses``) and fused (``depth_loss``),
    interleaved ``rounds`` times; the mean of each. A lever's A/B in one process."""
    from fit3d.probe import batched

    fused = batched.depth_losses
    args = depth_problem(iterations)
    batched.train_depth_batched(*depth_problem(2))  # numba's compilation / cache load
    times: dict = {"tensor ops": [], "fused (numba)": []}
    try:
        for _ in range(rounds):
            for name, fn in (("tensor ops", batched._depth_losses), ("fused (numba)", fused)):
                batched.depth_losses = fn
                _, w, c = _timed(lambda: batched.train_depth_batched(*args))
                times[name].append((w / iterations, c / iterations))
    finally:
        batched.depth_losses = fused
    rows = [(f"depth heads x12, loss as {k}, an iteration ({rounds} x {iterations})",
             sum(w for w, _ in v) / rounds, sum(c for _, c in v) / rounds, "") for k, v in times.items()]
    rows[1] = rows[1][:3] + (f"{rows[1][2] / rows[0][2]:.2f}x the CPU s",)
    return rows


def rounding_rows(iterations: int) -> list[tuple]:
    """How far float32 rounding alone moves the depth heads: the heads trained on the bench's sources and on the
    same with the original's tokens times (1 + 1e-7 noise); relative weight difference, largest over the heads."""
    from fit3d.probe.batched import train_depth_batched

    patches, clss, depth, settings = depth_problem(iterations)
    noise = torch.randn(patches[0].shape, generator=torch.Generator().manual_seed(9))
    o = patches[0] * (1 + 1e-7 * noise)
    moved = [o, patches[1], torch.cat([o, patches[1]], 1), torch.cat([o, o], 1)]
    a = [h.conv.weight.detach() for h, _ in train_depth_batched(patches, clss, depth, settings)]
    b = [h.conv.weight.detach() for h, _ in train_depth_batched(moved, clss, depth, settings)]
    rel = max(float((x - y).norm() / y.norm()) for x, y in zip(b, a))
    return [(f"depth heads x12 after {iterations} iterations: tokens x (1 + 1e-7 noise)", 0.0, 0.0,
             f"weights moved {100 * rel:.2f}% (relative norm, largest head)")]


def heads_rows(iterations: int, rounds: int = 2) -> list[tuple]:
    """CPU / wall seconds an iteration of the 12 batched depth heads and of 12 seg heads (CamVid's 11 classes,
    168 x 224 labels) on the four sources; the last of ``rounds`` runs each (the first pays one-off start-up)."""
    from fit3d.probe.batched import train_depth_batched, train_seg_batched
    from fit3d.probe.seg import SegSettings

    dp = depth_problem(iterations)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 11, (64, 168, 224), generator=g)
    seg = [SegSettings(iterations=iterations, seed=s) for s in range(3)]
    last = {}
    for _ in range(rounds):
        _, w, c = _timed(lambda: train_depth_batched(*dp))
        last["depth heads x12 (sun3d evals)"] = (w, c)
        _, w, c = _timed(lambda: train_seg_batched(dp[0], labels, 11, seg))
        last["seg heads x12 (CamVid)"] = (w, c)
    return [(f"{k}, an iteration ({iterations} timed)", w / iterations, c / iterations, "")
            for k, (w, c) in last.items()]


def autocast_rows(iterations: int, rounds: int = 2) -> list[tuple]:
    """The same depth heads in float32 and in bf16 autocast around the whole trainer, alternating ``rounds`` times;
    the last round of each (the first pays one-off start-up). A lever measured, not used by the probes."""
    from fit3d.probe.batched import train_depth_batched

    args = depth_problem(iterations)
    last = {}
    for _ in range(rounds):
        for amp in (False, True):
            def run(amp=amp):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    train_depth_batched(*args)
            _, wall, cpu = _timed(run)
            last[amp] = (wall, cpu)
    return [(f"depth heads x12, {iterations} iterations, {'bf16 autocast' if amp else 'float32'}", w, c,
             "" if not amp else f"{c / last[False][1]:.2f}x the float32 CPU s") for amp, (w, c) in last.items()]


def depth_rows(iterations: int) -> list[tuple]:
    from fit3d.probe.batched import train_depth_batched

    patches, clss, depth, settings = depth_problem(iterations)
    prof = cProfile.Profile()
    _, wall, cpu = _timed(lambda: (prof.enable(), train_depth_batched(patches, clss, depth, settings), prof.disable()))
    st = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    tot = sum(v[2] for v in st.values())
    einsum = sum(v[2] for k, v in st.items() if k[2] in ("<built-in method torch.einsum>", "<built-in method torch.matmul>"))
    tail = sum(v[2] for k, v in st.items() if k[0].endswith("depth_bins.py") and k[2] in ("_forward", "_backward"))
    # autograd's engine: the products' weight gradients and the loss's backward (its C++ time, not split further)
    backward = sum(v[2] for k, v in st.items() if "run_backward" in k[2])
    rows = [("depth step: products forward (heads' matmuls / einsums, resizes)", einsum / tot),
            ("depth step: autograd backward (weight grads + loss)", backward / tot),
            ("depth step: numba bin tail (fwd + bwd)", tail / tot),
            ("depth step: everything else", 1 - (einsum + backward + tail) / tot)]
    out = [(f"depth heads x12, {iterations} iterations", wall, cpu, "")]
    out += [(name, share * wall / iterations, share * cpu / iterations, f"{100 * share:.0f}% of a step")
            for name, share in rows]
    return out


def flowers_rows(photos: int) -> list[tuple]:
    from fit3d.models import load_backbone
    from fit3d.paths import shared_dir, shared_model_dir
    from fit3d.probe.cls import ClsSettings, cls_stats, extract_cls, load_image, read_image_folder

    tr = read_image_folder(shared_dir() / "data" / "flowers", "train")
    te = read_image_folder(shared_dir() / "data" / "flowers", "test", class_names=tr.class_names)
    sub = tr.subset(range(0, len(tr), max(1, len(tr) // photos)))
    _, dw, dc = _timed(lambda: [load_image(p, 224) for p in sub.paths])
    bb = load_backbone("dinov2_small", model_path=str(shared_model_dir())).eval()
    _, fw, fc = _timed(lambda: extract_cls(bb, sub, 224))
    g = torch.Generator().manual_seed(0)
    y, yt = torch.from_numpy(tr.labels), torch.from_numpy(te.labels)
    xs = {f"s{w}_{i}": torch.randn(len(tr), w, generator=g) for i, w in enumerate((384, 384, 768, 768))}
    xt = {k: torch.randn(len(te), v.shape[1], generator=g) for k, v in xs.items()}
    cfgs = [ClsSettings(iterations=1000, seed=s) for s in range(3)]
    _, hw, hc = _timed(lambda: cls_stats(xs, y, xt, yt, len(tr.class_names), cfgs))
    n = len(sub)
    total = 2 * (len(tr) + len(te))
    return [(f"flowers: decode + resize / crop, per photo ({n})", dw / n, dc / n, ""),
            (f"flowers: DINOv2-S [CLS] at 224x224, per photo ({n}, batch 32)", fw / n, fc / n,
             f"x {total} forwards a run = {fc / n * total:.0f} CPU s"),
            (f"flowers: k-NN + linear heads, 4 sources x 3 seeds ({len(tr)} -> {len(te)})", hw, hc, "")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=40, help="depth-head iterations profiled")
    ap.add_argument("--photos", type=int, default=128, help="flowers photos through the backbone")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--autocast", action="store_true",
                    help="only time the depth heads in float32 against bf16 autocast (docs/speed.md section 11)")
    ap.add_argument("--heads", action="store_true",
                    help="only time an iteration of the batched depth and seg heads (docs/speed.md section 14)")
    ap.add_argument("--loss", action="store_true",
                    help="only the depth step with its loss as tensor ops against fused, interleaved (section 14)")
    ap.add_argument("--rounding", action="store_true",
                    help="only how far a 1e-7 change of the tokens moves the depth heads (float32, section 14)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.heads:
        rows = heads_rows(args.iterations)
    elif args.loss:
        rows = loss_rows(args.iterations)
    elif args.rounding:
        rows = rounding_rows(args.iterations)
    elif args.autocast:
        rows = autocast_rows(args.iterations)
    else:
        rows = depth_rows(args.iterations) + flowers_rows(args.photos)
    print(f"{args.threads} torch threads; {machine()}\n")
    print("| part | wall s | CPU s | note |\n|---|---|---|---|")
    for name, w, c, note in rows:
        print(f"| {name} | {w:.4f} | {c:.4f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
