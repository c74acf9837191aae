"""What one Stage 2 target costs, piece by piece: read the view, cull, render, decode to the token grid.

    .venv/bin/python bench/stage2_target.py [--lifted DIR] [--views 20]

Default scene: ``bench/finetune.py``'s back-projected 7-Scenes scene (built there, under
runs/bench_finetune/). Per piece, CPU milliseconds a view (user + system over all threads), the median
of ``--repeats`` passes over ``--views`` training views at 224x168 (targets rendered at the lift
resolution, with the spread channel as the ``default`` recipe). Two references beside the pieces:
``decode, k*k interpolations`` (the decode before it became two matmuls: each shifted window
resized by ``F.interpolate``) and ``read with depth`` (the view read with its depth map, as before).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from fit3d.clock import cpu_seconds, machine
from fit3d.finetune.data import RenderedViews, decode_to_grid, load_scenes, with_square_norm

REPO = Path(__file__).resolve().parent.parent


def decode_by_interpolations(decoder, feats, size):
    """The reference: resize each of the k*k shifted windows of the padded input, then apply the taps."""
    conv = decoder.conv
    k, p = conv.kernel_size[0], conv.padding[0]
    B, f, H, W = feats.shape
    padded = F.pad(feats, (p, p, p, p))
    shifted = torch.stack([F.interpolate(padded[:, :, dy:dy + H, dx:dx + W], size=size, mode="bilinear",
                                         align_corners=False) for dy in range(k) for dx in range(k)], dim=2)
    return torch.einsum("dc,bchw->bdhw", conv.weight.reshape(conv.out_channels, -1), shifted.reshape(B, -1, *size))


def main(argv=None) -> int:
    from fit3d.data import read_scene
    from fit3d.finetune.data import _scene_path
    from fit3d.splat.render import render

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lifted", default=None, help="a lifted scene (default: bench/finetune.py's)")
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    lifted = Path(args.lifted) if args.lifted else next((REPO / "runs" / "bench_finetune").glob("redkitchen_*"), None)
    if lifted is None:
        raise SystemExit("no lifted scene: run bench/finetune.py once (it builds one) or pass --lifted")
    scenes = load_scenes([lifted], embed_dim=384, cache_dir=REPO / "runs" / "bench_stage2_target")
    views = RenderedViews(scenes, 14, resolution=[224, 168], with_spread=True)
    s = scenes[0]
    s.ensure_columns()
    Wr, Hr = views.render_size(0)
    items = range(min(args.views, len(views)))
    state: dict = {}

    def read(i, depth=False):
        si, name = views.entries[i]
        W, H = views.sizes[si]
        state["v"] = read_scene(_scene_path(s), layout=s.meta["scene"].get("layout", "auto"), resolution=(W, H),
                                names=[name], load_depth=depth).views[0]

    def cull(i):
        v = state["v"]
        import numpy as np
        state["K"] = np.diag([Wr / v.width, Hr / v.height, 1.0]) @ v.K
        state["g"] = s.visible(state["K"], v.c2w, Wr, Hr)

    def rast(i):
        state["r"] = render(with_square_norm(state["g"]), state["K"], state["v"].c2w, Wr, Hr, with_rgb=False)

    def decode(i, fn=decode_to_grid):
        feats = state["r"].features[..., :-1].permute(2, 0, 1)[None].float()
        fn(s.decoder, feats, (12, 16))

    pieces = {"read the view (no depth)": read, "read with depth (before)": lambda i: read(i, True),
              "cull (mapped columns)": cull, "render at the lift resolution": rast,
              "decode to the grid (2 matmuls)": decode,
              "decode, k*k interpolations (before)": lambda i: decode(i, decode_by_interpolations)}
    for i in items:  # warm-up (numba, caches) and the state each piece starts from
        for fn in pieces.values():
            fn(i)
    per = {k: [] for k in pieces}
    with torch.no_grad():
        for _ in range(args.repeats):
            for i in items:
                for k, fn in pieces.items():
                    c = cpu_seconds()
                    fn(i)
                    per[k].append(cpu_seconds() - c)
    m = machine()
    print(f"\nStage 2 target pieces on {lifted.name} ({len(s):,} Gaussians, rendered at {Wr}x{Hr}, {s.decoder.conv.kernel_size[0]}x"
          f"{s.decoder.conv.kernel_size[0]} decoder), {len(items)} views x {args.repeats}; {m['cpus']} cores, load {m['load']}")
    print("| piece | CPU ms a view (median) | mean |")
    print("|---|---|---|")
    for k, v in per.items():
        print(f"| {k} | {1000 * statistics.median(v):.1f} | {1000 * statistics.mean(v):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
