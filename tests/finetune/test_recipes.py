"""Stage 2 recipe levers: LoRA adapters (peft, merged before saving), the anchor to the frozen original,
named presets."""

import dataclasses
import json

import pytest
import torch

from fit3d.errors import Fit3DError
from fit3d.finetune import FinetuneConfig, finetune
from fit3d.finetune.data import RenderedViews, load_scenes
from fit3d.finetune.recipes import RECIPES, from_recipe
from fit3d.finetune.trainer import anchor_l1, anchor_token_weights

BACKBONE = "dinov2_small"


def quick(**kw) -> FinetuneConfig:
    base = dict(lr=1e-3, workers=0, progress=False, evaluate=False, checkpoint_every=0, epochs=2)
    base.update(kw)
    return FinetuneConfig(**base)


def state(model_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir)).state_dict()


def test_items_carry_the_rendered_opacity(lifted_dir):
    views = RenderedViews(load_scenes([lifted_dir], embed_dim=32), 8, which="train", resolution=[64, 48],
                          alpha_threshold=0.5, flip_prob=0.0)
    it = views[0]
    assert it["alpha"].shape == it["mask"].shape == (6, 8) and it["alpha"].dtype == torch.float32
    assert 0 <= float(it["alpha"].min()) and float(it["alpha"].max()) <= 1
    assert torch.equal(it["mask"], it["alpha"] >= 0.5)


def test_anchor_weights_and_loss():
    mask = torch.tensor([[[True, False]]])
    alpha = torch.tensor([[[0.9, 0.2]]])
    assert torch.allclose(anchor_token_weights(mask, alpha, "opacity"), torch.tensor([[[0.1, 0.8]]]))
    assert torch.equal(anchor_token_weights(mask, alpha, "everywhere"), torch.ones(1, 1, 2))
    assert torch.equal(anchor_token_weights(mask, alpha, "unmasked"), torch.tensor([[[0.0, 1.0]]]))
    spread = torch.tensor([[[0.05, 0.01]]])  # low spread: opacity decides the second token
    assert torch.allclose(anchor_token_weights(mask, alpha, "spread", spread, 0.1), torch.tensor([[[0.5, 0.8]]]))
    assert torch.allclose(anchor_token_weights(mask, alpha, "spread", spread * 10, 0.1), torch.ones(1, 1, 2))
    with pytest.raises(Fit3DError, match="spread"):
        anchor_token_weights(mask, alpha, "spread")
    a, b = torch.zeros(1, 3, 1, 2), torch.ones(1, 3, 1, 2)
    # per-token |a - b| = 1, weights 0.1 and 0.8, divided by the 2 tokens
    assert float(anchor_l1(a, b, torch.tensor([[[0.1, 0.8]]]))) == pytest.approx(0.45)


def test_feature_spread_is_the_compositing_weighted_relative_variance():
    """Two Gaussians at one pixel, front one half opaque: the closed form equals the weighted variance of
    their features over the weighted mean square, computed directly; agreeing features give 0."""
    from fit3d.finetune.data import feature_spread

    f = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([0.5, 0.5 * 0.8], dtype=torch.float64)  # alpha_1, T_2 * alpha_2
    alpha = w.sum()
    rendered = torch.cat([(w[:, None] * f).sum(0), (w * f.square().sum(1)).sum()[None]])[None, None]
    mean = (w[:, None] * f).sum(0) / alpha
    direct = (w * (f - mean).square().sum(1)).sum() / alpha / ((w * f.square().sum(1)).sum() / alpha)
    assert float(feature_spread(rendered, alpha.view(1, 1))) == pytest.approx(float(direct), rel=1e-9)
    same = torch.cat([(w[:, None] * f[:1]).sum(0), (w * f[:1].square().sum(1)).sum()[None]])[None, None]
    assert float(feature_spread(same, alpha.view(1, 1))) == pytest.approx(0.0, abs=1e-9)
    assert float(feature_spread(torch.zeros(1, 1, 4), torch.zeros(1, 1))) == 1.0  # nothing rendered


