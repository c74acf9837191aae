"""bench/probe_profile.py: the depth-step breakdown accounts for the whole step."""

import pytest

from bench_kit import load_bench


def test_depth_step_parts_add_up_to_the_step():
    rows = load_bench("probe_profile").depth_rows(iterations=2)
    (_, wall, cpu, _), parts = rows[0], rows[1:]
    assert len(parts) == 4 and all(w >= 0 and c >= 0 for _, w, c, _ in parts)
    assert sum(w for _, w, _, _ in parts) == pytest.approx(wall / 2, rel=1e-6)
    assert sum(c for _, _, c, _ in parts) == pytest.approx(cpu / 2, rel=1e-6)


def test_autocast_rows_time_both_dtypes_and_give_the_ratio():
    rows = load_bench("probe_profile").autocast_rows(iterations=2, rounds=1)
    assert [r[0].rsplit(", ", 1)[1] for r in rows] == ["float32", "bf16 autocast"]
    assert all(w > 0 and c > 0 for _, w, c, _ in rows)
    assert rows[1][3] == f"{rows[1][2] / rows[0][2]:.2f}x the float32 CPU s"
