"""The real shared DINOv2-S/14 through the Backbone API: shapes, determinism, grads, real correspondences."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fit3d.models import Tokens, load_backbone

K_7SCENES = np.array([[585.0, 0, 320], [0, 585.0, 240], [0, 0, 1]])


@pytest.fixture(scope="module")
def dinov2(dinov2_path):
    return load_backbone("dinov2_small", model_path=dinov2_path)


def test_attributes_and_normalisation_match_the_checkpoint(dinov2, dinov2_path):
    assert (dinov2.name, dinov2.family, dinov2.patch_size, dinov2.embed_dim, dinov2.cls_dim) == \
        ("dinov2_small", "dinov2", 14, 384, 384)
    assert dinov2.num_layers == 12 and dinov2.num_registers == 0
    pre = json.loads((dinov2_path / "preprocessor_config.json").read_text())
    torch.testing.assert_close(dinov2.mean.flatten(), torch.tensor(pre["image_mean"]))
    torch.testing.assert_close(dinov2.std.flatten(), torch.tensor(pre["image_std"]))
    assert not dinov2.training and not dinov2.model.training


@pytest.mark.parametrize("hw", [(56, 98), (84, 42)])
def test_shapes_at_non_square_sizes(dinov2, hw):
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    out = dinov2.features(x)
    assert isinstance(out, Tokens)
    h, w = dinov2.grid_size(*hw)
    assert (h, w) == (hw[0] // 14, hw[1] // 14)
    assert out.patch.shape == (2, 384, h, w) and out.cls.shape == (2, 384)
    assert out.patch.dtype == torch.float32 and torch.isfinite(out.patch).all()


def test_matches_transformers_last_layer_after_final_norm(dinov2):
    x = torch.rand(1, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    patch, cls = dinov2.features(x)
    with torch.no_grad():
        ref = dinov2.model(pixel_values=dinov2.normalize(x), output_hidden_states=True)
    seq = ref.last_hidden_state  # Dinov2Model applies its layernorm to last_hidden_state
    torch.testing.assert_close(cls, seq[:, 0])
    torch.testing.assert_close(patch, seq[:, 1:].transpose(1, 2).reshape(1, 384, 4, 6))
    layers = dinov2.features(x, layers=[3, -1])
    torch.testing.assert_close(layers[1].patch, patch)
    block3 = dinov2.model.layernorm(ref.hidden_states[4])
    torch.testing.assert_close(layers[0].cls, block3[:, 0])
    torch.testing.assert_close(layers[0].patch, block3[:, 1:].transpose(1, 2).reshape(1, 384, 4, 6))
    with pytest.raises(ValueError, match="out of range"):
        dinov2.features(x, layers=[12])


def test_deterministic_and_batch_independent(dinov2):
    x = torch.rand(3, 3, 42, 56, generator=torch.Generator().manual_seed(2))
    a, b = dinov2.features(x), dinov2.features(x, batch_size=1)
    torch.testing.assert_close(dinov2.features(x).patch, a.patch, rtol=0, atol=0)
    torch.testing.assert_close(b.patch, a.patch, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.cls, a.cls, rtol=1e-4, atol=1e-4)


def test_features_match_tokens_and_tokens_carry_grad(dinov2):
    x = torch.rand(2, 3, 56, 70, generator=torch.Generator().manual_seed(3))
    feats = dinov2.features(x, layers=[5, 11])
    toks = dinov2.tokens(x, layers=[5, 11])
    for f, t in zip(feats, toks):
        assert t.patch.requires_grad and not f.patch.requires_grad
        torch.testing.assert_close(f.patch, t.patch.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(f.cls, t.cls.detach(), rtol=1e-5, atol=1e-5)
    # features() can serve as a regression target for tokens() (not an inference tensor)
    assert not feats[1].patch.is_inference()
    (F.l1_loss(toks[1].patch, feats[1].patch + 0.1) + toks[1].cls.mean()).backward()
    grad = dinov2.model.embeddings.patch_embeddings.projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    dinov2.model.zero_grad(set_to_none=True)


def test_rejects_sizes_off_the_patch_grid_and_prepare_fixes_them(dinov2):
    x = torch.rand(1, 3, 100, 150)
    with pytest.raises(ValueError, match="prepare"):
        dinov2.features(x)
    y = dinov2.prepare(x)
    assert y.shape[-2:] == (98, 154)
    assert dinov2.prepare(x, 56).shape[-2:] == (56, 84)
    assert dinov2.prepare((x * 255).to(torch.uint8), (70, 70)).shape[-2:] == (70, 70)
    assert dinov2.features(y).patch.shape == (1, 384, 7, 11)


def _read_frame(folder, i):
    rgb = cv2.cvtColor(cv2.imread(str(folder / f"frame-{i:06d}.color.jpg")), cv2.COLOR_BGR2RGB)
    depth = cv2.imread(str(folder / f"frame-{i:06d}.depth.png"), cv2.IMREAD_UNCHANGED).astype(np.float64) / 1000.0
    c2w = np.loadtxt(folder / f"frame-{i:06d}.pose.txt")
    return rgb, depth, c2w


def _patch_correspondences(depth0, c2w0, depth1, c2w1, grid_hw, image_hw=(480, 640)):
    """Flat patch indices (src in view 0, dst in view 1) of patch centres of view 0 visible in view 1."""
    h, w = grid_hw
    sy, sx = image_hw[0] / h, image_hw[1] / w
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    u, v = (jj + 0.5) * sx, (ii + 0.5) * sy
    z = depth0[v.astype(int), u.astype(int)]
    ok = z > 0
    rays = np.linalg.inv(K_7SCENES) @ np.stack([u[ok], v[ok], np.ones(ok.sum())])
    world = c2w0[:3, :3] @ (rays * z[ok]) + c2w0[:3, 3:]
    w2c1 = np.linalg.inv(c2w1)
    cam1 = w2c1[:3, :3] @ world + w2c1[:3, 3:]
    pix = K_7SCENES @ cam1
    u1, v1 = pix[0] / pix[2], pix[1] / pix[2]
    inside = (cam1[2] > 0) & (u1 >= 0) & (u1 < image_hw[1]) & (v1 >= 0) & (v1 < image_hw[0])
    z1 = np.zeros_like(u1)
    z1[inside] = depth1[v1[inside].astype(int), u1[inside].astype(int)]
    visible = inside & (np.abs(z1 - cam1[2]) < 0.1)  # not occluded in view 1
    src = (ii[ok] * w + jj[ok])[visible]
    dst = (v1[visible] // sy).astype(int) * w + (u1[visible] // sx).astype(int)
    return torch.from_numpy(src), torch.from_numpy(dst)


def test_patch_features_agree_at_corresponding_pixels_of_real_views(dinov2, sevenscenes_path):
    (rgb0, d0, p0), (rgb1, d1, p1) = _read_frame(sevenscenes_path, 0), _read_frame(sevenscenes_path, 20)
    images = torch.from_numpy(np.stack([rgb0, rgb1])).permute(0, 3, 1, 2)  # uint8 [2, 3, 480, 640]
    patch, _ = dinov2.features(dinov2.prepare(images, (252, 336)))
    h, w = patch.shape[-2:]
    src, dst = _patch_correspondences(d0, p0, d1, p1, (h, w))
    assert len(src) > 100  # frames 0 and 20 overlap substantially
    f0 = F.normalize(patch[0].flatten(1).T, dim=1)  # [h*w, D]
    f1 = F.normalize(patch[1].flatten(1).T, dim=1)
    corresponding = (f0[src] * f1[dst]).sum(1)
    random_dst = torch.randint(0, h * w, (len(src),), generator=torch.Generator().manual_seed(0))
    random_pairs = (f0[src] * f1[random_dst]).sum(1)
    assert corresponding.mean() > random_pairs.mean() + 0.1, (corresponding.mean(), random_pairs.mean())
    assert (corresponding > random_pairs).float().mean() > 0.9
    nn_hit = ((f0[src] @ f1.T).argmax(1) == dst).float().mean()  # exact-patch nearest neighbour
    assert nn_hit > 20.0 / (h * w), nn_hit
