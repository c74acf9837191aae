"""Seed spread + bootstrap summaries (fit3d.probe.summary): the table states mean ± std and intervals, and
marks a gain / loss only where the interval excludes 0."""

import numpy as np
import torch

from fit3d.probe.summary import CONTROL, DEPTH_METRICS, claims, summarise, summary_markdown


class _Cfg:
    bootstrap = 300


def _depth_stats(rng, n=40, seeds=3):
    """Per-image depth metrics [seeds, N, M]: finetuned clearly better (lower RMSE), concat = original + noise."""
    base = rng.uniform(0.3, 1.0, (1, n, len(DEPTH_METRICS))).repeat(seeds, 0)
    noise = lambda s: rng.normal(0, s, base.shape)  # noqa: E731
    return {"original": base + noise(0.002), "finetuned": base * 0.8 + noise(0.002),
            "concat": base + noise(0.002), CONTROL: base + noise(0.002)}


def test_summary_has_seed_spread_and_intervals_that_mark_only_excluded_zero():
    rng = np.random.default_rng(0)
    e = summarise("depth", _depth_stats(rng), _Cfg())
    ctl = e.pop("_control")
    assert e["original"]["rmse"]["std"] > 0  # the spread over the 3 seeds
    lo, hi = e["ci"]["finetuned-original"]["rmse"]
    assert hi < 0  # the real 20% improvement is found
    verdicts = claims({"rooms_depth": e})["rooms_depth"]
    assert verdicts["finetuned-original"]["rmse"] == "gain"
    assert verdicts["finetuned-original"]["delta1"] == "loss"  # the same shift lowers a higher-is-better metric
    assert verdicts["concat-original"]["rmse"] == "n.s."  # noise only: no claim
    md = summary_markdown({"rooms_depth": e}, {"rooms_depth": ctl})
    row = next(r for r in md.splitlines() if r.startswith("| rooms_depth | rmse ↓"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "±" in cells[2] and "±" in cells[7]  # original mean ± std; control mean ± std
    assert cells[5].endswith("**gain**") and f"[{lo:+.4f}, {hi:+.4f}]" in cells[5]
    assert "gain" not in cells[6] and "loss" not in cells[6]
    assert "[" in cells[8]  # concat - control interval


def test_depth_baselines_are_the_constant_and_the_mean_image_in_the_heads_metrics():
    from fit3d.probe.summary import DEPTH_METRICS, baselines_markdown, depth_baselines

    train = torch.zeros(2, 4, 6)
    train[0, :2], train[1, :2] = 1.0, 3.0  # top rows: mean 2; bottom rows: invalid in training
    test = torch.full((3, 4, 6), 2.0)
    test[:, 2:] = 4.0
    b = depth_baselines(train, test)
    assert set(b) == {"train mean depth", "train mean depth image"} and set(b["train mean depth"]) == set(DEPTH_METRICS)
    # the constant (2 m everywhere) is exact on the top rows and off by 2 m on the bottom ones
    assert abs(b["train mean depth"]["rmse"] - (0.5 * 4.0) ** 0.5) < 1e-5
    # the mean image is 2 m on top and falls back to the mean (2 m) where training had no depth: the same here
    assert abs(b["train mean depth image"]["rmse"] - b["train mean depth"]["rmse"]) < 1e-5
    test2 = test.clone()
    test2[:, 2:] = 2.0  # now both predictors are exact
    assert depth_baselines(train, test2)["train mean depth image"]["rmse"] < 1e-5
    md = baselines_markdown({"ev": b})
    assert "| ev | train mean depth |" in md and "| ev | train mean depth image |" in md


def test_the_mean_depth_image_is_a_position_prior():
    from fit3d.probe.summary import depth_baselines

    train = torch.ones(3, 4, 6)
    train[:, :, 3:] = 3.0  # the right half is always deeper
    test = train[:1].clone()
    b = depth_baselines(train, test)
    assert b["train mean depth image"]["rmse"] < 1e-5 < b["train mean depth"]["rmse"]
    assert b["train mean depth image"]["delta1"] == 1.0


def test_seg_baselines_are_the_majority_class_and_the_per_pixel_majority():
    from fit3d.probe.summary import baselines_markdown, depth_baselines, seg_baselines

    train = torch.zeros(3, 4, 6, dtype=torch.long)
    train[:, 2:] = 1  # class 1 always below, class 0 above
    train[0, 2:, :4] = 255  # ignored pixels count for nothing
    test = train[1:2].clone()
    b = seg_baselines(train, test, num_classes=3)
    assert set(b) == {"train majority class", "train per-pixel majority class"}
    assert b["train per-pixel majority class"] == {"miou": 1.0, "macc": 1.0}  # the position prior is exact here
    # the majority class everywhere (0: 12 + 12 + 12 pixels against 4 + 12 + 12) gets one class of two right
    assert b["train majority class"]["macc"] == 0.5 and b["train majority class"]["miou"] == 0.25
    md = baselines_markdown({"seg": b, "depth": depth_baselines(torch.ones(1, 2, 2), torch.ones(1, 2, 2))})
    assert "| seg | train majority class | 0.2500 | 0.5000 |" in md and "miou ↑ | macc ↑" in md
    assert md.count("| eval | trivial predictor |") == 2  # one table per metric set


def test_fit3d_probes_position_priors_pool_over_pixels_and_follow_the_test_size():
    # fit3d probe's own baselines (metrics pooled over pixels, as its heads are scored), beside the constant ones
    from fit3d.probe.depth import mean_depth_baseline, mean_depth_image, mean_depth_image_baseline
    from fit3d.probe.seg import majority_baseline, majority_image, majority_image_baseline

    depth = torch.ones(3, 4, 6)
    depth[:, 2:] = 3.0  # the floor rows are always deeper
    test = depth[:2].clone()
    mean, image = mean_depth_image(depth, 0.1, 10.0)
    assert torch.equal(image, depth[0]) and abs(mean - 2.0) < 1e-6
    assert mean_depth_image_baseline(depth, test, 0.1, 10.0)["rmse"] < 1e-6 < mean_depth_baseline(depth, test, 0.1, 10.0)["rmse"]
    big = torch.nn.functional.interpolate(test[:, None], size=(8, 12), mode="nearest")[:, 0]  # test labels at 2x
    assert mean_depth_image(depth, 0.1, 10.0, (8, 12))[1].shape == (8, 12)
    assert mean_depth_image_baseline(depth, big, 0.1, 10.0)["rmse"] < mean_depth_baseline(depth, big, 0.1, 10.0)["rmse"]

    labels = torch.zeros(3, 4, 6, dtype=torch.long)
    labels[:, 2:] = 1
    labels[:, :2, :2] = 255
    majority, img = majority_image(labels, 2)
    assert majority == 1 and img[0, 0] == 1 and img[0, 3] == 0 and img[3, 0] == 1  # no label: the majority class
    assert majority_image(labels, 2, size=(8, 12))[1].shape == (8, 12)
    assert majority_image_baseline(labels, labels[:1], 2)["miou"] == 1.0
    assert majority_baseline(labels, labels[:1], 2)["miou"] < 1.0


def test_probe_baselines_reuse_the_splits_probe_stats_read(monkeypatch):
    """The demo asks for a run's per-image statistics and its trivial predictors: each split is read once."""
    from fit3d.probe import summary
    from fit3d.probe.config import ProbeConfig

    reads = []

    class Split:
        def __init__(self, split):
            self.depth = torch.full((2, 4, 6), 2.0 if split == "train" else 3.0)
            self.data = type("Meta", (), {"max_depth": 10.0})()

    monkeypatch.setattr("fit3d.probe.datasets.load_probe_data", lambda data, split, res, **kw: reads.append(split) or split)
    monkeypatch.setattr("fit3d.probe.protocol.materialise", lambda split, task: Split(split))
    cfg = ProbeConfig(task="depth", data="d")
    splits: dict = {}
    summary._probe_split(cfg, "test", splits)  # as probe_stats reads it
    b = summary.probe_baselines(cfg, splits)
    assert reads == ["test", "train"] and abs(b["train mean depth"]["rmse"] - 1.0) < 1e-6
    summary.probe_baselines(cfg)  # without the record: read again
    assert reads == ["test", "train", "train", "test"]
