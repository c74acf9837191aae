"""bench/targets_table.py: one row per bench/generalize.py result (differences with their interval's verdict, the
in-scene and concat ratios, the evals lost) and how many runs meet each of issue 21's targets."""

from __future__ import annotations

import json

from bench_kit import load_bench

GAPS = (3, 10)


def _eval(orig: dict, ft: dict, concat: dict, ci: dict) -> dict:
    stat = lambda d: {m: {"mean": v, "std": 0.0} for m, v in d.items()}  # noqa: E731
    return {"original": stat(orig), "finetuned": stat(ft), "concat": stat(concat),
            "ci": {"finetuned-original": ci, "concat-original": {m: [-1.0, 1.0] for m in orig}}}


def _result(in_scene_ft: float, camvid_ci: list[float]) -> dict:
    gen = load_bench("generalize")
    evals = {
        "sun3d_depth_in_scene": _eval({"rmse": 1.0, "rmse_aligned": 0.8}, {"rmse": in_scene_ft, "rmse_aligned": 0.7},
                                      {"rmse": 0.96, "rmse_aligned": 0.75},
                                      {"rmse": [-0.2, -0.05], "rmse_aligned": [-0.2, -0.01]}),
        "sun3d_corr": _eval({"recall1": 0.5, **{f"recall1_gap{g}": 0.5 for g in GAPS}},
                            {"recall1": 0.6, **{f"recall1_gap{g}": 0.6 for g in GAPS}},
                            {"recall1": 0.6, **{f"recall1_gap{g}": 0.6 for g in GAPS}},
                            {"recall1": [0.05, 0.15], **{f"recall1_gap{g}": [0.05, 0.15] for g in GAPS}}),
        "camvid_seg": _eval({"miou": 0.4}, {"miou": 0.39}, {"miou": 0.41}, {"miou": camvid_ci}),
    }
    return {"evals": evals, "claims": gen.claims(evals), "targets": gen.targets(evals, GAPS),
            "settings": {"recipe": "default", "set": ["seed=3", "epochs=3"], "finetune": {"seed": 3}}}


def test_rows_and_counts_follow_each_runs_intervals_and_targets(tmp_path, capsys):
    tt = load_bench("targets_table")
    paths = []
    for i, (ft, ci) in enumerate([(0.88, [-0.02, -0.001]), (0.95, [-0.02, 0.01])]):
        paths.append(tmp_path / f"run{i}" / "generalize.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps(_result(ft, ci)))
    tt.main([str(p) for p in paths])
    out = capsys.readouterr().out.splitlines()
    first, second = (line.split(" | ") for line in out[2:4])
    assert first[0] == "| `default` `epochs=3`, seed 3"  # the name from the recorded settings, seed apart
    assert first[3] == "0.880x G" and second[3] == "0.950x G"  # in-scene ratio with its interval's verdict
    assert first[6] == "-0.010 L" and second[6] == "-0.010"  # CamVid: a loss only where the interval excludes 0
    assert first[-1] == "1 |" and second[-1] == "0 |"  # evals lost
    assert first[1] == "-" and first[10] == "- / 0.960x"  # no RedKitchen eval in these runs
    assert "| sun3d_depth_in_scene: finetuned rmse <= 0.90 x original | 1 of 2 |" in out
    assert "| camvid_seg: finetuned not worse than original (miou) | 1 of 2 |" in out
    assert "| sun3d_corr: finetuned recall@1 above original at every gap | 2 of 2 |" in out


def test_names_must_match_the_results(tmp_path):
    import pytest

    tt = load_bench("targets_table")
    with pytest.raises(SystemExit):
        tt.main([str(tmp_path / "a.json"), "--names", "a", "b"])


def test_the_trivial_predictors_are_stated_as_ratios_to_the_original(tmp_path, capsys):
    tt = load_bench("targets_table")
    r = _result(0.9, [-0.02, -0.001])
    r["baselines"] = {"sun3d_depth_in_scene": {"train mean depth": {"rmse": 1.1, "rmse_aligned": 0.88},
                                               "train mean depth image": {"rmse": 1.03, "rmse_aligned": 0.84}}}
    p = tmp_path / "generalize.json"
    p.write_text(json.dumps(r))
    old = _result(0.9, [-0.02, -0.001])  # a run from before the baselines: no line from it
    (tmp_path / "old.json").write_text(json.dumps(old))
    tt.main([str(tmp_path / "old.json"), str(p)])
    out = capsys.readouterr().out
    assert ("- in-scene: trivial predictors' RMSE / the original's: train mean depth 1.100x (aligned 1.100x), "
            "train mean depth image 1.030x (aligned 1.050x)") in out
    assert "RedKitchen -> sun3d: trivial" not in out
