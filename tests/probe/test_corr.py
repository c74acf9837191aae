"""Correspondence ground truth and matching on synthetic two-view setups."""

import numpy as np
import pytest
import torch

from fit3d.data.scene import View
from fit3d.probe.corr import evaluate_correspondence, gt_matches, make_pairs, query_grid, rotation_deg

H, W, F_ = 48, 64, 50.0
K = np.array([[F_, 0, W / 2], [0, F_, H / 2], [0, 0, 1]])


def view(c2w, depth, name="a"):
    return View(image=np.zeros((H, W, 3), np.float32), K=K, c2w=c2w, name=name, depth=depth.astype(np.float32))


def translated(tx):
    c2w = np.eye(4)
    c2w[0, 3] = tx
    return c2w


def test_gt_matches_plane_translation_and_occlusion():
    z = 2.0
    a = view(np.eye(4), np.full((H, W), z))
    depth_b = np.full((H, W), z)
    depth_b[:, :10] = 1.0  # an occluder in front of the wall on b's left
    b = view(translated(0.4), depth_b, "b")
    q = query_grid(H, W, 4)
    tgt, ok = gt_matches(a, b, q)
    shift = F_ * 0.4 / z  # = 10 px to the left in b
    np.testing.assert_allclose(tgt[:, 0], q[:, 0] - shift, atol=1e-9)
    np.testing.assert_allclose(tgt[:, 1], q[:, 1], atol=1e-9)
    expect_ok = (q[:, 0] - shift >= 10) & (q[:, 0] - shift < W)  # inside b and not behind the occluder
    np.testing.assert_array_equal(ok, expect_ok)


def test_gt_matches_rotation_reprojects_world_point():
    a = view(np.eye(4), np.full((H, W), 3.0))
    ang = np.radians(8)
    c2w = np.eye(4)
    c2w[:3, :3] = [[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]]
    u, v = 40.5, 20.5
    X = 3.0 * np.linalg.inv(K) @ [u, v, 1]  # world point (a is at the origin)
    cam = c2w[:3, :3].T @ X
    proj = (K @ cam)[:2] / cam[2]
    depth_b = np.full((H, W), 0.0)
    depth_b[int(proj[1]), int(proj[0])] = cam[2]
    b = view(c2w, depth_b, "b")
    tgt, ok = gt_matches(a, b, np.array([[u, v]]))
    assert ok[0]
    np.testing.assert_allclose(tgt[0], proj, atol=1e-9)
    assert rotation_deg(a, b) == pytest.approx(8.0)


def test_matching_recall_perfect_for_consistent_features_and_low_for_random():
    patch = 4
    h, w = H // patch, W // patch
    z, tx = 2.0, 0.4  # 10 px shift: not a whole number of cells, so errors are up to half a patch
    frames = [0, 2]
    views = [view(translated(0), np.full((H, W), z), "frame-000000"),
             view(translated(tx), np.full((H, W), z), "frame-000002")]
    g = torch.Generator().manual_seed(0)

    def feats_for(c2w_tx):  # "3D-consistent" features: a function of the world (x, y) of each cell's point
        u = (torch.arange(w) + 0.5) * patch
        v = (torch.arange(h) + 0.5) * patch
        X = ((u - W / 2) * z / F_ + c2w_tx)[None, :].expand(h, w)
        Y = ((v - H / 2) * z / F_)[:, None].expand(h, w)
        return torch.stack([f(c * k) for c in (X, Y) for k in (1, 3, 7) for f in (torch.sin, torch.cos)])

    good = torch.stack([feats_for(0.0), feats_for(tx)])
    r = evaluate_correspondence(good, views, frames, patch, gaps=[2], query_stride=patch)
    assert r["matches"] > 0 and r["recall@1"] == pytest.approx(1.0)
    assert r["by_gap"]["gap 2"]["pairs"] == 1
    rand = torch.randn(2, 8, h, w, generator=g)
    r2 = evaluate_correspondence(rand, views, frames, patch, gaps=[2], query_stride=patch)
    assert r2["recall@1"] < 0.5


def test_make_pairs_by_frame_gap():
    assert make_pairs([0, 2, 4, 10], [2, 10]) == [(0, 1, 2), (1, 2, 2), (0, 3, 10)]


def test_gt_matches_on_real_7scenes_agree_in_colour(sevenscenes_path):
    """Real frames 400 -> 410: projected matches land on the same surface (colour agrees, README: ~0.05)."""
    from fit3d.data import read_scene

    s = read_scene(sevenscenes_path, resolution=(160, 120), names=["frame-000400", "frame-000410"])
    a, b = s.views
    q = query_grid(120, 160, 4)
    tgt, ok = gt_matches(a, b, q)
    assert ok.mean() > 0.5
    ca = a.image[q[ok, 1].astype(int), q[ok, 0].astype(int)]
    cb = b.image[tgt[ok, 1].astype(int), tgt[ok, 0].astype(int)]
    shuffled = np.random.default_rng(0).permutation(len(cb))
    err, err_random = np.abs(ca - cb).mean(), np.abs(ca - cb[shuffled]).mean()
    assert err < 0.1 and err < 0.5 * err_random


def test_pairs_stay_within_a_scene():
    """Frame numbers restart in every scene of a multi-scene test set: a gap never joins two scenes."""
    from fit3d.probe.corr import scene_of

    names = ["room_a/0", "room_a/2", "room_b/0", "room_b/2"]
    frames = [0, 2, 0, 2]
    assert make_pairs(frames, [2], [scene_of(n) for n in names]) == [(0, 1, 2), (2, 3, 2)]
    assert scene_of("frame-000010") == "" and scene_of("seq-01/frame-000010") == "seq-01"
