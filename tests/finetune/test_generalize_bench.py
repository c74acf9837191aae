"""bench/generalize.py end to end on tiny settings (a tiny random DINOv2, few images), and its table logic."""

import json

import numpy as np
import pytest

from bench_kit import load_bench
from fit3d.paths import shared_dir


def _bench():
    return load_bench("generalize")


def test_claims_follow_the_interval_and_the_metric_direction():
    g = _bench()
    evals = {"e": {"ci": {"concat-original": {"rmse": [-0.2, -0.1], "miou": [-0.01, 0.02]},
                          "finetuned-original": {"rmse": [0.1, 0.3], "miou": [0.01, 0.02]}}}}
    c = g.claims(evals)["e"]
    assert c["concat-original"] == {"rmse": "gain", "miou": "n.s."}
    assert c["finetuned-original"] == {"rmse": "loss", "miou": "gain"}


def test_targets_read_each_source_by_name():
    g = _bench()
    m = lambda x: {"rmse": {"mean": x, "std": 0.0}, "rmse_aligned": {"mean": x, "std": 0.0}}  # noqa: E731
    ev = {"original": m(1.0), "finetuned": m(0.9), "concat": m(1.2),
          "ci": {"concat-original": {"rmse": [0.1, 0.3], "rmse_aligned": [-0.1, 0.1]},
                 "finetuned-original": {"rmse": [-0.2, -0.05], "rmse_aligned": [0.01, 0.02]}}}
    ctl = {"sun3d_depth_in_scene": {"ci": {"concat-original_x2": {"rmse": [-0.3, -0.1]}}}}
    t = g.targets({"sun3d_depth_in_scene": ev}, [3], ctl)
    assert t["sun3d_depth_in_scene: finetuned rmse <= 0.90 x original"] is True   # 0.9 <= 0.9
    assert t["sun3d_depth_in_scene: finetuned not worse than original (rmse, rmse_aligned)"] is False  # aligned loss
    assert t["sun3d_depth_in_scene: concat rmse <= 0.95 x original, interval excludes 0"] is False  # 1.2
    assert t["sun3d_depth_in_scene: concat rmse below the width control, interval excludes 0"] is True


def test_depth_per_image_scale_alignment_removes_a_global_scale():
    import torch

    from fit3d.probe.summary import DEPTH_METRICS, depth_per_image

    gt = torch.rand(3, 12, 16) * 3 + 1
    m = depth_per_image(gt * 1.5, gt, 1e-3, 10.0)  # right shape, wrong scale
    names = list(DEPTH_METRICS)
    assert (m[:, names.index("abs_rel")] == pytest.approx(0.5))
    assert np.allclose(m[:, names.index("abs_rel_aligned")], 0, atol=1e-6)
    assert np.allclose(m[:, names.index("delta1_aligned")], 1)


