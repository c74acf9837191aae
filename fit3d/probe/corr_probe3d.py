"""probe3d-style correspondence (El Banani et al., "Probing the 3D Awareness of Visual Foundation
Models", CVPR 2024, ScanNet pairs protocol), on posed RGB-D views.

For a pair (a, b), both at a quarter of the native resolution (depth nearest-resized, K rescaled):

1. points: every valid-depth pixel of each view (every ``point_stride``-th pixel; 1 = all), back-projected
   with its depth, K and pose;
2. features: the view's patch features bilinearly sampled at those pixels (the feature grid covers the
   image, so the sampling is resolution-independent);
3. matches: nearest neighbour of each point of a among b's points by cosine; kept when mutual (b's point
   has a's point as its nearest neighbour too) and ranked by the ratio test weight 1 - d1 / d2 (cosine
   distances to the first and second neighbour); the top ``num_corr`` are kept;
4. error: a's point projected into b with the ground-truth poses vs the matched point of b, in pixels
   of the quarter-resolution image; recall@t = share of kept matches with error < t px, t = 5 / 10 / 20.

Pairs are drawn from all pairs of the test views whose overlap (share of a's valid points landing on
b's surface, depth-consistent) is at least ``min_overlap``, up to ``pairs_per_bin`` at random per
relative-rotation bin (0-15, 15-30, 30-60, 60-180 degrees), so the whole rotation range is covered as
far as the scene has it. Overall recall = mean over pairs (as probe3d, where every pair has
``num_corr`` matches); per bin: mean over the bin's pairs. Differences from probe3d: ScanNet's fixed
pair list is replaced by this draw; mutual nearest neighbours (probe3d's default is one-way); exact
search on the CPU instead of faiss. See docs/probe3d-corr.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fit3d.data.scene import View
from fit3d.probe.corr import gt_matches, query_grid, rotation_bin, rotation_deg, sample_features

THRESHOLDS = (5, 10, 20)


@dataclass
class Probe3DSettings:
    num_corr: int = 1000  # matches kept per pair (probe3d: 1000)
    rot_edges: tuple[float, ...] = (0.0, 15.0, 30.0, 60.0, 180.0)
    pairs_per_bin: int = 50
    min_overlap: float = 0.1
    point_stride: int = 1
    mutual: bool = True
    seed: int = 0
    overlap_tol: float = 0.05  # relative depth agreement for the overlap of a pair (pair selection only)


def quarter_views(path, test_data, **kw) -> list[View]:
    """The test views at a quarter of their native resolution (depth, K and pose; names as ``test_data``)."""
    from fit3d.probe.datasets import load_probe_data

    native = load_probe_data(path, "test", None, **kw)
    W, H = native.view(0).width, native.view(0).height
    data = load_probe_data(path, "test", (max(1, W // 4), max(1, H // 4)), **kw)
    if list(data.names) != list(test_data.names):
        raise ValueError("quarter-resolution views differ from the test split")
    return [data.view(i) for i in range(len(data))]


def points(view: View, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(pixels [P, 2] at pixel centres, world points [P, 3]) of the valid-depth pixels (every ``stride``-th)."""
    vv, uu = np.nonzero(view.depth[::stride, ::stride] > 0)
    vv, uu = vv * stride, uu * stride
    pix = np.stack([uu + 0.5, vv + 0.5], 1).astype(np.float64)
    return pix, view.unproject(pix, view.depth[vv, uu])


