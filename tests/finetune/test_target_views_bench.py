"""bench/target_views.py: the target without a view's own Gaussians (and its neighbours') against the full one."""

from __future__ import annotations

import numpy as np

from bench_kit import load_bench


def test_leaving_more_views_out_covers_less_and_moves_the_target_more(lifted_dir, tiny_backbone):
    from fit3d.finetune.data import RenderedViews, load_scenes

    tv = load_bench("target_views")
    views = RenderedViews(load_scenes([lifted_dir], embed_dim=32), 8, flip_prob=0.0)
    r = tv.compare(views, tiny_backbone, every=2, windows=[0, 2, 8])
    assert set(r) == {0, 2, 8} and all(a.shape == (4, 4) for a in r.values())
    covered = [r[w][:, 0].mean() for w in (0, 2, 8)]
    assert covered[0] >= covered[1] >= covered[2]  # every training view left out at 8: nothing of the scene rendered
    assert covered[2] == 0 and np.isnan(r[8][:, 1]).all()
    assert 0.5 < r[0][:, 1].mean() < 1.0  # the own Gaussians of these 8 sparse views are part of the target
    assert views.target_views == "all"  # the dataset is left as it was