@pytest.mark.slow
def test_quick_path_end_to_end_with_a_tiny_model(tmp_path, tiny_model_dir, sevenscenes_path, capsys):
    for d in ("sun3d-office", "camvid", "icl-livingroom1", "flowers"):
        if not (shared_dir() / "data" / d).is_dir():
            pytest.skip(f"shared data/{d} missing")
    g = _bench()
    out = tmp_path / "gen"
    argv = ["--out", str(out), "--json", str(tmp_path / "r.json"), "--model-path", str(tiny_model_dir),
            "--quick", "--rooms", "2", "--room-views", "6", "--room-size", "64", "48", "--lift-width", "32", "--lift-feature-size", "64",
            "--lift-max-views", "8", "--finetune-steps", "2", "--probe-resolution", "64", "48",
            "--probe-iterations", "4", "--max-items", "8", "--bootstrap", "50", "--seeds", "2",
            "--recipe", "fit3d", "--set", "workers=0"]  # the tiny model has 2 blocks: no block-freezing preset
    assert g.main(argv) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert set(r["evals"]) == set(g.EVALS)
    for ev, e in r["evals"].items():
        assert set(e) == {"original", "finetuned", "concat", "ci"}
        assert set(e["ci"]) == {"concat-original", "finetuned-original"}
        for src in g.SOURCES:
            for m, v in e[src].items():
                assert set(v) == {"mean", "std"} and np.isfinite(v["mean"]), (ev, src, m)
        for key, cis in e["ci"].items():
            assert cis.keys() == e["original"].keys()
            assert all(lo <= hi for lo, hi in cis.values())
    assert {"rmse", "abs_rel", "delta1", "rmse_aligned"} <= set(r["evals"]["sun3d_depth_in_scene"]["original"])
    assert {"miou", "macc"} == set(r["evals"]["camvid_seg"]["original"])
    assert {"recall1", "recall2", "recall1_gap3"} <= set(r["evals"]["sun3d_corr"]["original"])
    assert r["evals"]["sun3d_depth_from_redkitchen"]["original"]["rmse"]["std"] >= 0  # 2 seeds
    assert (out / "finetuned" / "model" / "config.json").exists() and r["model_dir"].endswith("finetuned/model")
    assert {"lift", "finetune", "features", "total"} <= set(r["seconds"])
    ctl = r["controls"]["camvid_seg"]  # concat's width control: the original's tokens twice
    assert set(ctl["original_x2"]) == {"miou", "macc"} and set(ctl["ci"]) == {"concat-original_x2"}
    assert (out / "generalize.md").read_text().count("| sun3d_corr |") == 5
    # every depth and seg eval states its trivial predictors, in the heads' metrics, in the JSON and the table
    assert set(r["baselines"]) == {"sun3d_depth_from_redkitchen", "sun3d_depth_in_scene", "rooms_depth", "camvid_seg",
                                   "rooms_seg"}
    for ev, b in r["baselines"].items():
        if ev.endswith("_seg"):
            assert set(b) == {"train majority class", "train per-pixel majority class"}
            assert all(0 <= v["miou"] <= v["macc"] <= 1 for v in b.values())  # mIoU <= class accuracy
        else:
            assert set(b) == {"train mean depth", "train mean depth image"}
            assert all(np.isfinite(v["rmse"]) and v["rmse"] > 0 for v in b.values())
    md = (out / "generalize.md").read_text()
    assert md.count("| sun3d_depth_in_scene | train mean depth") == 2 and "| camvid_seg | train per-pixel majority" in md
    # the original's per-image results are kept for the next run with the same probe settings (one file per eval)
    before = sorted(p.name for p in (out / "cache" / "original_stats").iterdir())
    assert len(before) == 6
    assert {"knn_top1", "linear_top1"} == set(r["evals"]["flowers_cls"]["original"])
    assert r["settings"]["n_test"]["flowers_cls"] == r["settings"]["max_items"]  # --max-items caps it (quick: 24)

    # a subset of the evaluations on the same outputs: the fine-tuned model is reused, only those evals run
    assert g.main(argv[:2] + ["--json", str(tmp_path / "sub.json")] + argv[4:] + ["--evals", "sun3d_corr"]) == 0
    sub = json.loads((tmp_path / "sub.json").read_text())
    assert set(sub["evals"]) == {"sun3d_corr"}
    assert sub["evals"]["sun3d_corr"]["finetuned"] == r["evals"]["sun3d_corr"]["finetuned"]
    # what it reused counts the seconds of the run that computed it, not the near-zero of reusing it
    units = json.loads((out / "seconds.json").read_text())["units"]
    lifts = [k for k in units if k.startswith("lift/")]
    assert len(lifts) == len(r["settings"]["lifted_scenes"]) and "reused" not in r  # the first run computed all
    assert sub["reused"]["lift"] == {"recorded": len(lifts), "unrecorded": 0, "of": len(lifts)}
    assert sub["reused"]["finetune"]["recorded"] == 1 and sub["reused"]["generate"]["recorded"] == 3
    # (the stage seconds are rounded to 0.1 s: compare within that)
    assert sub["seconds"]["lift"] >= sum(units[k]["wall"] for k in lifts) - 0.051
    assert sub["seconds"]["finetune"] >= units[f"finetune/{(out / 'finetuned').resolve()}"]["wall"] - 0.051
    assert sub["this_run"]["seconds"] < sub["seconds"]["total"]
    assert "| lift |" in (md := (out / "generalize.md").read_text()) and "earlier run" in md and "This run itself" in md
    with pytest.raises(SystemExit):
        g.main(argv + ["--evals", "nope"])
    assert "--evals: invalid choice: 'nope'" in capsys.readouterr().err

def test_lift_all_redoes_a_lift_made_with_other_settings(tmp_path, tiny_backbone, tiny_model_dir):
    """A rerun with other room or lift settings must not reuse the lifted folder of the earlier run."""
    import dataclasses

    from fit3d.data.synthetic import SyntheticSceneConfig, generate_scenes
    from fit3d.lift.lifted import load_lifted

    g = _bench()
    cfg = g.GeneralizeConfig(model_path=str(tiny_model_dir), lift_width=32)
    room = SyntheticSceneConfig(num_views=6, width=64, height=48, seed=0)
    path = generate_scenes(tmp_path / "rooms", 1, room, progress=False)[0]
    d = g.lift_all(cfg, [("room", path, None)], tmp_path, tiny_backbone)[0]
    first = load_lifted(d).meta
    assert len(first["scene"]["train_views"]) == 5
    stamp = (d / "lift.json").stat().st_mtime_ns
    g.lift_all(cfg, [("room", path, None)], tmp_path, tiny_backbone)  # same settings: reused as is
    assert (d / "lift.json").stat().st_mtime_ns == stamp
    generate_scenes(tmp_path / "rooms", 1, dataclasses.replace(room, num_views=9), progress=False)  # regenerated
    g.lift_all(cfg, [("room", path, None)], tmp_path, tiny_backbone)
    again = load_lifted(d).meta
    assert len(again["scene"]["train_views"]) == 7  # 9 views, every 8th held out
    assert json.loads((d / "generalize.json").read_text())["source"]["config"]["num_views"] == 9
    g.lift_all(dataclasses.replace(cfg, lift_width=48), [("room", path, None)], tmp_path, tiny_backbone)
    assert load_lifted(d).meta["resolution"][0] == 48
    # targets from the other views need the per-view Gaussians a lift of an earlier version did not record
    meta = json.loads((d / "lift.json").read_text())
    del meta["backprojected"]["view_gaussians"]
    (d / "lift.json").write_text(json.dumps(meta))
    stamp = (d / "lift.json").stat().st_mtime_ns
    g.lift_all(dataclasses.replace(cfg, lift_width=48), [("room", path, None)], tmp_path, tiny_backbone)
    assert (d / "lift.json").stat().st_mtime_ns == stamp  # targets from every view: reused
    others = dataclasses.replace(cfg, lift_width=48, set=["target_views=others"])
    g.lift_all(others, [("room", path, None)], tmp_path, tiny_backbone)
    assert "view_gaussians" in load_lifted(d).meta["backprojected"]


