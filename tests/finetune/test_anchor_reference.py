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


def test_the_reference_runs_in_the_originals_precision_after_a_float32_check(tiny_model_dir):
    original, trained = _pair(tiny_model_dir, 1)
    original.precision = "bf16"  # fit3d finetune --precision bf16 (auto on a CPU with bf16 hardware)
    ref = AnchorReference(original, trained, transformer_blocks)
    images = torch.rand(2, 3, 48, 64)
    for _ in range(2):  # the first call checks the path in float32: bf16 rounding must not disable the shortcut
        PatchTokens(trained)(images)
        got, got_cls = ref.features(images)
    assert ref.shortcut
    from fit3d.models.backbone import using_precision

    with using_precision(original, "fp32"):
        full32 = original.features(images)
    bf16 = original.features(images)  # the original's own forward in bf16 autocast
    assert not torch.equal(got, full32.patch)  # bf16 was applied
    torch.testing.assert_close(got, full32.patch, atol=0.05 * float(full32.patch.abs().max()), rtol=0)
    torch.testing.assert_close(got_cls, full32.cls, atol=0.05 * float(full32.cls.abs().max()), rtol=0)
    assert (got - full32.patch).abs().max() <= 4 * (bf16.patch - full32.patch).abs().max() + 1e-6
    ref.close()


def test_the_bf16_tail_is_autocast_without_the_weight_casts(tiny_model_dir):
    from fit3d.models.cls_branch import run_tail

    original, trained = _pair(tiny_model_dir, 1)
    original.precision = "bf16"
    ref = AnchorReference(original, trained, transformer_blocks)
    hidden = torch.randn(2, 49, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = run_tail(ref.tail, ref.norm, hidden)  # float32 weights, cast by autocast on every call
        got = run_tail(ref._bf16_tail(), ref.norm, hidden)
    assert torch.equal(got, want)
    assert all(p.dtype == torch.float32 for p in ref.tail.parameters())  # the original itself is untouched
    ref.close()
