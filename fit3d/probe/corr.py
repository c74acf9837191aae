"""Cross-view correspondence: how 3D-consistent are features, measured directly from posed RGB-D pairs.

For a pair (a, b): query points on a regular grid of view a with valid depth are back-projected with
a's depth, K and pose, and projected into b; a query has a ground-truth match when it lands inside b in
front of the camera and b's depth there agrees (|z_b - depth_b| <= depth_tol * z_b: not occluded).
The query's feature (bilinearly sampled from a's patch grid) is matched to its nearest neighbour (cosine)
among all of b's patch cells; the prediction is that cell's centre. Recall@k = share of matches whose
prediction lies within k patch widths of the truth. Pairs are binned by frame gap and relative rotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fit3d.data.scene import View

RECALL_AT = (1, 2, 4)


def query_grid(h: int, w: int, stride: float) -> np.ndarray:
    """Pixel coordinates [Q, 2] (u, v) of a grid with ``stride`` px, at cell centres (pixel centres +0.5)."""
    us = np.arange(stride / 2, w, stride)
    vs = np.arange(stride / 2, h, stride)
    uu, vv = np.meshgrid(us, vs)
    return np.stack([uu.ravel(), vv.ravel()], 1)


def gt_matches(a: View, b: View, queries: np.ndarray, depth_tol: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Project ``queries`` [Q, 2] (pixels of a) into b. Returns (targets [Q, 2] pixels of b, ok [Q] bool).

    ok = valid depth in a, in front of b, inside b, and consistent with b's depth (occlusion check).
    """
    H, W = a.depth.shape
    ia = np.clip(np.floor(queries).astype(int), 0, [W - 1, H - 1])
    z = a.depth[ia[:, 1], ia[:, 0]].astype(np.float64)  # [Q]
    world = a.unproject(queries, z).T  # [3, Q]
    w2c = np.linalg.inv(b.c2w)
    cam = w2c[:3, :3] @ world + w2c[:3, 3:4]  # [3, Q]
    zb = cam[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = (b.K @ cam)[:2] / zb
    tgt = pix.T  # [Q, 2]
    Hb, Wb = b.depth.shape
    ok = (z > 0) & (zb > 1e-6) & np.isfinite(tgt).all(1)
    ok &= (tgt[:, 0] >= 0) & (tgt[:, 0] < Wb) & (tgt[:, 1] >= 0) & (tgt[:, 1] < Hb)
    ib = np.clip(np.floor(np.nan_to_num(tgt)).astype(int), 0, [Wb - 1, Hb - 1])
    db = b.depth[ib[:, 1], ib[:, 0]].astype(np.float64)
    ok &= (db > 0) & (np.abs(db - zb) <= depth_tol * np.maximum(zb, 1e-6))
    return tgt, ok


def sample_features(feat: torch.Tensor, pts: np.ndarray, H: int, W: int) -> torch.Tensor:
    """Bilinearly sample feat [D, h, w] (covering an H x W image) at pixel points [Q, 2] -> [Q, D]."""
    g = torch.as_tensor(pts, dtype=feat.dtype)
    g = torch.stack([g[:, 0] / W * 2 - 1, g[:, 1] / H * 2 - 1], 1)[None, None]  # [1, 1, Q, 2]
    return F.grid_sample(feat[None], g, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def match_pair(fa: torch.Tensor, fb: torch.Tensor, queries: np.ndarray, H: int, W: int) -> np.ndarray:
    """Nearest-neighbour (cosine) match of queries of a among b's patch cells -> predicted pixels [Q, 2]."""
    D, h, w = fb.shape
    q = F.normalize(sample_features(fa, queries, H, W), dim=1)  # [Q, D]
    cand = F.normalize(fb.reshape(D, -1).T, dim=1)  # [h*w, D]
    best = (q @ cand.T).argmax(1).numpy()
    cy, cx = np.divmod(best, w)
    return np.stack([(cx + 0.5) * W / w, (cy + 0.5) * H / h], 1)


def rotation_deg(a: View, b: View) -> float:
    """Angle (degrees) of the relative rotation between the two cameras."""
    R = a.c2w[:3, :3].T @ b.c2w[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def make_pairs(frames: list[int], gaps: list[int], groups: list[str] | None = None) -> list[tuple[int, int, int]]:
    """(i, j, gap) for every view i and the view j of the same group (scene) whose frame number is
    frame_i + gap; without ``groups`` all views are one scene."""
    groups = groups or [""] * len(frames)
    where = {(s, f): i for i, (s, f) in enumerate(zip(groups, frames))}
    return [(i, where[(s, f + g)], g) for g in gaps for i, (s, f) in enumerate(zip(groups, frames))
            if (s, f + g) in where]


def scene_of(name: str) -> str:
    """The scene part of a view name ("synthetic_0003/7" -> "synthetic_0003"; "frame-000010" -> ""):
    frame numbers restart in every scene, so pairs never join two scenes."""
    return str(name).rpartition("/")[0]


@dataclass
class _Acc:
    n_pairs: int = 0
    n: int = 0
    hits: dict = field(default_factory=lambda: {k: 0 for k in RECALL_AT})

    def add(self, err: np.ndarray, patch: float) -> None:
        self.n_pairs += 1
        self.n += len(err)
        for k in RECALL_AT:
            self.hits[k] += int((err <= k * patch).sum())

    def result(self) -> dict:
        out = {f"recall@{k}": (self.hits[k] / self.n if self.n else float("nan")) for k in RECALL_AT}
        out.update(pairs=self.n_pairs, matches=self.n)
        return out


def rotation_bin(deg: float, edges: list[float]) -> str:
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= deg < hi:
            return f"{lo:g}-{hi:g}deg"
    return f">={edges[-1]:g}deg"


def evaluate_correspondence(feats: torch.Tensor, views: list[View], frames: list[int], patch_size: int,
                            gaps: list[int] = (2, 10, 20, 40), rot_edges: list[float] = (0, 10, 20, 40),
                            query_stride: float | None = None, depth_tol: float = 0.05,
                            keep_examples: int = 0, groups: list[str] | None = None) -> dict:
    """Recall@{1,2,4} patch widths, overall (pooled over matches) and per frame gap / rotation bin.

    feats [N, D, h, w] patch features of ``views`` (all at the feature images' resolution H x W);
    ``frames`` frame numbers; ``patch_size`` in pixels of that resolution (one patch width); ``groups`` the
    scene of each view (default :func:`scene_of` its name): pairs stay within a scene.
    """
    H, W = views[0].height, views[0].width
    h, w = feats.shape[-2:]
    patch = W / w  # one patch width in pixels (= patch_size when the image is a patch multiple)
    queries = query_grid(H, W, query_stride or patch_size / 2)
    total, by_gap, by_rot = _Acc(), {}, {}
    examples = []
    for i, j, gap in make_pairs(list(frames), list(gaps), groups or [scene_of(v.name) for v in views]):
        a, b = views[i], views[j]
        if a.depth is None or b.depth is None:
            continue
        tgt, ok = gt_matches(a, b, queries, depth_tol)
        if not ok.any():
            continue
        pred = match_pair(feats[i], feats[j], queries[ok], H, W)
        err = np.linalg.norm(pred - tgt[ok], axis=1)
        rb = rotation_bin(rotation_deg(a, b), list(rot_edges))
        for acc in (total, by_gap.setdefault(f"gap {gap}", _Acc()), by_rot.setdefault(rb, _Acc())):
            acc.add(err, patch)
        if len(examples) < keep_examples:
            examples.append({"a": i, "b": j, "queries": queries[ok], "pred": pred, "target": tgt[ok], "err": err})
    out = total.result()
    out["by_gap"] = {k: v.result() for k, v in sorted(by_gap.items(), key=lambda kv: int(kv[0].split()[1]))}
    out["by_rotation"] = {k: by_rot[k].result() for k in sorted(by_rot, key=lambda s: float(s.strip(">=").split("-")[0].rstrip("deg")))}
    out["patch_px"] = patch
    return (out, examples) if keep_examples else out