def test_a_scene_without_depth_is_lifted_by_solve(tmp_path, tiny_backbone, tiny_model_dir):
    """The back-projected lift needs depth: a photo capture among the Stage 2 scenes (--extra-scenes) is lifted by
    fit3d lift's default, solve (here with no points either: its fallback, optimize), and recorded so."""
    import shutil

    from fit3d.data.synthetic import SyntheticSceneConfig, generate_scenes
    from fit3d.lift.lifted import load_lifted

    g = _bench()
    path = generate_scenes(tmp_path / "rooms", 1, SyntheticSceneConfig(num_views=6, width=64, height=48, seed=0),
                           progress=False)[0]
    photos = tmp_path / "photos"
    shutil.copytree(path, photos)
    shutil.rmtree(photos / "depth")
    assert g._has_depth(path) and not g._has_depth(photos)
    cfg = g.GeneralizeConfig(model_path=str(tiny_model_dir), lift_width=32, lift_iterations=5,
                             extra_scenes=[str(photos)], icl="", lift_redkitchen=False)
    scenes = g.stage2_scenes(cfg, {"lift": [path]})
    assert [n for n, _, _ in scenes] == ["photos", path.name]
    with pytest.warns(UserWarning, match="no depth"):
        d = g.lift_all(cfg, scenes[:1], tmp_path, tiny_backbone)[0]
    assert json.loads((d / "generalize.json").read_text())["method"] == "solve"
    assert load_lifted(d).meta["method"] == "solve"


@pytest.mark.parametrize("extra, says", [("nowhere", "no such folder"), ("sun3d", "evaluation only"),
                                         ("twice", "share a name")])
def test_extra_scenes_are_checked(tmp_path, extra, says):
    g = _bench()
    (tmp_path / "a" / "room").mkdir(parents=True)
    (tmp_path / "b" / "room").mkdir(parents=True)
    sun3d = tmp_path / "sun3d"
    sun3d.mkdir()
    extra = {"nowhere": [str(tmp_path / "nowhere")], "sun3d": [str(sun3d)],
             "twice": [str(tmp_path / "a" / "room"), str(tmp_path / "b" / "room")]}[extra]
    with pytest.raises(SystemExit, match=says):
        g.stage2_scenes(g.GeneralizeConfig(extra_scenes=extra, sun3d=str(sun3d)), {})


def test_the_proofs_stage2_length_is_the_recipes_unless_set():
    """The proof trains the recipe's epochs (--epochs 0); --epochs N replaces them; --set epochs=N has the last word."""
    from fit3d.finetune.recipes import recipe

    g = _bench()
    assert g.GeneralizeConfig().rooms == 30
    assert g.finetune_config(g.GeneralizeConfig()).epochs == recipe("default").epochs == 2
    assert g.finetune_config(g.GeneralizeConfig(epochs=1)).epochs == 1
    assert g.finetune_config(g.GeneralizeConfig(epochs=1, set=["epochs=3"])).epochs == 3
    assert g.finetune_config(g.GeneralizeConfig(finetune_steps=7)).max_steps == 7


@pytest.mark.parametrize("args, says", [(["--epochs", "-1"], "--epochs -1"), (["--set", "lr=-1"], "lr")])
def test_bad_stage2_settings_stop_before_any_work(tmp_path, args, says):
    """A bad --epochs or --set value is a plain error naming it, raised before a room is generated or lifted."""
    g = _bench()
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=says):
        g.main(["--out", str(out), "--quick", *args])
    assert not out.exists()


def test_the_in_scene_split_is_the_two_stretches():
    g = _bench()
    a, b = g.in_scene_split([934, 935, 984, 985, 3159, 3160, 3209, 3210])
    assert (a, b) == ([1, 2], [5, 6])
