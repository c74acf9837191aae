"""The classification probe: image-folder reading, DINO's k-NN vote, the linear head, ``fit3d probe --task cls``."""

import json

import numpy as np
import pytest
import torch

from fit3d.cli import main
from fit3d.errors import SceneError
from fit3d.probe import sources
from fit3d.probe.cls import (ClsSettings, run_cls_probe, knn_classify, load_image, majority_top1, predict_linear,
                             read_image_folder, train_linear)
from fit3d.probe.config import ProbeConfig
from probe_testkit import PoolBackbone, write_png

COLOURS = {"blue": (40, 60, 200), "orange": (220, 140, 40), "red": (210, 30, 30)}


def write_folder(root, per_class=(12, 6), size=(40, 32), seed=0):
    """root/{train,val}/<colour>/*.png: noisy images whose dominant colour is the class (a 2:1 class
    imbalance in train, so the majority baseline is above chance)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for i, (name, c) in enumerate(COLOURS.items()):
            for j in range(n * (2 if i == 0 and split == "train" else 1)):
                img = np.clip(np.array(c) + rng.normal(0, 60, (size[1], size[0], 3)), 0, 255)
                write_png(root / split / name / f"{j:03d}.png", img)
    return root


def clusters(n, seed, centres):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(centres)
    return centres[y] + 0.8 * torch.randn(n, centres.shape[1], generator=g), y


def test_image_folder_layout_classes_and_errors(tmp_path):
    root = write_folder(tmp_path / "f")
    tr = read_image_folder(root, "train")
    assert tr.class_names == sorted(COLOURS) and len(tr) == 12 * 4
    assert np.bincount(tr.labels).tolist() == [24, 12, 12] and tr.names[0] == "blue/000.png"
    te = read_image_folder(root, "test", class_names=tr.class_names, max_items=9)
    assert len(te) == 9 and set(te.labels.tolist()) == {0, 1, 2}  # evenly spaced: every class kept
    img = load_image(te.paths[0], 28)  # 40x32 -> shorter side 32 -> centre crop 28x28
    assert img.shape == (28, 28, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    (root / "val" / "green").mkdir()
    write_png(root / "val" / "green" / "x.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SceneError, match="green.*not among the training classes"):
        read_image_folder(root, "test", class_names=tr.class_names)
    with pytest.raises(SceneError, match="no train/ folder"):
        read_image_folder(tmp_path / "nothing", "train")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(SceneError, match="no images"):
        read_image_folder(tmp_path / "empty", "train")
    (tmp_path / "bad" / "train" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "train" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SceneError, match="x.jpg: not a readable image"):
        load_image(tmp_path / "bad" / "train" / "a" / "x.jpg", 16)


def test_knn_is_dinos_weighted_vote():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    y = torch.tensor([0, 0, 1, 1, 1])
    # nearest 3 of (1, 0.05): two of class 0 (cos ~1) and one of class 1 (cos ~0.3): class 0 wins by weight
    assert knn_classify(train, y, torch.tensor([[1.0, 0.05]]), 2, k=3, temperature=0.07).tolist() == [0]
    # with k = 5 and a very high temperature the vote is a plain majority: class 1 (3 of 5)
    assert knn_classify(train, y, torch.tensor([[1.0, 0.05]]), 2, k=5, temperature=1e6).tolist() == [1]
    # cosine: the scale of a feature does not matter
    assert knn_classify(train * 7, y, torch.tensor([[0.0, 3.0]]), 2, k=2).tolist() == [1]


def test_knn_and_linear_learn_beyond_the_trivial_baselines():
    centres = 2.0 * torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    x, y = clusters(200, 1, centres)
    xt, yt = clusters(80, 2, centres)
    base = majority_top1(y.numpy(), yt.numpy())
    knn = (knn_classify(x, y, xt, 4) == yt).float().mean().item()
    head, log = train_linear(x, y, 4, ClsSettings(iterations=150, batch_size=32, lr=1e-2))
    lin = (predict_linear(head, xt) == yt).float().mean().item()
    assert np.mean(log["losses"][-15:]) < 0.5 * np.mean(log["losses"][:15])
    assert base <= 0.3 and knn > 0.9 and lin > 0.9


def test_cls_probe_end_to_end_with_intervals_and_heads(tmp_path, monkeypatch, capsys):
    def resolve(src, device="cpu"):
        return PoolBackbone(seed={"original": 0, "finetuned": 1}[src.kind])  # concat is never loaded

    monkeypatch.setattr(sources, "resolve_source", resolve)
    root = write_folder(tmp_path / "flowers")
    ft = tmp_path / "ft"
    ft.mkdir()
    argv = ["probe", "--task", "cls", "--data", str(root), "--features", "original", "finetuned", "concat",
            "--finetuned", str(ft), "--out", str(tmp_path / "out"), "--cls-size", "16", "--iterations", "60",
            "--batch-size", "16", "--lr", "1e-2", "--seeds", "0", "1", "--knn-k", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| concat |" in out and "baseline: majority class" in out and "control: original x2" in out
    d = json.loads((tmp_path / "out" / "probe.json").read_text())
    m = d["metrics"]
    base = m["baseline: majority class"]["knn_top1"]
    assert base == pytest.approx(6 / 18)
    for src in ("original", "finetuned", "concat"):  # colour separates the classes: well above the baselines
        assert m[src]["knn_top1"] > base + 0.3 and m[src]["linear_top1"] > base + 0.3
        assert m[src]["std"]["knn_top1"] == 0  # the k-NN does not depend on the head seed
    assert d["settings"]["n_train"] == 48 and d["settings"]["n_test"] == 18
    ci = d["intervals"]["ci"]["finetuned-original"]["knn_top1"]
    assert ci[0] <= ci[1] and set(d["intervals"]["ci"]) == {"finetuned-original", "concat-original"}
    assert d["intervals"]["original_x2"]["knn_top1"]["mean"] == m["original"]["knn_top1"]  # cosine: x2 = x1
    assert (tmp_path / "out" / "heads" / "concat_seed1.pt").exists()
    assert "finetuned - original (95% CI)" in (tmp_path / "out" / "probe.md").read_text()
    # a rerun reads the cached features: no model is loaded
    monkeypatch.setattr(sources, "resolve_source", lambda *a, **k: pytest.fail("features should be cached"))
    assert main(argv) == 0


def test_cls_probe_bad_input_is_a_plain_error(tmp_path, capsys):
    assert main(["probe", "--task", "cls", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) != 0
    assert "no train/ folder" in capsys.readouterr().err
    with pytest.raises(Exception, match="knn_k|knn-k"):
        run_cls_probe(ProbeConfig(task="cls", data=str(tmp_path), knn_k=0))
