"""bench/recipe_search.py: the validation protocol (no test split touched) end to end on a tiny model, and its
lever table."""

import json

import numpy as np
import pytest

from bench_kit import load_bench
from fit3d.paths import shared_dir


def _search():
    return load_bench("recipe_search")


def test_flowers_split_holds_out_every_fourth_photo_of_each_class():
    s = _search()
    if not (shared_dir() / "data" / "flowers").is_dir():
        pytest.skip("shared data/flowers missing")
    cfg = s.SearchConfig(flowers_train=0, flowers_test=0)
    tr, te = s.flowers_split(cfg)
    assert not set(tr.names) & set(te.names)
    assert abs(len(te) - (len(tr) + len(te)) / 4) <= 5  # one in four of every class
    assert set(te.labels.tolist()) == set(range(5)) and all(p.parent.parent.name == "train" for p in te.paths)


@pytest.mark.slow
def test_search_end_to_end_with_a_tiny_model_and_the_lever_table(tmp_path, tiny_model_dir, sevenscenes_path, capsys):
    for d in ("camvid", "icl-livingroom1", "flowers"):
        if not (shared_dir() / "data" / d).is_dir():
            pytest.skip(f"shared data/{d} missing")
    s = _search()
    common = ["--model-path", str(tiny_model_dir), "--rooms", "1", "--room-views", "6", "--room-size", "64", "48",
              "--lift-width", "32", "--lift-feature-size", "64", "--lift-max-views", "8", "--finetune-steps", "2", "--probe-resolution", "64", "48",
              "--probe-iterations", "4", "--max-items", "6", "--bootstrap", "50", "--seeds", "2", "--val-rooms", "1",
              "--flowers-train", "10", "--flowers-test", "5", "--recipe", "fit3d", "--scenes-dir", str(tmp_path / "w")]
    assert s.main(["--out", str(tmp_path / "a")] + common + ["--set", "workers=0"]) == 0
    with pytest.raises(SystemExit, match="never saw"):  # the cross scene must not be lifted
        s.main(["--out", str(tmp_path / "c")] + common + ["--evals", "val_cross_depth"])
    assert s.main(["--out", str(tmp_path / "b")] + common + ["--set", "workers=0", "target_mode=residual", "--icl", "",
                                                             "--evals", *s.VAL_EVALS]) == 0
    a = json.loads((tmp_path / "a" / "search.json").read_text())
    assert set(a["evals"]) == set(s.DEFAULT_EVALS) == set(s.VAL_EVALS) - {"val_cross_depth"}
    for ev, e in a["evals"].items():
        for src in ("original", "finetuned", "concat"):
            assert all(np.isfinite(v["mean"]) for v in e[src].values()), (ev, src)
    assert set(a["baselines"]) == {"val_rooms_depth", "val_redkitchen_depth", "val_rooms_seg", "val_camvid_seg"}
    b = json.loads((tmp_path / "b" / "search.json").read_text())
    assert set(b["baselines"]) == set(a["baselines"]) | {"val_cross_depth"}  # each depth / seg eval's trivial predictors
    assert all(np.isfinite(v.get("rmse", v.get("miou"))) for e in b["baselines"].values() for v in e.values())
    assert "| val_cross_depth | train mean depth image |" in (tmp_path / "b" / "search.md").read_text()
    assert b["settings"]["finetune"]["target_mode"] == "residual" and set(b["evals"]) == set(s.VAL_EVALS)
    for ev in a["evals"]:  # the original's heads are the same in both runs (cached per probe setting)
        assert a["evals"][ev]["original"] == b["evals"][ev]["original"]
    capsys.readouterr()
    assert s.main(["--compare", str(tmp_path / "a" / "search.json"), str(tmp_path / "b" / "search.json")]) == 0
    table = capsys.readouterr().out
    assert "| fit3d, lift backprojected 64 px, 2 steps |" in table and "| original |" in table
    assert "target_mode=residual, lift backprojected 64 px, icl not lifted, 2 steps" in table
