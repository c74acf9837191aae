"""The correspondence figure: matches coloured right / wrong against the geometry, per backbone."""

import numpy as np
import torch

from fit3d.data.synthetic import SyntheticSceneConfig, generate_scene
from fit3d.probe.corr_figure import correspondence_figure, pick_pair


def world_features(v, h, w, seed=0):
    """[D, h, w] random Fourier features of each patch centre's world point: 3D-consistent by construction."""
    H, W = v.depth.shape
    ys, xs = np.meshgrid((np.arange(h) + 0.5) * H / h, (np.arange(w) + 0.5) * W / w, indexing="ij")
    pix = np.stack([xs.ravel(), ys.ravel()], 1)
    z = v.depth[pix[:, 1].astype(int), pix[:, 0].astype(int)]
    X = v.unproject(pix, z)  # [h*w, 3]
    B = np.random.default_rng(seed).normal(size=(3, 32)) * 4.0
    f = np.concatenate([np.sin(X @ B), np.cos(X @ B)], 1).T.reshape(64, h, w)
    return torch.from_numpy(f).float()


def test_geometry_consistent_features_match_right_and_random_ones_do_not():
    views = generate_scene(SyntheticSceneConfig(seed=2, num_views=8, width=112, height=84, num_objects=3)).views
    i, j = pick_pair(views)
    assert i < j
    a, b = views[i], views[j]
    g = torch.Generator().manual_seed(0)
    feats = {"3D-consistent": (world_features(a, 6, 8), world_features(b, 6, 8)),
             "random": (torch.randn(64, 6, 8, generator=g), torch.randn(64, 6, 8, generator=g))}
    fig, right = correspondence_figure(a, b, feats, patch_px=14.0, title="a pair", panel_height=84)
    assert fig.dtype == np.uint8 and fig.shape[1] >= 2 * 112
    assert right["3D-consistent"] > 0.6 > 0.3 > right["random"]
    green = ((fig[..., 1] > 180) & (fig[..., 0] < 80)).sum()
    red = ((fig[..., 0] > 180) & (fig[..., 1] < 80)).sum()
    assert green > 0 and red > 0  # both kinds of lines are drawn
