"""Probe outputs: ``probe.json`` (metrics per feature source + exact settings), a markdown table, and a
PNG figure of predictions next to ground truth (composed with ``fit3d.viz.images``; matplotlib is not a
dependency).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from fit3d.io import write_json, write_text
from fit3d.viz.images import (add_colorbar, colorize_depth, colorize_labels, depth_range, hstack, save_png, to_uint8,
                              upsample, vstack)
from fit3d.viz.scene import legend

COLUMNS = {
    "depth": ["rmse", "abs_rel", "sq_rel", "log10", "rmse_log", "delta1", "delta2", "delta3"],
    "seg": ["miou", "macc", "aacc"],
    "corr": ["recall@1", "recall@2", "recall@4"],
    "corr-probe3d": ["recall@5px", "recall@10px", "recall@20px"],
    "cls": ["knn_top1", "linear_top1"],
}
LOWER_IS_BETTER = {"rmse", "abs_rel", "sq_rel", "log10", "rmse_log"}


def seed_summary(per_seed: dict[int, dict], keys) -> dict:
    """Mean over seeds of each metric in ``keys`` (the reported number), ``std`` (sample std, 0 for one
    seed) and ``per_seed`` {seed: metrics}."""
    out, std = {}, {}
    for k in keys:
        vals = [m[k] for m in per_seed.values() if k in m]
        if vals:
            out[k] = float(np.mean(vals))
            std[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    out.update(std=std, seeds=list(per_seed), per_seed={str(s): m for s, m in per_seed.items()})
    return out


def _fmt(x) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4f}"
    return str(x)


def _cell(m: dict, c: str) -> str:
    """The metric, with ``± std`` over seeds when the row holds several seeds."""
    v = _fmt(m.get(c, float("nan")))
    if len(m.get("seeds", ())) > 1 and c in m.get("std", {}):
        v += f" ± {m['std'][c]:.4f}"
    return v


def markdown_table(task: str, results: dict[str, dict], corr_protocol: str = "fit3d") -> str:
    """One row per feature source (and baseline), one column per metric (arrows say which way is better);
    with several seeds each cell is mean ± std over seeds."""
    if task == "corr" and corr_protocol == "probe3d":
        return _probe3d_table(results)
    cols = COLUMNS[task]
    head = "| features | " + " | ".join(c + (" ↓" if c in LOWER_IS_BETTER else " ↑") for c in cols) + " |"
    ckpt = any("best_iteration" in m for m in results.values())  # heads chosen on a validation split
    if ckpt:
        head += " best iteration (val abs rel) |"
    lines = [head, "|" + "---|" * (len(cols) + 1 + ckpt)]
    for name, m in results.items():
        row = f"| {name} | " + " | ".join(_cell(m, c) for c in cols) + " |"
        if ckpt:
            row += (f" {m['best_iteration']} ({m['val_abs_rel']:.4f}) |" if "best_iteration" in m else " - |")
        lines.append(row)
    if task == "corr":  # per-bin breakdown
        for key, title in (("by_gap", "frame gap"), ("by_rotation", "relative rotation")):
            bins = sorted({b for m in results.values() for b in m.get(key, {})},
                          key=lambda b: list(next(m for m in results.values() if b in m.get(key, {}))[key]).index(b))
            if not bins:
                continue
            lines += ["", f"Recall@1 / @2 / @4 by {title} (pairs, matches):", "",
                      "| features | " + " | ".join(bins) + " |", "|" + "---|" * (len(bins) + 1)]
            for name, m in results.items():
                cells = []
                for b in bins:
                    r = m.get(key, {}).get(b)
                    cells.append("-" if r is None else f"{r['recall@1']:.3f} / {r['recall@2']:.3f} / "
                                 f"{r['recall@4']:.3f} ({r['pairs']}, {r['matches']})")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _probe3d_table(results: dict[str, dict]) -> str:
    """probe3d correspondence: recall within 5 / 10 / 20 px overall, then recall@10px per rotation bin."""
    cols = COLUMNS["corr-probe3d"]
    bins = list(dict.fromkeys(b for m in results.values() for b in m.get("by_rotation", {})))
    lines = ["| features | " + " | ".join(c + " ↑" for c in cols) + " | " + " | ".join(f"{b} @10px" for b in bins)
             + " |", "|" + "---|" * (len(cols) + len(bins) + 1)]
    for name, m in results.items():
        cells = [_fmt(m.get(c, float("nan"))) for c in cols]
        for b in bins:
            r = m.get("by_rotation", {}).get(b)
            cells.append("-" if not r or not r["pairs"] else f"{r['recall@10px']:.4f} ({r['pairs']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(per rotation bin: mean over pairs of recall@10px, number of pairs)\n"


def write_report(out_dir: str | Path, task: str, results: dict[str, dict], settings: dict, extra: dict | None = None,
                 command: str | None = None, corr_protocol: str = "fit3d", extra_md: str | None = None) -> str:
    """Write ``probe.json`` and ``probe.md`` (``extra_md``, e.g. an intervals table, after the table); return
    the markdown table."""
    out = Path(out_dir)
    table = markdown_table(task, results, corr_protocol)
    write_json(out / "probe.json", {"task": task, "metrics": results, "settings": settings, **(extra or {}),
                                    **({"command": command} if command else {})})
    md = [f"# fit3d probe: {task}", ""]
    if command:
        md += ["```", command, "```", ""]
    md += [table, ""] + ([extra_md, ""] if extra_md else []) + ["Settings:", "", "```json"]
    import json

    md += [json.dumps(settings, indent=2, default=str), "```", ""]
    write_text(out / "probe.md", "\n".join(md))
    return table


# ------------------------------------------------------------------------------------------------ figures
# Pictures are composed with fit3d.viz.images (titled panels, one depth colour scale with a colour bar,
# the fixed label palette of the synthetic scenes' figures) so probe and compare figures read alike.


def _panel(image: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    """uint8 [height, w, 3], aspect kept; ``nearest`` for depth / label maps so pixels stay crisp."""
    h, w = image.shape[:2]
    return upsample(image, height, max(1, round(w * height / h)), nearest=nearest)


def depth_figure(images, names, gt: torch.Tensor, preds: dict[str, torch.Tensor], idx, min_depth: float,
                 max_depth: float, crop: str | None = None, panel_height: int = 200) -> np.ndarray:
    """Rows image | ground truth | each source's prediction (per-image RMSE / abs rel in the title), all
    depth maps on one colour scale (percentiles of the shown ground truth) with a colour bar per row.

    images [H, W, 3] float 0-1 per test image; gt [N, H, W]; preds {source: [N, H, W]} metres.
    """
    from fit3d.probe.depth import depth_metrics

    idx = [int(i) for i in idx]
    lo, hi = depth_range([gt[i].numpy() for i in idx])
    hi = max(min(hi, max_depth), lo + 1e-6)
    rows = []
    for i in idx:
        tiles = [_panel(to_uint8(images[i]), panel_height, False),
                 _panel(colorize_depth(gt[i].numpy(), lo, hi), panel_height, True)]
        titles = [str(names[i]), "ground truth"]
        for k, p in preds.items():
            m = depth_metrics(p[i:i + 1], gt[i:i + 1], min_depth, max_depth, crop)
            tiles.append(_panel(colorize_depth(p[i].numpy(), lo, hi), panel_height, True))
            titles.append(f"{k}: rmse {m['rmse']:.2f} m, rel {m['abs_rel']:.2f}")
        rows.append(add_colorbar(hstack(tiles, titles), lo, hi, panel_height))
    return vstack(rows)


def seg_figure(images, names, labels: torch.Tensor, preds: dict[str, torch.Tensor], idx, num_classes: int,
               class_names: list[str] | None = None, ignore_index: int = 255, panel_height: int = 200) -> np.ndarray:
    """Rows image | ground truth | each source's prediction (per-image mIoU in the title), coloured with
    ``fit3d.viz.images.LABEL_PALETTE`` (ignored pixels black), and a legend of the classes shown.

    labels [N, H, W] int; preds {source: [N, H, W]} class ids.
    """
    from fit3d.probe.seg import confusion_matrix, seg_metrics

    idx = [int(i) for i in idx]
    rows, present = [], set()
    for i in idx:
        gt = labels[i].numpy()
        tiles = [_panel(to_uint8(images[i]), panel_height, False), _panel(colorize_labels(gt), panel_height, True)]
        titles = [str(names[i]), "ground truth"]
        present |= set(np.unique(gt).tolist())
        for k, p in preds.items():
            m = seg_metrics(confusion_matrix(p[i], labels[i], num_classes, ignore_index))
            tiles.append(_panel(colorize_labels(p[i].numpy()), panel_height, True))
            titles.append(f"{k}: mIoU {m['miou']:.2f}")
            present |= set(np.unique(p[i].numpy()).tolist())
        rows.append(hstack(tiles, titles))
    ids = sorted(int(c) for c in present if 0 <= c < num_classes and c != ignore_index)
    names_c = list(class_names or []) or [f"class {c}" for c in range(num_classes)]
    rows.append(legend(names_c, ids, max(r.shape[1] for r in rows)))
    return vstack(rows)


def match_tile(img_a: np.ndarray, img_b: np.ndarray, ex: dict, patch: float, max_lines: int = 60,
               height: int | None = None, within: float = 2.0) -> np.ndarray:
    """Pair side by side with sampled matches: green = within ``within`` patches of the truth, red = wrong.
    ``height`` resizes the images first so lines stay thin. (fit3d.viz has no match drawing: lines are
    drawn with cv2 on viz's uint8 images.)"""
    a, b = to_uint8(img_a), to_uint8(img_b)
    s = 1.0 if height is None else height / a.shape[0]
    if s != 1.0:
        a, b = _panel(a, height, False), _panel(b, height, False)
    canvas = np.ascontiguousarray(np.concatenate([a, b], 1))
    W = a.shape[1]
    idx = np.linspace(0, len(ex["err"]) - 1, min(max_lines, len(ex["err"]))).round().astype(int)
    for k in idx:
        q, p = np.asarray(ex["queries"][k], float) * s, np.asarray(ex["pred"][k], float) * s
        col = (0, 220, 0) if ex["err"][k] <= within * patch else (230, 30, 30)
        cv2.line(canvas, (int(q[0]), int(q[1])), (int(p[0]) + W, int(p[1])), col, 1, cv2.LINE_AA)
    return canvas


def corr_figure(images, names, examples: dict[str, list], n: int, panel_height: int = 200) -> np.ndarray:
    """One row per (source, example pair): the pair with its sampled matches, titled with the source, the
    frames and the pair's share of correct matches (green lines)."""
    rows = []
    for src, ex in examples.items():
        for e in ex[:n]:
            ok = float(np.mean(np.asarray(e["err"]) <= 2 * e["patch"])) if len(e["err"]) else float("nan")
            tile = match_tile(images[e["a"]], images[e["b"]], e, e["patch"], height=panel_height)
            title = f"{src}: {names[e['a']]} -> {names[e['b']]} ({ok:.0%} within 2 patches)"
            rows.append(hstack([tile], [title]))
    return vstack(rows)


def write_figure(path: str | Path, figure: np.ndarray) -> None:
    """Write a figure PNG atomically."""
    save_png(path, figure)
