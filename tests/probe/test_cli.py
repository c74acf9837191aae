"""``fit3d probe`` end to end on tiny 7-Scenes-layout fixtures with a stand-in backbone."""

import json

import numpy as np
import pytest
import torch

from fit3d.cli import main
from fit3d.probe import sources
from fit3d.probe.datasets import load_probe_data
from fit3d.probe.depth import depth_metrics, predict_depth
from fit3d.probe.features import extract_features
from fit3d.probe.heads import load_depth_head, load_seg_head
from probe_testkit import PoolBackbone, write_7scenes


@pytest.fixture
def fake_backbone(monkeypatch):
    loaded = []

    def resolve(src, device="cpu"):
        loaded.append(src.kind)
        return PoolBackbone(seed={"original": 0, "finetuned": 1, "concat": 2}[src.kind])

    monkeypatch.setattr(sources, "resolve_source", resolve)
    return loaded


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_7scenes(tmp_path_factory.mktemp("kitchen"), list(range(0, 40, 2)) + list(range(400, 420, 2)),
                         labels=True)


def test_depth_two_sources_side_by_side_and_cache(scene, tmp_path, fake_backbone, capsys):
    ft = tmp_path / "ft"  # stands for a fine-tuned folder (the stand-in backbone ignores it)
    ft.mkdir()
    (ft / "fit3d.json").write_text("{}")
    argv = ["probe", "--task", "depth", "--data", str(scene), "--features", "original", "concat",
            "--finetuned", str(ft), "--out", str(tmp_path / "out"), "--resolution", "32", "24",
            "--iterations", "10", "--batch-size", "4", "--lr", "3e-3", "--figure", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| original |" in out and "| concat |" in out and "baseline: train mean depth" in out
    d = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert set(d["metrics"]) == {"original", "concat", "baseline: train mean depth", "baseline: train mean depth image"}
    assert "baseline: train mean depth image" in out  # the position prior beside the constant
    for k in ("rmse", "abs_rel", "delta1", "sq_rel", "log10", "rmse_log", "delta2", "delta3"):
        assert np.isfinite(d["metrics"]["original"][k])
    assert d["settings"]["n_train"] == 20 and d["settings"]["n_test"] == 10 and d["settings"]["seed"] == 0
    assert (tmp_path / "out" / "figure.png").stat().st_size > 0 and (tmp_path / "out" / "probe.md").exists()
    assert sorted(fake_backbone) == ["finetuned", "original"]  # concat is made of their cached features
    # the trained heads are saved and reproduce the reported metric on the test split
    _, m = load_depth_head(tmp_path / "out" / "heads" / "concat.pt")
    assert (m["patch_dim"], m["cls_dim"], m["source"]["kind"]) == (32, 16, "concat")  # the stand-ins: 16 wide each
    assert m["resolution"] == [32, 24] and m["source"]["finetuned_dir"] == str(ft)
    head, m = load_depth_head(tmp_path / "out" / "heads" / "original.pt")
    test = load_probe_data(scene, "test", (32, 24))
    images = [test.view(i).image for i in range(len(test))]
    gt = torch.from_numpy(np.stack([test.view(i).depth for i in range(len(test))]))
    patch, cls = extract_features(PoolBackbone(seed=0), images)
    pred = predict_depth(head, patch, cls, (24, 32))
    rmse = depth_metrics(pred, gt, m["min_depth"], m["max_depth"])["rmse"]
    assert rmse == pytest.approx(d["metrics"]["original"]["rmse"], rel=1e-5)
    # second run: every feature set comes from the cache, no model is loaded
    fake_backbone.clear()
    assert main(argv) == 0
    d2 = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert fake_backbone == [] and d2["timing"]["original"]["train_from_cache"]
    assert d2["metrics"]["original"]["rmse"] == pytest.approx(d["metrics"]["original"]["rmse"])  # seeded


def test_corr_and_seg(scene, tmp_path, fake_backbone):
    assert main(["probe", "--task", "corr", "--data", str(scene), "--out", str(tmp_path / "c"),
                 "--resolution", "32", "24", "--gaps", "2", "4", "--cache-dir", "none"]) == 0
    d = json.loads((tmp_path / "c" / "probe.json").read_text())["metrics"]["original"]
    assert {"recall@1", "recall@2", "recall@4", "by_gap", "by_rotation"} <= set(d)
    assert d["recall@1"] <= d["recall@2"] <= d["recall@4"] and d["by_gap"]["gap 2"]["pairs"] == 9
    assert main(["probe", "--task", "seg", "--data", str(scene), "--out", str(tmp_path / "s"),
                 "--resolution", "32", "24", "--iterations", "10", "--batch-size", "4", "--figure", "1"]) == 0
    m = json.loads((tmp_path / "s" / "probe.json").read_text())["metrics"]
    assert {"miou", "macc"} <= set(m["original"]) and "baseline: majority class" in m
    assert m["baseline: per-pixel majority class"]["miou"] >= 0
    head, meta = load_seg_head(tmp_path / "s" / "heads" / "original.pt")
    assert meta["num_classes"] == 3 and head.conv.in_channels == 16
    assert not (tmp_path / "c" / "heads").exists()  # correspondence trains no head


def test_bad_input_is_a_plain_error(tmp_path, fake_backbone, capsys):
    assert main(["probe", "--task", "depth", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["probe", "--task", "depth", "--data", str(tmp_path), "--features", "concat"]) == 1
    assert "--finetuned" in capsys.readouterr().err


def test_depth_validation_frames_choose_the_head_checkpoint(scene, tmp_path, fake_backbone, capsys):
    argv = ["probe", "--task", "depth", "--data", str(scene), "--features", "original", "--out", str(tmp_path / "o"),
            "--resolution", "32", "24", "--iterations", "20", "--batch-size", "4", "--lr", "3e-3", "--figure", "0",
            "--val-frames", "30-38", "--val-every", "5"]
    assert main(argv) == 0
    assert "best iteration (val abs rel)" in capsys.readouterr().out
    d = json.loads((tmp_path / "o" / "probe.json").read_text())
    assert d["settings"]["n_val"] == 5 and d["settings"]["n_train"] == 20  # frames 30..38 of 0..38
    assert d["metrics"]["original"]["best_iteration"] in (5, 10, 15, 20)
    assert main(argv[:-4] + ["--val-frames", "100-200", "--overwrite"]) != 0  # no validation view: a plain error
    assert "0 validation views" in capsys.readouterr().err
    seg = [a if a != "depth" else "seg" for a in argv]
    assert main([*seg, "--overwrite"]) != 0  # only depth heads use it: said, not silently ignored
    assert "does not use it" in capsys.readouterr().err


def test_seeds_give_mean_std_and_per_seed_heads(scene, tmp_path, fake_backbone, capsys):
    argv = ["probe", "--task", "depth", "--data", str(scene), "--out", str(tmp_path / "o"), "--resolution", "32", "24",
            "--iterations", "10", "--batch-size", "4", "--lr", "3e-3", "--figure", "0", "--seeds", "0", "1", "2"]
    assert main(argv) == 0
    assert " ± " in capsys.readouterr().out  # the table shows mean ± std
    d = json.loads((tmp_path / "o" / "probe.json").read_text())
    m = d["metrics"]["original"]
    per = [m["per_seed"][s]["rmse"] for s in ("0", "1", "2")]
    assert m["rmse"] == pytest.approx(np.mean(per)) and m["std"]["rmse"] == pytest.approx(np.std(per, ddof=1))
    assert len(set(per)) == 3 and m["seeds"] == [0, 1, 2] and d["settings"]["head_seeds"] == [0, 1, 2]
    assert set(d["heads"]) == {"original", "original_seed1", "original_seed2"}
    _, meta = load_depth_head(d["heads"]["original_seed2"])
    assert meta["seed"] == 2
    # one seed given explicitly is the plain run with that seed
    assert main(argv[:-4] + ["--seeds", "1", "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "probe.json").read_text())["metrics"]["original"]
    assert one["rmse"] == pytest.approx(m["per_seed"]["1"]["rmse"], rel=1e-6) and one["std"]["rmse"] == 0.0


def test_protocol_and_cli_round_trip():
    import argparse
    import dataclasses

    from fit3d.config import from_args, from_dict
    from fit3d.probe import cli, protocol

    assert cli.ProbeConfig is protocol.ProbeConfig and cli.run_probe is protocol.run_probe
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    ns = p.parse_args(["--task", "corr", "--protocol", "probe3d", "--seeds", "3", "4", "--features", "original",
                       "concat", "--resolution", "64", "48", "--num-corr", "50", "--lr", "0.01"])
    cfg = from_args(protocol.ProbeConfig, ns)
    assert (cfg.task, cfg.protocol, cfg.head_seeds, cfg.features, cfg.num_corr, cfg.lr) == \
        ("corr", "probe3d", [3, 4], ["original", "concat"], 50, 0.01)
    assert from_dict(protocol.ProbeConfig, dataclasses.asdict(cfg)) == cfg
    assert protocol.ProbeConfig().head_seeds == [0]
    with pytest.raises(SystemExit):
        p.parse_args(["--protocol", "nope"])
    # the heads' settings derive from the config: the protocol's per-task values unless it overrides them
    from fit3d.probe.depth import DepthSettings
    from fit3d.probe.seg import SegSettings

    d = DepthSettings.from_config(protocol.ProbeConfig(iterations=3000), 10.0, 0)
    assert (d.lr, d.weight_decay, d.warmup, d.iterations) == (1e-4, 0.01, 1000, 3000)
    s = SegSettings.from_config(protocol.ProbeConfig(iterations=4000, lr=5e-3, warmup=7), 255, 1)
    assert (s.lr, s.warmup, s.seed) == (5e-3, 7, 1)
    assert SegSettings.from_config(protocol.ProbeConfig(iterations=4000), 255, 0).warmup == 150  # 1500 / 40k
    assert (DepthSettings().iterations, SegSettings().batch_size) == (protocol.ProbeConfig().iterations,
                                                                       protocol.ProbeConfig().batch_size)


def test_corr_probe3d_protocol_end_to_end(scene, tmp_path, fake_backbone):
    assert main(["probe", "--task", "corr", "--protocol", "probe3d", "--data", str(scene), "--out", str(tmp_path / "c"),
                 "--resolution", "32", "24", "--cache-dir", "none", "--num-corr", "20", "--figure", "1"]) == 0
    d = json.loads((tmp_path / "c" / "probe.json").read_text())["metrics"]["original"]
    assert {"recall@5px", "recall@10px", "recall@20px", "by_rotation"} <= set(d)
    assert d["recall@5px"] <= d["recall@10px"] <= d["recall@20px"] and d["pairs"] > 0
    assert list(d["by_rotation"]) == ["0-15deg", "15-30deg", "30-60deg", "60-180deg"]
    assert (tmp_path / "c" / "figure.png").exists()


def test_rerun_with_other_settings_is_refused_unless_overwrite(scene, tmp_path, fake_backbone, capsys):
    """Issue 22: a second probe into the same --out with other settings does not silently replace the first."""
    out = tmp_path / "out"
    argv = ["probe", "--task", "depth", "--data", str(scene), "--features", "original", "--out", str(out),
            "--resolution", "32", "24", "--iterations", "5", "--batch-size", "4", "--figure", "0"]
    assert main(argv) == 0
    first = (out / "probe.json").read_bytes()
    assert main([*argv[:-2], "--figure", "0"]) == 0  # the same settings: it runs again
    rc = main([*argv, "--iterations", "7"])
    err = capsys.readouterr().err
    assert rc != 0 and "iterations: 5 -> 7" in err and "--overwrite" in err and "Traceback" not in err
    assert json.loads((out / "probe.json").read_text())["settings"]["iterations"] == 5
    assert main([*argv, "--iterations", "7", "--overwrite"]) == 0
    assert json.loads((out / "probe.json").read_text())["settings"]["iterations"] == 7
    assert (out / "probe.json").read_bytes() != first
