"""Integration: a tiny `fit3d demo` (one small room, few iterations) runs every stage end to end, its report
carries the seed spread and intervals, reruns resume and changed room settings are refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fit3d.demo import DemoConfig, check_rooms, resolve_model_path, run_demo
from fit3d.errors import ModelNotFoundError
from fit3d.finetune.config import FinetuneConfig
from fit3d.lift.config import LiftConfig, SolveConfig
from fit3d.probe.config import ProbeConfig
from fit3d.run import SettingsMismatch


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, dinov2_path, monkeypatch):
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(dinov2_path))
    cfg = DemoConfig(out=str(tmp_path / "demo"), report_dir=str(tmp_path / "docs"), train_scenes=1, test_scenes=1,
                     num_views=8, width=112, height=84, bootstrap=100,
                     lift=LiftConfig(method="solve", solve=SolveConfig(geometry_iterations=0), width=56),
                     finetune=FinetuneConfig(max_steps=3),
                     probe=ProbeConfig(iterations=15, resolution=[112, 84], seeds=[0, 1]))
    res = run_demo(cfg)
    # every stage produced numbers for every feature source
    for key in ("depth_rmse", "seg_miou"):
        assert set(res[key]) == {"original", "finetuned", "concat"}
        assert all(v == v for v in res[key].values())  # not NaN
    assert res["finetune"]["steps"] == 3
    assert res["lift"]["synthetic_0000"]["heldout"]["feature_cosine"] > 0
    held = res["heldout"]
    assert set(held["evals"]) == {"rooms_seg", "rooms_depth"} and held["seeds"] == [0, 1]
    # the per-image statistics rebuilt from the saved heads give the probe's own numbers (mean over seeds)
    assert held["evals"]["rooms_seg"]["finetuned"]["miou"]["mean"] == pytest.approx(res["seg_miou"]["finetuned"])
    assert held["evals"]["rooms_depth"]["concat"]["rmse"]["mean"] == pytest.approx(res["depth_rmse"]["concat"])
    for ev, e in held["evals"].items():
        assert set(e["ci"]) == {"concat-original", "finetuned-original"}
        assert all(lo <= hi for cis in e["ci"].values() for lo, hi in cis.values())
        assert "original_x2" in held["controls"][ev]
    out = tmp_path / "demo"
    assert json.loads((out / "results.json").read_text())["depth_rmse"] == res["depth_rmse"]
    report = (tmp_path / "docs" / "report.md").read_text()
    # the report carries the seed spread, the intervals, the control and the time per stage
    assert "| rooms_seg | miou ↑ |" in report and "| rooms_depth | rmse ↓ |" in report
    assert " ± " in report and "95%" in report and "original_x2" in report and "### What the numbers show" in report
    assert "**In short:**" in report
    assert "| lift |" in report and "| intervals |" in report
    # held-out correspondence next to seg and depth, with its trivial baseline; no machine path in the report
    assert "## Correspondence on the held-out rooms" in report and "baseline: same patch position" in report
    # the heads' trivial predictors, in their metrics, beside their numbers
    b = held["baselines"]["rooms_depth"]
    assert set(b) == {"train mean depth", "train mean depth image"} and all(v["rmse"] > 0 for v in b.values())
    assert set(held["baselines"]["rooms_seg"]) == {"train majority class", "train per-pixel majority class"}
    assert "| rooms_depth | train mean depth image |" in report and "| rooms_seg | train majority class |" in report
    assert str(dinov2_path) not in report and str(tmp_path) not in report
    for pic in ("scene.png", "compare.png", "correspondence.png", "probe_depth.png", "probe_seg.png"):
        assert (tmp_path / "docs" / pic).stat().st_size > 1000, pic
        assert f"]({pic})" in report
    # the fine-tuned model loads with transformers
    from transformers import AutoModel

    assert AutoModel.from_pretrained(out / "finetuned" / "model") is not None
    # a rerun resumes (the lift is skipped); other room settings in the same folder are refused
    assert "This run resumed" not in report and "reused" not in res and "computed by" not in report
    again = run_demo(cfg)
    assert again["lift"] == res["lift"] and again["finetune"]["steps"] == 3
    # whose time table gives the stages it reused the seconds of the run that computed them, marked, and its own
    assert again["reused"] == {k: {"recorded": n, "unrecorded": 0, "of": n}
                               for k, n in (("generate", 2), ("lift", 1), ("finetune", 1))}
    for stage in again["reused"]:
        assert again["cpu_seconds"][stage] == pytest.approx(res["cpu_seconds"][stage], abs=0.11)
    assert again["this_run"]["cpu_seconds"] < again["cpu_seconds"]["total"]
    report = (tmp_path / "docs" / "report.md").read_text()
    assert "**This run resumed an earlier one" in report and "| lift |" in report and "| earlier run |" in report
    assert "This run itself took" in report
    with pytest.raises(SettingsMismatch, match="num_views"):
        run_demo(dataclasses.replace(cfg, num_views=6))


def test_changed_rooms_are_not_silently_reused(tmp_path):
    out = tmp_path / "demo"
    cfg = DemoConfig(out=str(out))
    check_rooms(out, cfg)
    check_rooms(out, dataclasses.replace(cfg, probe=ProbeConfig(iterations=5)))  # probe settings: rooms reused
    with pytest.raises(SettingsMismatch, match=r"train_scenes: 14 -> 3"):
        check_rooms(out, dataclasses.replace(cfg, train_scenes=3))
    old = tmp_path / "old"  # a demo folder written before rooms.json existed
    (old / "lifted").mkdir(parents=True)
    with pytest.raises(SettingsMismatch, match="records no settings"):
        check_rooms(old, cfg)


def test_offline_without_local_copy_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.delenv("FIT3D_MODEL_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("fit3d.demo.shared_model_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_path("dinov2_small", None)
    msg = str(e.value)
    assert "--model-path" in msg and "FIT3D_MODEL_PATH" in msg and "not reachable" in msg


def test_explicit_model_path_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("FIT3D_MODEL_PATH", str(tmp_path / "env"))
    assert resolve_model_path("dinov2_small", str(tmp_path / "arg")) == str(tmp_path / "arg")
    assert resolve_model_path("dinov2_small", None) == str(tmp_path / "env")


def test_findings_read_the_intervals():
    """The report's plain-language lines count only intervals that exclude 0, in the metric's direction."""
    import numpy as np

    from fit3d.demo import findings
    from fit3d.probe.summary import CONTROL, claims, summarise

    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 1.0, (1, 40, 6)).repeat(2, 0)
    noise = lambda: rng.normal(0, 0.002, base.shape)  # noqa: E731
    concat = base * 0.9 + noise()
    stats = {"original": base + noise(), "finetuned": base * 1.2 + noise(),  # 20% worse metric depth everywhere
             "concat": concat, CONTROL: concat.copy()}  # concat gains, and the control exactly as much
    e = summarise("depth", stats, type("C", (), {"bootstrap": 200})())
    held = {"evals": {"rooms_depth": e}, "controls": {"rooms_depth": e.pop("_control")}}
    held["claims"] = claims(held["evals"])
    text = "\n".join(findings(held))
    # delta1-type metrics move the other way under a scale of the errors, so count from the claims themselves
    ft = held["claims"]["rooms_depth"]["finetuned-original"]
    assert f"better than the original on {list(ft.values()).count('gain')} and worse on " \
           f"{list(ft.values()).count('loss')}" in text
    assert "rmse +0." in text and "*losses* on" in text
    assert "matched by the control" in text and "better on 0 and worse on 0 of 6" in text


def test_bad_counts_are_refused_before_any_work(tmp_path):
    from fit3d.errors import Fit3DError

    with pytest.raises(Fit3DError, match="--bootstrap"):
        run_demo(DemoConfig(out=str(tmp_path / "demo"), bootstrap=0))
    assert not (tmp_path / "demo").exists()