def test_items_carry_the_spread_when_asked(lifted_dir):
    scenes = load_scenes([lifted_dir], embed_dim=32)
    kw = dict(which="train", resolution=[64, 48], flip_prob=0.0)
    plain, spread = RenderedViews(scenes, 8, **kw)[1], RenderedViews(scenes, 8, with_spread=True, **kw)[1]
    assert "spread" not in plain
    assert torch.allclose(spread["target"], plain["target"], atol=1e-5)  # the extra channel leaves the target alone
    assert torch.equal(spread["mask"], plain["mask"])
    s = spread["spread"]
    assert s.shape == (6, 8) and 0 <= float(s.min()) and float(s.max()) <= 1
    assert float(s[spread["mask"]].std()) > 0  # different views' tokens disagree more in some places


def test_lora_trains_adapters_only_and_saves_a_plain_merged_model(tmp_path, lifted_dir, tiny_model_dir):
    import fit3d

    out = tmp_path / "lora"
    m = finetune([lifted_dir], BACKBONE, out, quick(adapter="lora", lora_rank=2, lora_targets="qkv", lr=1e-2),
                 model_path=str(tiny_model_dir))
    tuned, orig = state(out / "model"), state(tiny_model_dir)
    assert tuned.keys() == orig.keys()  # no lora_A / lora_B / base_layer keys: merged and unloaded
    changed = {k for k in tuned if not torch.equal(tuned[k], orig[k])}
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "query", "key", "value"))
                           for k in changed)  # only the adapted attention weights moved
    total = sum(v.numel() for v in orig.values())
    assert 0 < m["trainable_parameters"] < 0.2 * total
    orig_bb, ft_bb = fit3d.finetune.load_finetuned(out)
    x = torch.rand(1, 3, 48, 64)
    assert not torch.allclose(orig_bb.features(x)[0], ft_bb.features(x)[0])


def test_anchor_keeps_tokens_closer_to_the_original(tmp_path, lifted_dir, tiny_model_dir):
    """A strong anchor everywhere: the fine-tuned tokens stay nearer the original's than without it."""
    from fit3d.finetune import load_finetuned

    dists = {}
    for name, kw in {"plain": {}, "anchored": dict(anchor_weight=20.0, anchor_at="everywhere"),
                     "spread": dict(anchor_weight=20.0, anchor_at="spread", anchor_spread=1e-3)}.items():
        out = tmp_path / name
        finetune([lifted_dir], BACKBONE, out, quick(**kw), model_path=str(tiny_model_dir))
        orig_bb, ft_bb = load_finetuned(out)
        views = RenderedViews(load_scenes([lifted_dir], embed_dim=32), 8, which="heldout", flip_prob=0.0)
        imgs = torch.stack([views[i]["image"] for i in range(len(views))])
        dists[name] = float((orig_bb.features(imgs)[0] - ft_bb.features(imgs)[0]).abs().mean())
    assert dists["plain"] > 0
    assert dists["anchored"] < 0.5 * dists["plain"]
    assert dists["spread"] < 0.5 * dists["plain"]  # a tiny anchor_spread: nearly every token anchored


def test_recipes_presets_and_overrides():
    fit3d_cfg = from_recipe("fit3d")
    assert dataclasses.replace(fit3d_cfg, recipe=None) == FinetuneConfig()
    assert fit3d_cfg.recipe == "fit3d"
    d = from_recipe("default", lr=3e-5)
    assert d == dataclasses.replace(RECIPES["default"], lr=3e-5) and d.freeze_blocks == -6
    with pytest.raises(Fit3DError, match="unknown fine-tuning recipe"):
        from_recipe("nope")
    with pytest.raises(Fit3DError, match="unknown FinetuneConfig field"):
        from_recipe("fit3d", learning_rate=1)


def test_cli_recipe_with_explicit_override(tmp_path, lifted_dir, tiny_model_dir):
    from fit3d.cli import main

    out = tmp_path / "cli"
    rc = main(["finetune", "--scenes", str(lifted_dir), "--backbone", BACKBONE, "--model-path",
               str(tiny_model_dir), "--out", str(out), "--recipe", "fit3d", "--max-steps", "1", "--lr", "2e-5",
               "--workers", "0", "--no-evaluate", "--no-progress"])
    assert rc == 0
    cfg = json.loads((out / "fit3d.json").read_text())["config"]
    assert cfg["recipe"] == "fit3d" and cfg["lr"] == 2e-5 and cfg["adapter"] == "none" and cfg["anchor_weight"] == 0


