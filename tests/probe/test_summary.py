"""Seed spread + bootstrap summaries (fit3d.probe.summary): the table states mean ± std and intervals, and
marks a gain / loss only where the interval excludes 0."""

import numpy as np

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
