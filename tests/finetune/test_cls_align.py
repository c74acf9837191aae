"""fit3d.finetune.cls_align / fit3d.models.cls_map: the fine-tuned [CLS] mapped back to the original's after Stage 2."""

import json
import shutil

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from fit3d.errors import Fit3DError, ModelNotFoundError
from fit3d.finetune import FinetuneConfig, finetune
from fit3d.finetune.assembled import align_folder
from fit3d.finetune.cls_align import fit_cls_map, picked_views
from fit3d.finetune.data import RenderedViews, load_scenes
from fit3d.models import load_backbone
from fit3d.models.cls_map import CLS_MAP_FILE, ClsMap
from fit3d.models.identity import folder_fingerprint

BACKBONE = "dinov2_small"


def quick(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**dict(lr=1e-3, workers=0, progress=False, evaluate=False, checkpoint_every=0,
                                    max_steps=8), **kw})


def _rel(a, b) -> float:
    return float(((b - a).norm(dim=1) / a.norm(dim=1)).mean())


def test_fit_recovers_an_affine_drift_and_keeps_the_identity_when_there_is_none():
    g = torch.Generator().manual_seed(0)
    D, N = 8, 400
    c = torch.randn(N, D, generator=g) + 2.0
    A = torch.eye(D) + 0.3 * torch.randn(D, D, generator=g)
    b = torch.randn(D, generator=g)
    groups = torch.arange(N) // 50  # 8 scenes
    o = c @ A + b + 0.01 * torch.randn(N, D, generator=g)
    m, info = fit_cls_map(c, o, groups)
    fresh = torch.randn(100, D, generator=g) + 2.0
    assert _rel(fresh @ A + b, m(fresh)) < 0.05 * _rel(fresh @ A + b, fresh)
    assert info["cv_error"][info["lambda"]] < 0.1 * info["error_without_map"] and info["groups"] == 8
    same, _ = fit_cls_map(c, c.clone(), groups)  # nothing to undo: the identity (to rounding)
    assert_close(same(fresh), fresh, atol=1e-4, rtol=1e-4)
    with pytest.raises(Fit3DError, match="pairs"):
        fit_cls_map(c, o[:, :4], groups)
    shift, info = fit_cls_map(c, c + b, groups, kind="shift")  # a pure offset: found exactly, nothing else
    assert_close(shift(fresh), fresh + b, atol=1e-4, rtol=1e-4)
    assert info["error"] < 1e-5 < info["error_without_map"] and torch.equal(shift.weight, torch.eye(D))
    with pytest.raises(Fit3DError, match="kind"):
        fit_cls_map(c, o, groups, kind="lasso")


