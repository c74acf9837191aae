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


def test_heads_rows_time_an_iteration_of_both_trainers_on_the_benches_sources():
    bench = load_bench("probe_profile")
    patches, clss = bench.sources(4)
    o, f, concat, control = patches
    assert concat.shape[1] == control.shape[1] == 768 and clss[2] is clss[0] is clss[3]
    from fit3d.probe.batched import concatenations

    assert concatenations(patches) == [(0,), (1,), (0, 1), (0, 0)]  # what the trainers read from their parts
    rows = bench.heads_rows(iterations=2, rounds=1)
    assert [r[0].split(",")[0] for r in rows] == ["depth heads x12 (sun3d evals)", "seg heads x12 (CamVid)"]
    assert all(w > 0 and c > 0 for _, w, c, _ in rows)


def test_loss_rows_compare_both_losses_and_restore_the_fused_one():
    bench = load_bench("probe_profile")
    from fit3d.probe import batched

    fused = batched.depth_losses
    rows = bench.loss_rows(iterations=2, rounds=1)
    assert batched.depth_losses is fused
    assert [r[0].split(",")[1].strip() for r in rows] == ["loss as tensor ops", "loss as fused (numba)"]
    assert rows[1][3] == f"{rows[1][2] / rows[0][2]:.2f}x the CPU s"


def test_rounding_rows_report_a_finite_move():
    (row,) = load_bench("probe_profile").rounding_rows(iterations=2)
    pct = float(row[3].split("moved ")[1].split("%")[0])
    assert 0.0 <= pct < 100.0
