"""How much of a view's Stage 2 target its own back-projected Gaussians make: the target rendered from every
Gaussian (FiT3D) against the target without the view's own (``--finetune.target-views others``) and without the
Gaussians of its ``w`` neighbouring training views on each side too (capture order), on the proof's lifts:

    python bench/target_views.py --scenes-dir S --cache-dir C [--rooms 3] [--every 4] [--windows 0 3 10 25]

Per scene and window: the share of tokens still covered (mask), the cosine between the two targets over the tokens
both cover, and each target's cosine to the original's tokens of the view. Lifts through ``bench/generalize.py``'s
``lift_all`` (the same folders: a lift without per-view Gaussians is lifted again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.generalize as G  # noqa: E402
from fit3d.finetune.data import RenderedViews, load_scenes  # noqa: E402
from fit3d.models import load_backbone  # noqa: E402
from fit3d.paths import shared_7scenes_dir  # noqa: E402


def _cos(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> float:
    return float(F.cosine_similarity(a[:, m], b[:, m], dim=0).mean())


def compare(views: RenderedViews, backbone, every: int, windows: list[int]) -> dict[int, np.ndarray]:
    """{window: [items, 4] (covered share, cos(all, without), cos(all, original), cos(without, original))}."""
    out: dict[int, list] = {w: [] for w in windows}
    for i in range(0, len(views), every):
        si, name = views.entries[i]
        rows = views.scenes[si].view_rows()  # the training views' rows, in capture order and PLY order alike
        names = list(rows)
        k = names.index(name)
        v = views.read_view(i)
        full = views.render_target(i, v.K, v.c2w)
        x = backbone.features(torch.from_numpy(v.image).permute(2, 0, 1)[None].float())[0][0]
        for w in windows:  # left out: the rows of views k-w .. k+w, one contiguous run of the PLY
            t = views.render_target(i, v.K, v.c2w, (rows[names[max(0, k - w)]][0],
                                                    rows[names[min(len(names) - 1, k + w)]][1]))
            m = full["mask"] & t["mask"]
            out[w].append((float(t["mask"].float().mean()), _cos(full["target"], t["target"], m),
                           _cos(full["target"], x, m), _cos(t["target"], x, m)))
    return {w: np.asarray(r) for w, r in out.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes-dir", type=Path, required=True, help="bench/generalize.py's --scenes-dir (lifts)")
    ap.add_argument("--cache-dir", type=Path, required=True, help="its token cache")
    ap.add_argument("--rooms", type=int, default=3, help="generated rooms of SCENES/rooms/lift compared")
    ap.add_argument("--every", type=int, default=4, help="every k-th training view of a scene")
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 3, 10, 25])
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    cfg = G.GeneralizeConfig(cache_dir=str(a.cache_dir), precision="fp32", set=["target_views=others"])
    bb = load_backbone("dinov2_small", model_path=cfg.model_path)
    scenes = [("redkitchen", shared_7scenes_dir(), 398)] + [
        (p.name, p, None) for p in sorted((a.scenes_dir / "rooms" / "lift").glob("synthetic_*"))[:a.rooms]]
    print("| scene | window | covered | cos(all, without) | cos(all, original) | cos(without, original) |")
    print("|---|---|---|---|---|---|")
    for name, path, max_frame in scenes:
        d = G.lift_all(cfg, [(name, path, max_frame)], a.scenes_dir, bb)
        views = RenderedViews(load_scenes(d, embed_dim=bb.embed_dim, cache_dir=a.scenes_dir / "columns"),
                              bb.patch_size, resolution=list(cfg.probe_resolution), flip_prob=0.0)
        for w, r in compare(views, bb, a.every, a.windows).items():
            print(f"| {name} | {w} | " + " | ".join(f"{x:.4f}" for x in r.mean(0)) + " |", flush=True)


if __name__ == "__main__":
    main()
