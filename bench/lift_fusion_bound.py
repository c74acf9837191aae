"""How well can a 3D-consistent feature field do on Stage 1's held-out views? A geometric oracle.

    .venv/bin/python bench/lift_fusion_bound.py --lift runs/bench_lift_5000

For every held-out view of a 7-Scenes lift (its backbone tokens, read back from its token cache by
``fit3d.lift.targets.lifted_targets``), each token centre with sensor depth is back-projected and looked
up in the k nearest training views (bilinear sampling of their token grids, visibility by a 5% depth check against their sensor depth);
the fused estimate is the mean over the views that see the point. Prints the mean cosine to the
held-out tokens for several k next to the nearest-view baseline on the same tokens. This needs sensor
depth for every view, which a lift does not, so it bounds what consistent features could reach rather
than being a method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fit3d.data import read_scene  # noqa: E402
from fit3d.data.readers import frame_number  # noqa: E402
from fit3d.paths import shared_7scenes_dir  # noqa: E402
from fit3d.lift.targets import lifted_targets  # noqa: E402
from fit3d.lift.evaluate import pose_distance
from fit3d.lift.init import split_views  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lift", required=True, help="a bench/lift_7scenes.py output folder (its cache/ is read)")
    ap.add_argument("--data", default=str(shared_7scenes_dir()))
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--max-frame", type=int, default=398)
    ap.add_argument("--depth-tol", type=float, default=0.05)
    args = ap.parse_args()
    cache = lifted_targets(args.lift)  # the lift's targets, read back from its token cache
    h, w = cache.grid_size
    D = cache.dim
    scale = 4  # views read at 4 px per token: token j spans pixels [4j, 4j + 4), its centre is x = 4j + 2
    scene = read_scene(args.data, resolution=(w * scale, h * scale))
    views = [v for v in scene.views if frame_number(v.name) <= args.max_frame]
    train, held = split_views([v.name for v in views], 8)
    fused = {k: [] for k in args.k}
    nearest = []
    ys, xs = np.meshgrid(np.arange(h) * scale + scale // 2, np.arange(w) * scale + scale // 2, indexing="ij")
    for i in held:
        v = views[i]
        tgt = cache.grid(cache.index(v.name)).reshape(D, -1)  # [D, h*w]
        dep = v.depth[ys, xs]
        ok = (dep > 0).reshape(-1)
        pts = v.unproject(np.stack([xs.reshape(-1)[ok], ys.reshape(-1)[ok]], 1).astype(np.float64), dep.reshape(-1)[ok])
        target = tgt[:, torch.from_numpy(ok)]  # [D, M]
        order = sorted(train, key=lambda j: pose_distance(views[j].c2w, v.c2w, 1.0))
        acc, cnt = torch.zeros(D, len(pts)), torch.zeros(len(pts))
        for n, j in enumerate(order[:max(args.k)]):
            u = views[j]
            w2c = np.linalg.inv(u.c2w)
            pc = pts @ w2c[:3, :3].T + w2c[:3, 3]  # [M, 3] in u's camera
            z = pc[:, 2]
            px = u.K[0, 0] * pc[:, 0] / z + u.K[0, 2]
            py = u.K[1, 1] * pc[:, 1] / z + u.K[1, 2]
            W, H = w * scale, h * scale
            inb = (z > 0) & (px >= 0) & (px < W) & (py >= 0) & (py < H)
            du = u.depth[np.clip(py.astype(int), 0, H - 1), np.clip(px.astype(int), 0, W - 1)]
            vis = torch.from_numpy(inb & (du > 0) & (np.abs(du - z) < args.depth_tol * z))
            grid = torch.tensor(np.stack([px / W * 2 - 1, py / H * 2 - 1], 1), dtype=torch.float32)[None, None]
            samp = F.grid_sample(cache.grid(cache.index(u.name))[None], grid, align_corners=False)[0, :, 0]  # [D, M]
            acc[:, vis] += samp[:, vis]
            cnt[vis] += 1
            if n + 1 in fused:
                seen = cnt > 0
                est = acc[:, seen] / cnt[seen]
                fused[n + 1].append(float(F.cosine_similarity(est, target[:, seen], dim=0).mean()))
        near = cache.grid(cache.index(views[order[0]].name)).reshape(D, -1)[:, torch.from_numpy(ok)]
        nearest.append(float(F.cosine_similarity(near, target, dim=0).mean()))
    print(f"7-Scenes held-out views: {len(held)}, tokens with sensor depth only")
    print("| estimate | mean cosine to the held-out tokens |\n|---|---|")
    print(f"| nearest training view, same token positions (the lift's baseline) | {np.mean(nearest):.4f} |")
    for k in args.k:
        print(f"| fused at the back-projected point, k = {k} nearest training views | {np.mean(fused[k]):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
