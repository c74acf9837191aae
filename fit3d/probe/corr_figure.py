"""A correspondence figure for one view pair: the matches of several backbones (original vs fine-tuned)
drawn on the pair and coloured right / wrong against the ground-truth geometry (depth + poses).

Queries, ground truth and matching are :mod:`fit3d.probe.corr`'s (the ``fit3d probe --task corr``
protocol): grid queries of view a with a ground-truth reprojection into b (inside, in front, not
occluded), each matched to its nearest patch of b by cosine; right = within ``within`` patch widths.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from fit3d.data.scene import View
from fit3d.probe.corr import gt_matches, match_pair, query_grid, rotation_deg
from fit3d.probe.report import match_tile
from fit3d.viz.images import hstack, titled, vstack


def pick_pair(views: list[View], min_share: float = 0.5, stride: float = 8.0) -> tuple[int, int]:
    """(i, j), i < j: of the pairs where at least ``min_share`` of a's grid points have a ground-truth match
    in b, the one with the largest relative rotation (a hard pair that still overlaps); the most
    overlapping pair when none reaches the share."""
    H, W = views[0].height, views[0].width
    q = query_grid(H, W, stride)
    best, fallback = None, None
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            share = float(gt_matches(views[i], views[j], q)[1].mean())
            rot = rotation_deg(views[i], views[j])
            if share >= min_share and (best is None or rot > best[0]):
                best = (rot, i, j)
            if fallback is None or share > fallback[0]:
                fallback = (share, i, j)
    if fallback is None:
        raise ValueError("pick_pair: need at least two views")
    return (best or fallback)[1:]


def pair_matches(a: View, b: View, features: Mapping[str, tuple[torch.Tensor, torch.Tensor]], patch_px: float,
                 query_stride: float | None = None) -> dict[str, dict]:
    """{name: {"queries", "pred", "target", "err", "patch"}} for each name's (feat_a [D, h, w], feat_b)."""
    H, W = a.height, a.width
    q = query_grid(H, W, query_stride or patch_px / 2)
    tgt, ok = gt_matches(a, b, q)
    out = {}
    for name, (fa, fb) in features.items():
        pred = match_pair(fa.detach().float().cpu(), fb.detach().float().cpu(), q[ok], H, W)
        out[name] = {"queries": q[ok], "pred": pred, "target": tgt[ok],
                     "err": np.linalg.norm(pred - tgt[ok], axis=1), "patch": patch_px}
    return out


def correspondence_figure(a: View, b: View, features: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                          patch_px: float, *, within: float = 1.0, title: str | None = None,
                          panel_height: int = 200, max_lines: int = 80) -> tuple[np.ndarray, dict[str, float]]:
    """(figure uint8 [H, W, 3], {name: share of right matches}): one row per backbone, the pair side by side
    with the same sampled queries joined to their matches, green when within ``within`` patch widths of
    the ground-truth reprojection, red otherwise; each row titled with its share of right matches."""
    matches = pair_matches(a, b, features, patch_px)
    rows, right = [], {}
    rot = rotation_deg(a, b)
    for name, ex in matches.items():
        n = len(ex["err"])
        right[name] = float(np.mean(ex["err"] <= within * patch_px)) if n else float("nan")
        tile = match_tile(a.image, b.image, ex, patch_px, max_lines=max_lines, height=panel_height, within=within)
        rows.append(hstack([tile], [f"{name}: {right[name]:.0%} of {n} matches right (within {within:g} patch), "
                                    f"view {a.name} -> {b.name}, {rot:.0f} deg apart"]))
    fig = vstack(rows)
    return (titled(fig, title, 15, max_lines=3) if title else fig), right
