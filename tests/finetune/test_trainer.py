import json
import shutil

import pytest
import torch
from torch.testing import assert_close

from fit3d.errors import NonFiniteError
from fit3d.finetune import FinetuneConfig, finetune
from fit3d.io import write_json

BACKBONE = "dinov2_small"  # the registry entry; the weights are the tiny random model's (model_path)


def quick(**kw) -> FinetuneConfig:
    base = dict(lr=1e-3, workers=0, progress=False, evaluate=False, checkpoint_every=0)
    base.update(kw)
    return FinetuneConfig(**base)


def state(model_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir)).state_dict()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lifted_dir, tiny_model_dir):
    out = tmp_path_factory.mktemp("ft") / "out"
    m = finetune([lifted_dir], BACKBONE, out, quick(epochs=3, evaluate=True), model_path=str(tiny_model_dir))
    return out, m


def test_loss_falls_and_finetuned_features_move_toward_heldout_targets(trained):
    out, m = trained
    loss = m["metrics"]["loss"]
    assert m["steps"] == 12 and loss["steps"] == 12  # 8 views / batch 2 x 3 epochs
    assert loss["last"] < 0.9 * loss["first"]
    held = m["metrics"]["heldout"]
    assert held["num_views"] == 3 and held["num_tokens"] > 0
    assert held["finetuned"]["l1"] < held["original"]["l1"]
    assert held["finetuned"]["cosine_distance"] < held["original"]["cosine_distance"]
    assert len(json.loads((out / "losses.json").read_text())["loss"]) == 12
    assert m["memory"]["bytes_per_gaussian"] == 88 and m["memory"]["num_gaussians"] > 0
    assert not (out / "checkpoint.pt").exists()


def test_saved_model_loads_with_automodel_and_fit3d_load(trained, tiny_model_dir):
    import fit3d
    from fit3d.models import load_backbone

    out, m = trained
    manifest = json.loads((out / "fit3d.json").read_text())
    assert manifest["backbone"] == BACKBONE and manifest["original_model_path"] == str(tiny_model_dir)
    tuned, orig = state(out / "model"), state(tiny_model_dir)
    assert tuned.keys() == orig.keys()
    assert any(not torch.equal(tuned[k], orig[k]) for k in tuned)

    images = torch.rand(2, 3, 48, 64)
    feats = fit3d.load(out).features(images)
    patch, cls = feats
    o = load_backbone(BACKBONE, model_path=str(tiny_model_dir)).features(images)
    f = load_backbone(BACKBONE, model_path=str(out / "model")).features(images)
    assert patch.shape == (2, 64, 6, 8)
    assert_close(patch[:, :32], o.patch)
    assert_close(patch[:, 32:], f.patch)
    assert_close(cls, o.cls)


def test_rerun_of_a_finished_run_does_nothing(trained, lifted_dir, tiny_model_dir):
    out, m = trained
    again = finetune([lifted_dir], BACKBONE, out, quick(epochs=3, evaluate=True), model_path=str(tiny_model_dir))
    assert again["timing"] == m["timing"]


def test_kill_and_resume_reaches_the_same_step_and_weights(tmp_path, lifted_dir, tiny_model_dir, killed_run):
    cfg = quick(max_steps=5, checkpoint_every=2)
    ref = finetune([lifted_dir], BACKBONE, tmp_path / "ref", cfg, model_path=str(tiny_model_dir))
    killed_run(tmp_path / "run", cfg)  # a kill between the checkpoints of steps 2 and 4
    from fit3d.run import load_checkpoint

    _, ck = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert ck["step"] == 2 and not (tmp_path / "run" / "fit3d.json").exists()

    resumed = finetune([lifted_dir], BACKBONE, tmp_path / "run", cfg, model_path=str(tiny_model_dir))
    assert resumed["steps"] == ref["steps"] == 5
    assert resumed["seen"] == ref["seen"][4:]  # continued with the sample after the checkpoint
    a, b = state(tmp_path / "ref" / "model"), state(tmp_path / "run" / "model")
    for k in a:
        assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert (json.loads((tmp_path / "run" / "losses.json").read_text())["loss"]
            == json.loads((tmp_path / "ref" / "losses.json").read_text())["loss"])


