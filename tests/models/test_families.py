"""Every transformers family through the same Backbone API, on tiny random models saved in the hub layout."""

from __future__ import annotations

import pytest
import torch
import transformers

from fit3d.models import ConcatFeatures, Tokens, concat_layers, load_backbone

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2)


def _dinov2(cls_name="Dinov2", **extra):
    cfg = getattr(transformers, f"{cls_name}Config")(**TINY, mlp_ratio=2, patch_size=8, image_size=32, **extra)
    return getattr(transformers, f"{cls_name}Model")(cfg)


def _models():
    """name -> (registry name, tiny model in the layout its hub checkpoint has)."""
    clip_cfg = transformers.CLIPConfig(
        vision_config=dict(**TINY, intermediate_size=64, patch_size=8, image_size=32),
        text_config=dict(**TINY, intermediate_size=64, vocab_size=64), projection_dim=16)
    return {
        "dinov2": ("dinov2_small", lambda: _dinov2()),
        "dinov2_reg": ("dinov2_small_reg", lambda: _dinov2("Dinov2WithRegisters", num_register_tokens=4)),
        "dinov3": ("dinov3_small", lambda: transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
            **TINY, intermediate_size=64, patch_size=8, image_size=32, num_register_tokens=4))),
        # the hub's openai/clip-vit-base-patch16 is a full CLIP (text + vision); only the tower is loaded
        "clip": ("clip_b16", lambda: transformers.CLIPModel(clip_cfg)),
        # the hub's facebook/vit-mae-base is a ViTMAEForPreTraining with mask_ratio 0.75
        "mae": ("mae_b16", lambda: transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
            **TINY, intermediate_size=64, patch_size=8, image_size=32, mask_ratio=0.75, decoder_hidden_size=16,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32))),
    }


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    torch.manual_seed(0)
    out = {}
    for family, (name, make) in _models().items():
        folder = tmp_path_factory.mktemp(family)
        make().save_pretrained(folder)
        out[family] = (name, folder)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_folders):
    return {fam: load_backbone(name, model_path=folder) for fam, (name, folder) in tiny_folders.items()}


FAMILIES = ["dinov2", "dinov2_reg", "dinov3", "clip", "mae"]


def _reference_sequence(bb, x):
    """Full token sequence after the final norm, straight from transformers ([B, N, D])."""
    kwargs = {}
    if bb.family in ("clip", "mae"):
        kwargs["interpolate_pos_encoding"] = True
    with torch.no_grad():
        out = bb.model(pixel_values=bb.normalize(x), **kwargs)
    if bb.family == "clip":
        return bb.model.post_layernorm(out.last_hidden_state)  # CLIP's last_hidden_state is pre-norm
    return out.last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_registers_and_final_norm(tiny, family):
    bb = tiny[family]
    assert bb.family == family and bb.patch_size == 8 and bb.embed_dim == bb.cls_dim == 32 and bb.num_layers == 3
    assert bb.num_registers == (4 if family in ("dinov2_reg", "dinov3") else 0)
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))  # non-square, != config size
    patch, cls = bb.features(x)
    assert patch.shape == (2, 32, 3, 5) and cls.shape == (2, 32)
    if family == "mae":
        return  # compared against an explicit unmasked run below
    seq = _reference_sequence(bb, x)
    assert seq.shape[1] == 1 + bb.num_registers + 15  # registers sit between CLS and patches...
    torch.testing.assert_close(cls, seq[:, 0], rtol=1e-4, atol=1e-4)
    # ...and are dropped from the patch grid
    torch.testing.assert_close(patch, seq[:, 1 + bb.num_registers:].transpose(1, 2).reshape(2, 32, 3, 5),
                               rtol=1e-4, atol=1e-4)


