"""Probe figures are built from fit3d.viz.images: one depth colour scale, the shared label palette."""

import numpy as np
import torch

from fit3d.probe.report import depth_figure, seg_figure
from fit3d.viz.images import LABEL_PALETTE

H, W, P = 12, 16, 48  # image size, panel height (x4 nearest)


def _images(n):
    return [np.random.default_rng(i).random((H, W, 3)).astype(np.float32) for i in range(n)]


def _panel(fig, row_top, col):
    """Pixels of panel ``col`` in a row whose panels start at ``row_top`` (hstack: 6 px gaps, title bar)."""
    x = 6 + col * (4 * W + 6)
    return fig[row_top:row_top + P, x:x + 4 * W]


def test_depth_figure_shares_one_colour_scale():
    gt = torch.linspace(1.0, 4.0, H * W).reshape(1, H, W).repeat(2, 1, 1)
    fig = depth_figure(_images(2), ["a", "b"], gt, {"same": gt.clone(), "far": gt + 2.0}, [0, 1], 1e-3, 10.0,
                       panel_height=P)
    assert fig.dtype == np.uint8 and fig.shape[0] > 2 * P
    row_h = fig.shape[0] // 2
    top = row_h - 6 - P  # panels sit at the bottom of their row, above a 6 px gap
    np.testing.assert_array_equal(_panel(fig, top, 1), _panel(fig, top, 2))  # equal depth -> equal colours
    assert not np.array_equal(_panel(fig, top, 1), _panel(fig, top, 3))
    assert fig.shape[1] > 6 + 4 * (4 * W + 6) + 14  # a colour bar on the right


def test_seg_figure_uses_the_label_palette():
    labels = torch.zeros(1, H, W, dtype=torch.long)
    labels[:, :, W // 2:] = 2
    labels[:, 0, 0] = 255  # ignored: black
    pred = torch.ones(1, H, W, dtype=torch.long)
    fig = seg_figure(_images(1), ["a"], labels, {"src": pred}, [0], 3, ["wall", "box", "floor"], panel_height=P)
    row = fig[:25 + P + 12]  # the panel row (25 px title bar, 6 px gaps), not the legend below it
    gt_panel = row[:, 6 + 4 * W + 6:6 + 2 * (4 * W) + 6]
    cols = {tuple(c) for c in gt_panel.reshape(-1, 3)}
    assert tuple(LABEL_PALETTE[0]) in cols and tuple(LABEL_PALETTE[2]) in cols and (0, 0, 0) in cols
    pred_panel = row[:, 6 + 2 * (4 * W + 6):6 + 2 * (4 * W + 6) + 4 * W]
    assert tuple(LABEL_PALETTE[1]) in {tuple(c) for c in pred_panel.reshape(-1, 3)}