def test_non_finite_loss_names_the_step_and_scene(tmp_path, lifted_dir, tiny_model_dir):
    from fit3d.splat.gaussians import FeatureGaussians

    bad = tmp_path / "nan_scene"
    shutil.copytree(lifted_dir, bad)
    g = FeatureGaussians.load_ply(bad / "gaussians.ply")
    g.features[:] = float("nan")
    g.save_ply(bad / "gaussians.ply")
    meta = json.loads((bad / "lift.json").read_text())
    write_json(bad / "lift.json", {**meta, "name": "nan_scene"})
    with pytest.raises(NonFiniteError, match=r"step 1 on scene 'nan_scene'"):
        finetune([bad], BACKBONE, tmp_path / "out", quick(max_steps=2), model_path=str(tiny_model_dir))


def test_scenes_lifted_at_different_sizes_need_one_resolution(tmp_path, lifted_dir, tiny_model_dir):
    """Without a resolution each scene trains at its lift size; two sizes would not stack into a batch: a plain
    error naming the sizes and scenes, before any step; with one resolution the same scenes train."""
    from fit3d.errors import Fit3DError

    tall = tmp_path / "tall"
    shutil.copytree(lifted_dir, tall)
    meta = json.loads((tall / "lift.json").read_text())
    write_json(tall / "lift.json", {**meta, "name": "tall", "resolution": [48, 64]})
    with pytest.raises(Fit3DError, match=r"different sizes \(64x48: '7scenes-redkitchen', 48x64: 'tall'.*--resolution"):
        finetune([lifted_dir, tall], BACKBONE, tmp_path / "out", quick(max_steps=1), model_path=str(tiny_model_dir))
    assert not (tmp_path / "out" / "model").exists()
    m = finetune([lifted_dir, tall], BACKBONE, tmp_path / "out2", quick(max_steps=1, resolution=[64, 48]),
                 model_path=str(tiny_model_dir))
    assert (tmp_path / "out2" / "model").is_dir() and m


def test_freeze_first_blocks_keeps_them_fixed(tmp_path, lifted_dir, tiny_model_dir):
    finetune([lifted_dir], BACKBONE, tmp_path / "out", quick(max_steps=1, lr=1e-2, freeze_blocks=1),
             model_path=str(tiny_model_dir))
    a, b = state(tiny_model_dir), state(tmp_path / "out" / "model")
    block0 = [k for k in a if k.startswith(("encoder.layer.0.", "embeddings."))]
    block1 = [k for k in a if k.startswith("encoder.layer.1.")]
    assert block0 and all(torch.equal(a[k], b[k]) for k in block0)
    assert any(not torch.equal(a[k], b[k]) for k in block1)


def test_cli_with_a_render_worker(tmp_path, lifted_dir, tiny_model_dir, capsys):
    from fit3d.cli import main

    out = tmp_path / "cli"
    rc = main(["finetune", "--scenes", str(lifted_dir), "--backbone", BACKBONE, "--model-path",
               str(tiny_model_dir), "--out", str(out), "--max-steps", "2", "--workers", "1", "--no-evaluate",
               "--no-progress", "--recipe", "fit3d"])
    assert rc == 0
    assert json.loads((out / "fit3d.json").read_text())["steps"] == 2
    assert "Gaussians x 88 B" in capsys.readouterr().out


def test_the_reference_precision_is_recorded_and_a_rerun_in_another_is_refused(trained, lifted_dir, tiny_model_dir,
                                                                                tmp_path):
    from fit3d.device import resolve_precision
    from fit3d.finetune.trainer import MANIFEST_FILE, recorded_settings
    from fit3d.run import SettingsMismatch

    out, m = trained
    here = resolve_precision("auto", "cpu")
    assert m["settings"]["precision"] == here
    other = "fp32" if here == "bf16" else "bf16"
    with pytest.raises(SettingsMismatch, match="precision"):
        finetune([lifted_dir], BACKBONE, out, quick(epochs=3, evaluate=True, precision=other),
                 model_path=str(tiny_model_dir))
    # a run recorded before the setting ran the original at the backbone's default: float32 on the CPU
    assert recorded_settings({"lr": 1.0}, "cpu") == {"lr": 1.0, "precision": "fp32"}
    assert recorded_settings({"lr": 1.0}, "cuda")["precision"] == "bf16"
    old = tmp_path / "old"
    shutil.copytree(out, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["settings"]["precision"]
    write_json(old / MANIFEST_FILE, manifest)
    again = finetune([lifted_dir], BACKBONE, old, quick(epochs=3, evaluate=True, precision="fp32"),
                     model_path=str(tiny_model_dir))
    assert again["timing"] == m["timing"]  # reused, not retrained
    with pytest.raises(SettingsMismatch, match="precision"):
        finetune([lifted_dir], BACKBONE, old, quick(epochs=3, evaluate=True, precision="bf16"),
                 model_path=str(tiny_model_dir))
