"""probe3d-style correspondence on a synthetic pair with known geometry."""

import numpy as np
import pytest
import torch

from fit3d.data.scene import View
from fit3d.probe.corr_probe3d import Probe3DSettings, draw_pairs, evaluate_probe3d, match, points, project

H, W, F_, Z = 48, 64, 50.0, 2.0
K = np.array([[F_, 0, W / 2], [0, F_, H / 2], [0, 0, 1]])
SHIFT = 10  # px: a sideways translation of SHIFT * Z / F_ m on a fronto-parallel wall at depth Z


def view(tx, name):
    c2w = np.eye(4)
    c2w[0, 3] = tx
    return View(image=np.zeros((H, W, 3), np.float32), K=K, c2w=c2w, name=name, depth=np.full((H, W), Z, np.float32))


def pair_features(seed=0, D=16):
    """Per-pixel features (a feature grid at image resolution): b sees a's wall point u at u - SHIFT."""
    g = torch.Generator().manual_seed(seed)
    wall = torch.randn(D, H, W + SHIFT, generator=g)  # one random vector per wall point
    return torch.stack([wall[:, :, :W], wall[:, :, SHIFT:SHIFT + W]])


def test_projection_of_a_wall_point_is_the_shifted_pixel():
    a, b = view(0.0, "a"), view(SHIFT * Z / F_, "b")
    pix, world = points(a)
    np.testing.assert_allclose(project(b, world), pix - [SHIFT, 0], atol=1e-9)


def test_identical_features_recall_one_and_shuffled_at_chance():
    a, b = view(0.0, "a"), view(SHIFT * Z / F_, "b")
    views = [a, b]
    s = Probe3DSettings(num_corr=500, min_overlap=0.5)
    pairs = draw_pairs(views, s)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    feats = pair_features()
    r = evaluate_probe3d(feats, views, pairs, s)
    assert r["recall@5px"] == pytest.approx(1.0) and r["recall@20px"] == pytest.approx(1.0)
    assert r["by_rotation"]["0-15deg"]["pairs"] == 1 and r["by_rotation"]["15-30deg"]["pairs"] == 0
    # b's features shuffled over its pixels: matches are random pixels of b
    perm = torch.randperm(H * W, generator=torch.Generator().manual_seed(1))
    shuffled = feats.clone()
    shuffled[1] = feats[1].reshape(16, -1)[:, perm].reshape(16, H, W)
    r2 = evaluate_probe3d(shuffled, views, pairs, s)
    # chance: the share of b's pixels within t px of a point's true match, averaged over a's points
    pa, wa = points(a)
    pb, _ = points(b)
    tgt = project(b, wa)
    for t in (5, 10, 20):
        chance = np.mean([(np.linalg.norm(pb - p, axis=1) < t).mean() for p in tgt[::7]])
        assert abs(r2[f"recall@{t}px"] - chance) < 0.05 + 0.5 * chance, (t, r2[f"recall@{t}px"], chance)
    assert r2["recall@5px"] < 0.1


def test_mutual_ratio_matches_keep_the_distinctive_ones():
    fb = torch.eye(4)
    fa = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0.6, 0.8, 0, 0]])  # the third is between two of b's
    ia, ib, w = match(fa, fb, num_corr=2)
    assert sorted(ia.tolist()) == [0, 1] and sorted(ib.tolist()) == [0, 1]
    assert np.all(w > 0.99)


def test_pairs_span_rotation_bins():
    views = []
    for k, deg in enumerate((0, 10, 20, 40)):
        c2w = np.eye(4)
        t = np.radians(deg)
        c2w[:3, :3] = [[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]]
        views.append(View(image=np.zeros((H, W, 3), np.float32), K=K, c2w=c2w, name=f"v{k}",
                          depth=np.full((H, W), Z, np.float32)))
    pairs = draw_pairs(views, Probe3DSettings(min_overlap=0.0))
    rots = sorted(round(p[2]) for p in pairs)
    assert rots == [10, 10, 20, 20, 30, 40]