def test_a_model_folder_with_a_map_changes_its_last_cls_only(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    plain = load_backbone(BACKBONE, model_path=str(folder))
    fp = folder_fingerprint(folder)
    m = ClsMap(2.0 * torch.eye(32), torch.ones(32))
    m.save(folder)
    mapped = load_backbone(BACKBONE, model_path=str(folder))
    assert mapped.cls_map is not None and folder_fingerprint(folder) != fp  # the map is part of the model's identity
    x = torch.rand(2, 3, 48, 64)
    a, b = plain.features(x), mapped.features(x)
    assert torch.equal(a.patch, b.patch)
    assert_close(b.cls, 2.0 * a.cls + 1.0)
    first = (plain.features(x, layers=[0])[0], mapped.features(x, layers=[0, -1]))
    assert torch.equal(first[0].cls, first[1][0].cls)  # an earlier block's [CLS]: no map
    assert_close(first[1][1].cls, b.cls)
    ClsMap(torch.eye(16), torch.zeros(16)).save(folder)
    with pytest.raises(ModelNotFoundError, match="width 16"):
        load_backbone(BACKBONE, model_path=str(folder))
    (folder / CLS_MAP_FILE).write_bytes(b"not a map")
    with pytest.raises(ModelNotFoundError, match="unreadable"):
        load_backbone(BACKBONE, model_path=str(folder))


def test_cls_align_moves_cls_back_and_leaves_the_patches(tmp_path, lifted_dir, tiny_model_dir):
    """Same seed and steps with and without ``cls_align``: the same patch tokens bit for bit, a [CLS] nearer the
    original's on held-out views, the map saved beside the weights and recorded; ``align_folder`` fits the same
    map to the finished folder of the run without it; WiSE-FT of an aligned folder drops the map."""
    from fit3d.finetune import load_finetuned
    from fit3d.finetune.assembled import interpolate_folder

    views = RenderedViews(load_scenes([lifted_dir], embed_dim=32), 8, which="heldout", flip_prob=0.0)
    imgs = torch.stack([views[i]["image"] for i in range(len(views))])
    feats = {}
    for k in ("none", "ridge"):
        m = finetune([lifted_dir], BACKBONE, tmp_path / k, quick(cls_align=k), model_path=str(tiny_model_dir))
        assert ("cls_align" in m["metrics"]) == (k == "ridge") and m["config"]["cls_align"] == k
        assert (tmp_path / k / "model" / CLS_MAP_FILE).is_file() == (k == "ridge")
        orig, ft = load_finetuned(tmp_path / k)
        feats["original"], feats[k] = orig.features(imgs), ft.features(imgs)
    o, s2, al = feats["original"], feats["none"], feats["ridge"]
    assert torch.equal(s2.patch, al.patch)
    assert _rel(o.cls, al.cls) < 0.5 * _rel(o.cls, s2.cls), (_rel(o.cls, al.cls), _rel(o.cls, s2.cls))

    before = sorted(p.name for p in (tmp_path / "none").rglob("*"))
    m = align_folder(tmp_path / "none", tmp_path / "aligned")
    assert sorted(p.name for p in (tmp_path / "none").rglob("*")) == before  # the input is never changed
    assert m["config"]["cls_align"] == "ridge" and m["aligned_from"] == str((tmp_path / "none").resolve())
    assert_close(load_finetuned(tmp_path / "aligned")[1].features(imgs).cls, al.cls)

    m = interpolate_folder(tmp_path / "ridge", tmp_path / "wise", 0.5)
    assert m["config"]["cls_align"] == "none" and not (tmp_path / "wise" / "model" / CLS_MAP_FILE).exists()
    assert json.loads((tmp_path / "wise" / "fit3d.json").read_text())["settings"]["cls_align"] == "none"
    with pytest.raises(Fit3DError, match="cls-align"):
        FinetuneConfig(cls_align="lasso").validate()


def test_picked_views_are_evenly_spaced_and_every_view_by_default():
    assert picked_views(10) == picked_views(10, 0) == picked_views(10, 10) == picked_views(10, 50) == list(range(10))
    assert picked_views(10, 4) == [0, 3, 6, 9] and picked_views(10, 1) == [0]
    assert len(picked_views(989, 256)) == 256


def test_cls_align_views_caps_the_views_the_map_is_fitted_on(tmp_path, lifted_dir, tiny_model_dir):
    """``cls_align_views`` k: the shift is fitted on k of the Stage 2 training views, and recorded."""
    m = finetune([lifted_dir], BACKBONE, tmp_path / "s3", quick(cls_align="shift", cls_align_views=3),
                 model_path=str(tiny_model_dir))
    assert m["metrics"]["cls_align"]["pairs"] == 3 and m["settings"]["cls_align_views"] == 3
    n = len(RenderedViews(load_scenes([lifted_dir], embed_dim=32), 8, which="train", flip_prob=0.0))
    assert n > 3
    m = align_folder(tmp_path / "s3", tmp_path / "all", kind="shift")
    assert m["metrics"]["cls_align"]["pairs"] == n and m["settings"]["cls_align_views"] == 0
    with pytest.raises(Fit3DError, match="cls-align-views"):
        FinetuneConfig(cls_align_views=-1).validate()


def test_cls_align_original_gives_the_originals_cls_and_keeps_the_patches(tmp_path, lifted_dir, tiny_model_dir):
    """``cls_align`` original: the saved model's patch tokens are the Stage 2 ones bit for bit and its last [CLS] is
    the original's (its blocks after the frozen prefix, saved beside the weights, part of the fingerprint);
    ``align_folder`` makes the same from the run without it; a model that shares no block gets the shift instead,
    recorded as a fallback; a damaged branch file is an error naming it."""
    from fit3d.finetune import load_finetuned
    from fit3d.models.cls_branch import CLS_BRANCH_FILE

    imgs = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    feats = {}
    for k in ("none", "original"):
        m = finetune([lifted_dir], BACKBONE, tmp_path / k, quick(cls_align=k, freeze_blocks=1),
                     model_path=str(tiny_model_dir))
        assert (tmp_path / k / "model" / CLS_BRANCH_FILE).is_file() == (k == "original")
        orig, ft = load_finetuned(tmp_path / k)
        feats["orig"], feats[k] = orig.features(imgs), ft.features(imgs)
        feats[k + "_first"] = ft.features(imgs, layers=[0, -1])
    info = m["metrics"]["cls_align"]
    assert info["start_block"] == 1 and info["branch_blocks"] == 1 and info["forward_cost"] == 1.5
    o, s2, br = feats["orig"], feats["none"], feats["original"]
    assert torch.equal(s2.patch, br.patch) and not torch.allclose(s2.patch, o.patch)  # Stage 2 moved the patches
    assert_close(br.cls, o.cls, atol=1e-5, rtol=0)
    assert not torch.allclose(s2.cls, o.cls, atol=1e-3)  # ... and the [CLS] the branch gives back
    assert torch.equal(feats["none_first"][0].cls, feats["original_first"][0].cls)  # an earlier block: no branch
    assert_close(feats["original_first"][1].cls, o.cls, atol=1e-5, rtol=0)
    assert folder_fingerprint(tmp_path / "original" / "model") != folder_fingerprint(tmp_path / "none" / "model")

    before = sorted(p.name for p in (tmp_path / "none").rglob("*"))
    m = align_folder(tmp_path / "none", tmp_path / "aligned", kind="original")
    assert sorted(p.name for p in (tmp_path / "none").rglob("*")) == before
    assert m["settings"]["cls_align"] == "original"
    got = load_finetuned(tmp_path / "aligned")[1].features(imgs)
    assert torch.equal(got.patch, s2.patch) and torch.equal(got.cls, br.cls)

    # every block trained (the tiny model under default's "last 6 blocks"): no branch possible, the shift instead
    m = finetune([lifted_dir], BACKBONE, tmp_path / "all", quick(max_steps=2, cls_align="original"),
                 model_path=str(tiny_model_dir))
    info = m["metrics"]["cls_align"]
    assert info["kind"] == "shift" and info["requested"] == "original" and "no leading block" in info["fallback_reason"]
    assert (tmp_path / "all" / "model" / CLS_MAP_FILE).is_file()
    assert not (tmp_path / "all" / "model" / CLS_BRANCH_FILE).exists()
    (tmp_path / "aligned" / "model" / CLS_BRANCH_FILE).write_bytes(b"not a branch")
    with pytest.raises(ModelNotFoundError, match="unreadable"):
        load_backbone(BACKBONE, model_path=str(tmp_path / "aligned" / "model"))


def test_a_branch_models_cls_is_the_originals_and_the_cls_probe_shares_its_features(tmp_path, lifted_dir,
                                                                                   tiny_model_dir, capsys):
    """``cls_is_original`` compares weights: true for a ``cls_align`` original model, false without the branch or
    with one changed weight. ``fit3d probe --task cls`` then runs none of the fine-tuned model's forwards and its
    results are those a forward gives: the fine-tuned model's own [CLS] features equal the original's."""
    from PIL import Image

    from fit3d.cli import main
    from fit3d.finetune import load_finetuned
    from fit3d.models.cls_branch import cls_is_original
    from fit3d.probe.cls import extract_cls, read_image_folder

    for k in ("none", "original"):
        finetune([lifted_dir], BACKBONE, tmp_path / k, quick(cls_align=k, freeze_blocks=1, max_steps=2),
                 model_path=str(tiny_model_dir))
    orig, ft = load_finetuned(tmp_path / "original")
    assert cls_is_original(orig, ft) and not cls_is_original(ft, orig) and not cls_is_original(orig, orig)
    assert not cls_is_original(*load_finetuned(tmp_path / "none"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for j in range(2 * n):
            c = (200, 40, 40) if j % 2 else (40, 40, 200)
            img = np.clip(np.array(c) + rng.normal(0, 50, (32, 40, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "flowers" / split / ("red" if j % 2 else "blue")).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp_path / "flowers" / split / ("red" if j % 2 else "blue") / f"{j}.png")
    argv = ["probe", "--task", "cls", "--data", str(tmp_path / "flowers"), "--features", "original", "finetuned",
            "--finetuned", str(tmp_path / "original"), "--model-path", str(tiny_model_dir), "--cls-size", "32",
            "--iterations", "20", "--knn-k", "3", "--out", str(tmp_path / "probe")]
    assert main(argv) == 0
    assert "its [CLS] is the original's" in capsys.readouterr().out
    d = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert d["same_cls"] == {"finetuned": "original"}
    for m in ("knn_top1", "linear_top1"):
        assert d["metrics"]["finetuned"][m] == d["metrics"]["original"][m]
    val = read_image_folder(tmp_path / "flowers", "test")
    assert torch.equal(extract_cls(ft, val, 32).cls, extract_cls(orig, val, 32).cls)  # what a forward would give

    with torch.no_grad():
        next(ft.cls_branch.blocks[-1].parameters()).add_(1e-3)
    assert not cls_is_original(orig, ft)