def test_mae_is_unmasked_and_deterministic(tiny, tiny_folders):
    bb = tiny["mae"]
    assert type(bb.model).__name__ == "ViTMAEModel" and bb.model.config.mask_ratio == 0.0
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    a, b = bb.features(x), bb.features(x)
    torch.testing.assert_close(a.patch, b.patch, rtol=0, atol=0)
    with torch.no_grad():  # all 24 patches kept, in raster order: shuffle-free reference with identity noise
        out = bb.model(pixel_values=bb.normalize(x), interpolate_pos_encoding=True,
                       noise=torch.arange(24.0)[None])
    assert out.mask.sum() == 0 and torch.equal(out.ids_restore[0], torch.arange(24))
    torch.testing.assert_close(a.patch, out.last_hidden_state[:, 1:].transpose(1, 2).reshape(1, 32, 4, 6),
                               rtol=1e-4, atol=1e-4)
    # a grid where patches would be shuffled by random noise still comes out the same twice
    y = torch.rand(1, 3, 40, 24)
    torch.testing.assert_close(bb.features(y).patch, bb.features(y).patch, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_intermediate_layers_tokens_grad_and_save_roundtrip(tiny, family, tmp_path):
    bb = tiny[family]
    x = torch.rand(2, 3, 16, 32, generator=torch.Generator().manual_seed(2))
    layers = bb.features(x, layers=[0, -1])
    assert isinstance(layers, list) and all(isinstance(t, Tokens) for t in layers)
    torch.testing.assert_close(layers[1].patch, bb.features(x).patch)
    assert layers[0].patch.shape == (2, 32, 2, 4)
    joined = concat_layers(layers)
    assert joined.patch.shape == (2, 64, 2, 4) and joined.cls.shape == (2, 64)
    torch.testing.assert_close(joined.cls[:, 32:], layers[1].cls)
    # intermediate blocks go through the final LayerNorm: per-token stats follow its affine parameters
    norm = getattr(bb.model, bb._family.norm_attr)
    manual = (layers[0].patch.permute(0, 2, 3, 1) - norm.bias) / norm.weight
    torch.testing.assert_close(manual.mean(-1), torch.zeros(2, 2, 4), rtol=0, atol=1e-4)
    toks = bb.tokens(x, layers=[0, -1])
    assert toks[0].patch.requires_grad
    torch.testing.assert_close(toks[1].patch.detach(), layers[1].patch, rtol=1e-5, atol=1e-5)
    bb.model.save_pretrained(tmp_path)  # the model is a plain transformers model: save and reload
    again = load_backbone(bb.name, model_path=tmp_path)
    torch.testing.assert_close(again.features(x).patch, layers[1].patch, rtol=1e-5, atol=1e-5)


def test_dinov3_keeps_rope_coordinates_fixed_in_train_mode(tiny):
    bb = tiny["dinov3"]
    x = torch.rand(1, 3, 16, 24)
    ref = bb.features(x).patch
    bb.train()
    try:
        assert bb.model.training and not bb.model.rope_embeddings.training
        torch.testing.assert_close(bb.tokens(x).patch.detach(), ref, rtol=1e-5, atol=1e-5)
    finally:
        bb.eval()


def test_clip_uses_its_own_normalisation(tiny):
    torch.testing.assert_close(tiny["clip"].mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    torch.testing.assert_close(tiny["dinov2"].mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_concat_features_puts_original_first_and_keeps_its_cls(tiny_folders):
    name, folder = tiny_folders["dinov2"]
    original = load_backbone(name, model_path=folder)
    finetuned = load_backbone(name, model_path=folder)
    with torch.no_grad():
        for p in finetuned.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    both = ConcatFeatures(original, finetuned)
    assert both.patch_size == 8 and both.embed_dim == 64 and both.cls_dim == 32
    x = torch.rand(2, 3, 16, 24)
    patch, cls = both.features(x, batch_size=1)
    o, f = original.features(x), finetuned.features(x)
    assert patch.shape == (2, 64, 2, 3) and cls.shape == (2, 32)
    torch.testing.assert_close(patch[:, :32], o.patch)
    torch.testing.assert_close(patch[:, 32:], f.patch)
    torch.testing.assert_close(cls, o.cls)
    assert not torch.allclose(o.patch, f.patch)
    layered = both.features(x, layers=[1, -1])
    torch.testing.assert_close(layered[1].patch, patch)
    clip = load_backbone(*tiny_folders["clip"])
    with pytest.raises(ValueError, match="patch sizes"):
        ConcatFeatures(original, _with_patch(clip, 16))


def _with_patch(bb, p):
    bb.patch_size = p
    return bb