def project(view: View, world: np.ndarray) -> np.ndarray:
    """Pixels [P, 2] of world points [P, 3] in ``view`` (points behind the camera get +inf)."""
    cam = world @ view.w2c[:3, :3].T + view.w2c[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = (cam @ view.K.T)[:, :2] / cam[:, 2:3]
    pix[cam[:, 2] <= 1e-6] = np.inf
    return pix


def overlap(a: View, b: View, tol: float = 0.05, stride: float = 4) -> float:
    """Share of a's valid pixels (on a ``stride`` grid) whose surface point is seen by b (depth-consistent)."""
    q = query_grid(a.height, a.width, stride)
    ia = np.clip(np.floor(q).astype(int), 0, [a.width - 1, a.height - 1])
    valid = a.depth[ia[:, 1], ia[:, 0]] > 0
    if not valid.any():
        return 0.0
    _, ok = gt_matches(a, b, q, tol)
    return float(ok[valid].mean())


def draw_pairs(views: list[View], s: Probe3DSettings) -> list[tuple[int, int, float]]:
    """(i, j, rotation degrees): up to ``pairs_per_bin`` random pairs per rotation bin among the pairs
    with overlap >= ``min_overlap`` (seeded; sorted by rotation)."""
    rng = np.random.default_rng(s.seed)
    by_bin: dict[str, list] = {}
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            rot = rotation_deg(views[i], views[j])
            if rot >= s.rot_edges[-1]:
                continue
            if overlap(views[i], views[j], s.overlap_tol) >= s.min_overlap:
                by_bin.setdefault(rotation_bin(rot, list(s.rot_edges)), []).append((i, j, rot))
    pairs = []
    for cand in by_bin.values():
        take = rng.choice(len(cand), size=min(len(cand), s.pairs_per_bin), replace=False)
        pairs += [cand[k] for k in sorted(take)]
    return sorted(pairs, key=lambda p: p[2])


def _top2(q: torch.Tensor, c: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """For unit rows q [P, D] among unit rows c [M, D]: (cosine sims of the 2 nearest [P, 2], indices [P, 2])."""
    sims, idx = [], []
    k = min(2, len(c))
    for i in range(0, len(q), chunk):
        s, j = (q[i:i + chunk] @ c.T).topk(k, dim=1)
        sims.append(s)
        idx.append(j)
    return torch.cat(sims), torch.cat(idx)


def match(fa: torch.Tensor, fb: torch.Tensor, num_corr: int, mutual: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio-test matches of point features fa [Pa, D] -> fb [Pb, D]: (indices in a, indices in b, weights),
    the ``num_corr`` with the highest weight 1 - d1/d2 among the (mutual) nearest neighbours."""
    qa, qb = F.normalize(fa.float(), dim=1), F.normalize(fb.float(), dim=1)
    sims, idx = _top2(qa, qb)
    d = (1 - sims).clamp(min=1e-9)  # cosine distances, as probe3d's ratio test
    weight = 1 - d[:, 0] / d[:, -1].clamp(min=1e-9) if d.shape[1] > 1 else torch.zeros(len(d))
    nn_ab = idx[:, 0]
    keep = torch.ones(len(qa), dtype=torch.bool)
    if mutual:
        _, back = _top2(qb, qa)
        keep = back[nn_ab, 0] == torch.arange(len(qa))
    cand = keep.nonzero()[:, 0]
    top = cand[weight[cand].topk(min(num_corr, len(cand))).indices]
    return top.numpy(), nn_ab[top].numpy(), weight[top].numpy()


def evaluate_pair(feat_a: torch.Tensor, feat_b: torch.Tensor, a: View, b: View, s: Probe3DSettings) -> dict:
    """Matches and their reprojection errors for one pair. feat_* [D, h, w] covering the view's image."""
    pa, wa = points(a, s.point_stride)
    pb, _ = points(b, s.point_stride)
    if not len(pa) or not len(pb):
        return {"err": np.zeros(0), "queries": pa[:0], "pred": pb[:0]}
    fa = sample_features(feat_a, pa, a.height, a.width)
    fb = sample_features(feat_b, pb, b.height, b.width)
    ia, ib, _ = match(fa, fb, s.num_corr, s.mutual)
    target = project(b, wa[ia])
    err = np.linalg.norm(target - pb[ib], axis=1)
    return {"err": np.nan_to_num(err, nan=np.inf), "queries": pa[ia], "pred": pb[ib], "target": target}


def _recalls(err: np.ndarray) -> dict:
    return {f"recall@{t}px": float((err < t).mean()) if len(err) else 0.0 for t in THRESHOLDS}


def evaluate_probe3d(feats: torch.Tensor, views: list[View], pairs: list[tuple[int, int, float]], s: Probe3DSettings,
                     keep_examples: int = 0):
    """Recall@5/10/20 px (mean over pairs) overall and per rotation bin.

    feats [N, D, h, w] patch features of ``views`` (quarter-resolution views with depth and poses; the
    features may come from images at any resolution of the same views). Returns the result dict
    (``by_rotation``: {bin: recall@t px, pairs, matches}), and with ``keep_examples`` the first pairs'
    matches for figures.
    """
    per_pair, bins, examples = [], {}, []
    for i, j, rot in pairs:
        r = evaluate_pair(feats[i], feats[j], views[i], views[j], s)
        rec = _recalls(r["err"])
        per_pair.append(rec)
        bins.setdefault(rotation_bin(rot, list(s.rot_edges)), []).append((rec, len(r["err"])))
        if len(examples) < keep_examples:
            examples.append({"a": i, "b": j, "queries": r["queries"], "pred": r["pred"], "err": r["err"],
                             "patch": THRESHOLDS[1] / 2})  # figures: green = within 2 "patches" = 10 px
    keys = [f"recall@{t}px" for t in THRESHOLDS]
    out = {k: float(np.mean([p[k] for p in per_pair])) if per_pair else float("nan") for k in keys}
    out["pairs"] = len(pairs)
    edges = list(s.rot_edges)
    out["by_rotation"] = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        name = f"{lo:g}-{hi:g}deg"
        got = bins.get(name, [])
        row = {k: float(np.mean([g[0][k] for g in got])) if got else float("nan") for k in keys}
        row.update(pairs=len(got), matches=int(sum(g[1] for g in got)))
        out["by_rotation"][name] = row
    out["settings"] = {"num_corr": s.num_corr, "point_stride": s.point_stride, "mutual": s.mutual,
                       "min_overlap": s.min_overlap, "resolution": [views[0].width, views[0].height]}
    return (out, examples) if keep_examples else out
