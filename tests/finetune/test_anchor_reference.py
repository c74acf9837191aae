"""The anchor's reference tokens through the frozen prefix equal the original's full forward."""

import torch

from fit3d.finetune.anchor import AnchorReference, frozen_prefix
from fit3d.finetune.trainer import PatchTokens, freeze_first_blocks, transformer_blocks
from fit3d.models import load_backbone


def _pair(model_dir, k):
    original = load_backbone("dinov2_small", model_path=str(model_dir)).eval().requires_grad_(False)
    trained = load_backbone("dinov2_small", model_path=str(model_dir)).train()
    freeze_first_blocks(trained.model, k)
    return original, trained


def test_prefix_shortcut_equals_the_full_forward(tiny_model_dir):
    original, trained = _pair(tiny_model_dir, 1)
    ref = AnchorReference(original, trained, transformer_blocks)
    assert ref.k == 1 and ref.shortcut
    images = torch.rand(2, 3, 48, 64)
    for step in range(3):  # the first call checks against the full forward; later calls use the shortcut alone
        with torch.no_grad():
            for p in trained.model.encoder.layer[1].parameters():
                p.add_(0.01 * torch.randn_like(p))  # the trained tail moves; the reference must not
        PatchTokens(trained)(images).sum().backward()
        got, got_cls = ref.features(images)
        want = original.features(images)
        torch.testing.assert_close(got, want.patch, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_cls, want.cls, atol=1e-5, rtol=0)  # the [CLS] anchor's reference
    assert ref.shortcut
    ref.close()


def test_no_frozen_prefix_uses_the_full_forward(tiny_model_dir):
    original, trained = _pair(tiny_model_dir, 0)
    assert frozen_prefix(trained.model, transformer_blocks(trained.model)) == 0
    ref = AnchorReference(original, trained, transformer_blocks)
    assert not ref.shortcut
    images = torch.rand(1, 3, 48, 64)
    PatchTokens(trained)(images)
    torch.testing.assert_close(ref(images), original.features(images)[0])


def test_a_prefix_that_differs_falls_back(tiny_model_dir):
    original, trained = _pair(tiny_model_dir, 1)
    ref = AnchorReference(original, trained, transformer_blocks)
    with torch.no_grad():  # a "frozen" block that is not the original's: the first check must catch it
        for p in trained.model.encoder.layer[0].parameters():
            p.add_(0.05)
    images = torch.rand(2, 3, 48, 64)
    PatchTokens(trained)(images)
    torch.testing.assert_close(ref(images), original.features(images)[0])
    assert not ref.shortcut
