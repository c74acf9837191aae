"""A resumed ``fit3d pipeline`` reports each stage's seconds from the run that computed it: lifts and fine-tuning it
reuses keep the recorded seconds (marked in the table), with this run's own time apart; a folder written before the
seconds were recorded still resumes, its reused stages at this run's seconds and marked so. The stages are fakes
that spend known CPU time, so the real resume decisions (``reuse_finished``, ``is_finished``) run in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fit3d.data.synthetic import SyntheticSceneConfig, generate_scenes
from fit3d.io import read_json, write_json
from fit3d.lift.lifted import DECODER_FILE, GAUSSIANS_FILE, META_FILE, lift_settings
from fit3d.pipeline import SECONDS_FILE, PipelineConfig, run_pipeline

LIFT_CPU, FINETUNE_CPU = 0.3, 0.2  # CPU seconds the fake stages spend when they compute


@pytest.fixture
def fake_stages(monkeypatch, spin):
    """Stage 1, Stage 2 and the probes replaced by fakes; returns {"lift": n, "finetune": n} computations."""
    from fit3d.finetune.trainer import MANIFEST_FILE, MODEL_DIR, is_finished

    computed = {"lift": 0, "finetune": 0}

    def lift_scene(scene, cfg, out, name=None):
        computed["lift"] += 1
        spin(LIFT_CPU)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for f in (GAUSSIANS_FILE, DECODER_FILE):
            (out / f).write_bytes(b"fake")
        meta = {"name": name, "settings": lift_settings(cfg, Path(scene).resolve())}
        write_json(out / META_FILE, meta)  # last: marks the lift finished
        return meta

    def finetune(scene_dirs, backbone, out, cfg, how=None):
        out = Path(out)
        if is_finished(out):  # as the trainer: a finished run is returned as is
            return read_json(out / MANIFEST_FILE)
        computed["finetune"] += 1
        spin(FINETUNE_CPU)
        (out / MODEL_DIR).mkdir(parents=True)
        write_json(out / MANIFEST_FILE, {"steps": 3})
        return {"steps": 3}

    monkeypatch.setattr("fit3d.pipeline.lift_scene", lift_scene)
    monkeypatch.setattr("fit3d.pipeline.finetune", finetune)
    monkeypatch.setattr("fit3d.pipeline.run_probe", lambda cfg, **kw: {"metrics": {"original": {"rmse": 1.0}}})
    return computed


@pytest.fixture
def pipeline(tmp_path):
    """run() -> results of a pipeline over one tiny generated room into ``tmp_path / "run"``."""
    (room,) = generate_scenes(tmp_path / "rooms", 1, SyntheticSceneConfig(num_views=2, width=32, height=24),
                              progress=False)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a local model folder; the fakes load no weights
    cfg = PipelineConfig(out=str(tmp_path / "run"), model_path=str(tmp_path / "model"), device="cpu",
                         tasks=["depth"])
    return lambda: run_pipeline([str(room)], cfg, verbose=False)


def test_a_resumed_run_reports_the_recorded_seconds_of_reused_stages(pipeline, fake_stages, tmp_path):
    first = pipeline()
    assert fake_stages == {"lift": 1, "finetune": 1} and "reused" not in first
    assert first["cpu_seconds"]["lift"] >= LIFT_CPU - 0.05 and first["cpu_seconds"]["finetune"] >= FINETUNE_CPU - 0.05
    record = read_json(tmp_path / "run" / SECONDS_FILE)["units"]
    assert set(record) == {"lift/synthetic_0000", "finetune"}
    assert record["lift/synthetic_0000"]["cpu"] >= LIFT_CPU
    assert "computed by" not in (tmp_path / "run" / "results.md").read_text()

    again = pipeline()
    assert fake_stages == {"lift": 1, "finetune": 1}  # both reused, nothing computed again
    # the reused stages carry the first run's seconds, not the near-zero of reusing them
    for stage, key in (("lift", "lift/synthetic_0000"), ("finetune", "finetune")):
        assert again["cpu_seconds"][stage] == pytest.approx(record[key]["cpu"], abs=0.051)
        assert again["seconds"][stage] == pytest.approx(record[key]["wall"], abs=0.051)
    assert again["reused"] == {"lift": {"recorded": 1, "unrecorded": 0, "of": 1},
                               "finetune": {"recorded": 1, "unrecorded": 0, "of": 1}}
    # the total is the computing runs' (at least the reused stages), this run's own time is apart and small
    assert again["cpu_seconds"]["total"] >= LIFT_CPU + FINETUNE_CPU
    assert again["this_run"]["cpu_seconds"] < again["cpu_seconds"]["total"] - LIFT_CPU
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| stage | wall s | CPU s | computed by |" in md
    assert f"| lift | {again['seconds']['lift']:.0f} | {again['cpu_seconds']['lift']:.0f} | earlier run |" in md
    assert "| finetune |" in md and "| probe_depth |" in md and md.count("| earlier run |") == 2
    assert "| this run |" in md and "This run itself took" in md and "not recorded" not in md
    assert json.loads((tmp_path / "run" / "results.json").read_text())["reused"] == again["reused"]


def test_a_folder_without_recorded_seconds_resumes_at_this_runs_seconds(pipeline, fake_stages, tmp_path):
    pipeline()
    (tmp_path / "run" / SECONDS_FILE).unlink()  # a run folder written before the seconds were recorded
    again = pipeline()
    assert fake_stages == {"lift": 1, "finetune": 1}  # it still resumes
    assert again["reused"] == {"lift": {"recorded": 0, "unrecorded": 1, "of": 1},
                               "finetune": {"recorded": 0, "unrecorded": 1, "of": 1}}
    assert again["cpu_seconds"]["lift"] < LIFT_CPU / 2  # only this run's seconds are known
    md = (tmp_path / "run" / "results.md").read_text()
    assert md.count("| earlier run, not recorded |") == 2 and "understate" in md
