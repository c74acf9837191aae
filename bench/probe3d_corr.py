"""probe3d-style correspondence of DINOv2-S on RedKitchen and the SUN3D office, next to trivial baselines.

    PYTHONPATH=. .venv/bin/python bench/probe3d_corr.py [--resolution 448 336] [--stride 2] [--pairs-per-bin 50]

Features of the test views (RedKitchen frames 400-498; every frame of sun3d-office, which no stage
trains on) from: the shared DINOv2-S (last layer), the same architecture with random weights (seed 0),
and raw RGB patches (each 14x14 patch's pixels as its feature). Pairs, matching and recall as
``fit3d.probe.corr_probe3d`` (docs/probe3d-corr.md); prints the tables and writes docs/probe3d-corr.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fit3d.io import write_text
from fit3d.paths import REPO_ROOT, shared_7scenes_dir, shared_dir, shared_model_dir
from fit3d.probe.corr_probe3d import Probe3DSettings, draw_pairs, evaluate_probe3d, quarter_views
from fit3d.probe.datasets import load_probe_data
from fit3d.probe.features import extract_features
from fit3d.probe.report import markdown_table


class RGBPatches:
    """Raw colour as features: each patch's pixels flattened (a position-free appearance baseline)."""

    patch_size = 14

    def features(self, images, layers=None):
        p = F.unfold(images.float(), self.patch_size, stride=self.patch_size)  # [B, 3*14*14, h*w]
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        p = p - p.mean(1, keepdim=True)  # cosine on mean-removed colour
        return p.reshape(len(images), -1, h, w), p.mean(2)


def random_vit(tmp: Path):
    """DINOv2-S's architecture with random weights (seed 0)."""
    from transformers import Dinov2Config, Dinov2Model

    from fit3d.models import load_backbone

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config.from_pretrained(str(shared_model_dir()))).save_pretrained(str(tmp))
    return load_backbone("dinov2_small", model_path=str(tmp))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, nargs=2, default=[448, 336])
    ap.add_argument("--stride", type=int, default=3, help="every n-th valid pixel of the quarter-res views")
    ap.add_argument("--pairs-per-bin", type=int, default=25)
    ap.add_argument("--redkitchen-frames", type=int, nargs=2, default=[0, 498])
    ap.add_argument("--num-corr", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--doc", default=str(REPO_ROOT / "docs" / "probe3d-corr.md"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from fit3d.models import load_backbone

    # every frame of each scene: no model here was trained on them, and RedKitchen's 400-498 alone has no
    # pair beyond 30 degrees (for a model fine-tuned on frames 0-398 use --redkitchen-frames 400-498)
    lo, hi = a.redkitchen_frames
    scenes = {f"7scenes-redkitchen (frames {lo}-{hi})": (shared_7scenes_dir(), (lo, hi)),
              "sun3d-office (all 100 frames)": (shared_dir() / "data" / "sun3d-office", (0, 10 ** 9))}
    s = Probe3DSettings(num_corr=a.num_corr, pairs_per_bin=a.pairs_per_bin, point_stride=a.stride)
    res = tuple(a.resolution)
    command = "PYTHONPATH=. .venv/bin/python bench/probe3d_corr.py " + " ".join(sys.argv[1:])
    tables, t0 = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        models = {"DINOv2-S (original)": load_backbone("dinov2_small", model_path=str(shared_model_dir())),
                  "baseline: random-init ViT-S/14": random_vit(Path(tmp)), "baseline: RGB patches": RGBPatches()}
        for scene, (path, frames) in scenes.items():
            kw = dict(train_frames=(0, 0), test_frames=frames)
            data = load_probe_data(path, "test", res, **kw)
            images = [data.view(i).image for i in range(len(data))]
            views = quarter_views(path, data, **kw)
            pairs = draw_pairs(views, s)
            results = {}
            for name, model in models.items():
                patch, _ = extract_features(model, images, 8, desc=f"{name} {scene}")
                results[name] = evaluate_probe3d(patch, views, pairs, s)
                print(f"{scene} {name}: {results[name]['recall@10px']:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
            tables[scene] = (markdown_table("corr", results, "probe3d"), len(data), len(pairs), views[0])
    lines = ["# probe3d-style correspondence (El Banani et al., CVPR 2024) on the shared scenes", "",
             "Produced by (CPU, 2 shared cores):", "", "```", command, "```", "",
             f"Features at {res[0]}x{res[1]} input (DINOv2-S/14: {res[0] // 14}x{res[1] // 14} patches), last layer. "
             "Points: valid-depth pixels of the quarter-resolution views "
             f"(every {a.stride}. pixel along rows and columns; 160x120 for both scenes' 640x480 frames), "
             "features bilinearly sampled there; mutual nearest neighbours by cosine, ranked by the ratio-test "
             f"weight 1 - d1/d2, top {a.num_corr} kept per pair; recall = share of kept matches whose "
             "reprojection error (GT depth + poses) is under 5 / 10 / 20 px of the quarter-resolution image. "
             f"Pairs: up to {a.pairs_per_bin} per relative-rotation bin among all pairs of test views whose overlap "
             f"is at least {s.min_overlap:g} (seed {s.seed}).", ""]
    for scene, (table, n, npairs, v) in tables.items():
        lines += [f"## {scene} ({n} test views, {npairs} pairs)", "", table]
    lines += ["## How to read it", "",
              "- Baselines: a random-weight ViT-S/14 keeps only what architecture and patch position give; raw RGB "
              "patches keep only appearance. Small camera motion rewards position priors (a feature that encodes "
              "where in the image a patch is matches the same image position, right when the camera barely "
              "moved), so compare bins, not only the overall number.",
              "- A bin's number is the mean over its pairs of recall@10px; `-` = no pair of the scene in that bin.",
              "- Protocol details and differences from probe3d: `fit3d/probe/corr_probe3d.py`. The same measure for "
              "any model: `fit3d probe --task corr --protocol probe3d --data DIR [--test-frames A-B] "
              "[--corr-stride 2]`.",
              f"- CPU budget: every {a.stride}. quarter-resolution pixel along rows and columns is a point (probe3d "
              f"uses all); candidates are then {a.stride} px apart, under the 5 px threshold.", "",
              "## Which correspondence protocol is the default", "",
              "`fit3d probe --task corr` keeps `--protocol fit3d` (grid queries, frame-gap pairs, recall within "
              "1 / 2 / 4 patch widths) as the default: every correspondence number already in `docs/` and the "
              "pipeline's headline `corr_recall1` are in it, it scores every visible query (no ratio-test "
              "selection, so a model cannot raise its score by being confident on a few easy points) and it is "
              "cheap. `--protocol probe3d` is the one to quote against the literature (probe3d, MEF): its pixel "
              "thresholds and rotation bins are the field's, and its large-rotation bins are where a 3D-aware "
              "model should differ; report both when claiming a correspondence gain.", ""]
    write_text(a.doc, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
