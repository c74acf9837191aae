"""Probe outputs: ``probe.json`` (metrics per feature source + exact settings), a markdown table, and a
PNG figure of predictions next to ground truth (composed with numpy/cv2; matplotlib is not a dependency).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from fit3d.io import atomic_path, write_json, write_text

COLUMNS = {
    "depth": ["rmse", "abs_rel", "sq_rel", "log10", "rmse_log", "delta1", "delta2", "delta3"],
    "seg": ["miou", "macc", "aacc"],
    "corr": ["recall@1", "recall@2", "recall@4"],
}
LOWER_IS_BETTER = {"rmse", "abs_rel", "sq_rel", "log10", "rmse_log"}


def _fmt(x) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4f}"
    return str(x)


def markdown_table(task: str, results: dict[str, dict]) -> str:
    """One row per feature source (and baseline), one column per metric (arrows say which way is better)."""
    cols = COLUMNS[task]
    head = "| features | " + " | ".join(c + (" ↓" if c in LOWER_IS_BETTER else " ↑") for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(c, float("nan"))) for c in cols) + " |")
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


def write_report(out_dir: str | Path, task: str, results: dict[str, dict], settings: dict, extra: dict | None = None,
                 command: str | None = None) -> str:
    """Write ``probe.json`` and ``probe.md``; return the markdown table."""
    out = Path(out_dir)
    table = markdown_table(task, results)
    write_json(out / "probe.json", {"task": task, "metrics": results, "settings": settings, **(extra or {}),
                                    **({"command": command} if command else {})})
    md = [f"# fit3d probe: {task}", ""]
    if command:
        md += ["```", command, "```", ""]
    md += [table, "", "Settings:", "", "```json"]
    import json

    md += [json.dumps(settings, indent=2, default=str), "```", ""]
    write_text(out / "probe.md", "\n".join(md))
    return table


# ------------------------------------------------------------------------------------------------ figures
def colorize_depth(d: np.ndarray, vmax: float) -> np.ndarray:
    """[H, W] metres -> [H, W, 3] uint8 RGB (turbo), invalid (<= 0) black."""
    x = np.clip(d / max(vmax, 1e-6), 0, 1)
    rgb = cv2.applyColorMap((x * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()
    rgb[d <= 0] = 0
    return rgb


def palette(n: int, seed: int = 0) -> np.ndarray:
    """[n, 3] uint8 fixed random colours (class 0..n-1)."""
    return np.random.default_rng(seed).integers(40, 256, size=(max(n, 1), 3), dtype=np.uint8)


def colorize_labels(lab: np.ndarray, n: int, ignore: int = 255) -> np.ndarray:
    pal = palette(n)
    out = np.zeros((*lab.shape, 3), np.uint8)
    ok = (lab >= 0) & (lab < n) & (lab != ignore)
    out[ok] = pal[lab[ok]]
    return out


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    img = np.ascontiguousarray(img)
    cv2.rectangle(img, (0, 0), (min(img.shape[1], 8 + 8 * len(text)), 18), (0, 0, 0), -1)
    cv2.putText(img, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def write_figure(path: str | Path, rows: list[list[tuple[str, np.ndarray]]]) -> None:
    """Grid PNG: each row a list of (caption, [H, W, 3] uint8 RGB) tiles of the same size."""
    lines = [np.concatenate([_caption(t, c) for c, t in row], 1) for row in rows]
    wmax = max(ln.shape[1] for ln in lines)
    lines = [np.pad(ln, ((0, 0), (0, wmax - ln.shape[1]), (0, 0))) for ln in lines]
    grid = np.concatenate(lines, 0)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", grid[..., ::-1])
        tmp.write_bytes(buf.tobytes())


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def match_tile(img_a: np.ndarray, img_b: np.ndarray, ex: dict, patch: float, max_lines: int = 60) -> np.ndarray:
    """Pair side by side with sampled matches: green = within 2 patches of the truth, red = wrong."""
    a, b = to_uint8(img_a), to_uint8(img_b)
    canvas = np.ascontiguousarray(np.concatenate([a, b], 1))
    W = a.shape[1]
    idx = np.linspace(0, len(ex["err"]) - 1, min(max_lines, len(ex["err"]))).round().astype(int)
    for k in idx:
        q, p = ex["queries"][k], ex["pred"][k]
        col = (0, 220, 0) if ex["err"][k] <= 2 * patch else (230, 30, 30)
        cv2.line(canvas, (int(q[0]), int(q[1])), (int(p[0]) + W, int(p[1])), col, 1, cv2.LINE_AA)
    return canvas
