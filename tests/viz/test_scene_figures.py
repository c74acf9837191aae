import numpy as np
import torch

from fit3d.data.synthetic import SyntheticSceneConfig, generate_scene
from fit3d.viz.panels import feature_pca_figure
from fit3d.viz.images import LABEL_PALETTE
from fit3d.viz.scene import scene_figure


def test_scene_figure_rows_and_legend():
    s = generate_scene(SyntheticSceneConfig(seed=0, num_views=5, width=64, height=48))
    fig = scene_figure(s, num_views=3, panel_height=48)
    assert fig.dtype == np.uint8
    # three panel rows (RGB with titles, depth, labels) and a legend
    assert fig.shape[0] > 3 * (48 + 12) + 15
    assert fig.shape[1] >= 3 * 64 + 4 * 6
    floor_colour = LABEL_PALETTE[0]
    assert (fig == floor_colour).all(-1).sum() > 100  # floor pixels in the label row and its legend swatch


def test_feature_pca_figure_shares_one_basis():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(8, 4, 6, generator=g)
    img = np.zeros((28, 42, 3), np.uint8)
    fig = feature_pca_figure(img, {"real": real, "rendered": real.clone()}, panel_height=None)
    top = fig.shape[0] - 6 - 28
    a = fig[top:top + 28, 12 + 42:12 + 84]
    b = fig[top:top + 28, 18 + 84:18 + 126]
    np.testing.assert_array_equal(a, b)
    assert (a[:7, :7] == a[0, 0]).all()  # a 4x6 map shown at 28x42 with crisp 7x7 cells