def test_negative_freeze_blocks_trains_only_the_last_blocks():
    from transformers import Dinov2Config, Dinov2Model

    from fit3d.finetune.trainer import freeze_first_blocks

    m = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8,
                                 image_size=64))
    assert freeze_first_blocks(m, -3) > 0
    trainable = {n.split(".")[2] for n, p in m.named_parameters() if p.requires_grad and n.startswith("encoder.layer.")}
    assert trainable == {"1", "2", "3"} and not any(p.requires_grad for p in m.embeddings.parameters())
    m2 = Dinov2Model(m.config)
    assert freeze_first_blocks(m2, -6) == 0 and all(p.requires_grad for p in m2.parameters())  # fewer blocks than 6


def test_every_preset_passes_validation():
    from fit3d.finetune.recipes import RECIPES, from_recipe

    for name in RECIPES:
        from_recipe(name).validate()


def test_finetune_help_shows_the_values_the_command_runs_with(capsys):
    """The command runs the default recipe: its parser's base, so --help shows -6 / 1.0, and no option given
    parses to exactly that preset; --recipe NAME makes another preset the base."""
    import argparse

    from fit3d.finetune.cli import add_arguments
    from fit3d.finetune.recipes import DEFAULT_RECIPE, config_from_args, recipe

    p = argparse.ArgumentParser()
    add_arguments(p)
    text = " ".join(p.format_help().split())
    assert "the last -k blocks) (default: -6)" in text and "--anchor-at says (default: 1.0)" in text
    base = ["--scenes", "s", "--out", "o"]
    assert config_from_args(FinetuneConfig, p.parse_args(base)) == recipe(DEFAULT_RECIPE)
    lora = config_from_args(FinetuneConfig, p.parse_args([*base, "--recipe", "lora", "--lr", "0.5"]))
    assert lora == dataclasses.replace(RECIPES["lora"], lr=0.5) and lora.adapter == "lora"


def test_pipeline_applies_recipe_lora_and_rejects_finetune_recipe(capsys):
    """fit3d pipeline / demo: --recipe lora applies LoRA; --finetune.recipe is no option and says to use --recipe."""
    import argparse

    from fit3d.demo import DemoConfig
    from fit3d.demo import add_arguments as add_demo_arguments
    from fit3d.finetune.recipes import config_from_args
    from fit3d.pipeline import PipelineConfig
    from fit3d.pipeline import add_arguments as add_pipeline_arguments

    p = argparse.ArgumentParser()
    add_pipeline_arguments(p)
    cfg = config_from_args(PipelineConfig, p.parse_args(["scene", "--recipe", "lora", "--finetune.max-steps", "3"]))
    ft = cfg.finetune_config()
    assert (ft.adapter, ft.lora_targets, ft.lr, ft.max_steps, ft.recipe) == ("lora", "attention", 1e-4, 3, "lora")
    with pytest.raises(SystemExit):
        p.parse_args(["scene", "--finetune.recipe", "lora"])
    assert "--finetune.recipe: not an option here; use --recipe" in capsys.readouterr().err
    d = argparse.ArgumentParser()
    add_demo_arguments(d)
    assert config_from_args(DemoConfig, d.parse_args(["--recipe", "lora"])).finetune.adapter == "lora"
    with pytest.raises(SystemExit):
        d.parse_args(["--finetune.recipe", "lora"])


def test_derived_presets_are_their_base_plus_their_own_fields():
    """The presets measured as variants of ``default21`` (docs/generalize.md) differ from it only in the fields their
    names say, so their commands reproduce; ``default`` is ``lr2anchor1`` for 2 epochs (sitting 23)."""
    from fit3d.finetune.recipes import RECIPES

    def changed(name, base="default21"):
        a, b = RECIPES[name], RECIPES[base]
        return {f.name for f in dataclasses.fields(a) if f.name != "recipe" and getattr(a, f.name) != getattr(b, f.name)}

    assert changed("epochs2") == {"epochs"}
    assert changed("lr2anchor1") == {"lr", "anchor_weight"}
    assert RECIPES["lr2anchor1"].lr == 2 * RECIPES["default21"].lr
    assert RECIPES["lr2anchor1"].anchor_weight == 2 * RECIPES["default21"].anchor_weight
    assert changed("clsshift") == {"cls_align", "cls_align_views"}
    assert changed("default", "lr2anchor1") == {"epochs"} and RECIPES["default"].epochs == 2
    assert changed("default21", "freeze") == {"anchor_weight", "anchor_at", "target_mode", "cls_align"}
