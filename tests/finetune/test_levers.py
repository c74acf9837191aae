"""Stage 2 levers against the loss of semantics: residual / projection targets relative to each scene's lifted
subspace, and the EMA teacher of the anchor."""

import pytest
import torch
from torch.testing import assert_close

from fit3d.errors import Fit3DError
from fit3d.finetune import FinetuneConfig, finetune
from fit3d.finetune.data import load_scenes
from fit3d.finetune.residual import decoder_subspace, subspace_target
from fit3d.finetune.trainer import ema_update
from fit3d.lift.decoder import FeatureDecoder

BACKBONE = "dinov2_small"


def quick(**kw) -> FinetuneConfig:
    base = dict(lr=1e-3, workers=0, progress=False, evaluate=False, checkpoint_every=0, max_steps=4)
    base.update(kw)
    return FinetuneConfig(**base)


def test_subspace_of_a_backprojected_decoder_is_its_centre_tap(lifted_dir):
    dec = load_scenes([lifted_dir], embed_dim=32)[0].decoder
    Q = dec.conv.weight[:, :, 1, 1]  # [D, f], orthonormal columns (the scene's main directions)
    U = decoder_subspace(dec)
    assert U.shape == (32, 8)
    assert_close(U @ U.T, Q @ Q.T, atol=1e-5, rtol=0)  # the same subspace
    assert decoder_subspace(dec, 3).shape == (32, 3)
    # a 3x3 decoder whose taps span more than f directions: the top-f of all its taps
    d = FeatureDecoder(4, 16)
    assert_close(decoder_subspace(d).T @ decoder_subspace(d), torch.eye(4), atol=1e-5, rtol=0)


def test_residual_and_projection_targets():
    D, r = 6, 2
    U = torch.linalg.qr(torch.randn(D, r)).Q  # [D, r]
    P = U @ U.T
    target = torch.einsum("de,behw->bdhw", P, torch.randn(1, D, 3, 4))  # a rendered target: inside U
    ref = torch.randn(1, D, 3, 4)
    res = subspace_target(target, ref, U[None], "residual")
    out = lambda x: x - torch.einsum("de,behw->bdhw", P, x)  # noqa: E731
    assert_close(torch.einsum("de,behw->bdhw", P, res), target, atol=1e-5, rtol=0)  # inside: the 3D target
    assert_close(out(res), out(ref), atol=1e-5, rtol=0)  # outside: the original's tokens, kept
    assert_close(subspace_target(target, ref, U[None], "projection"), torch.einsum("de,behw->bdhw", P, ref),
                 atol=1e-5, rtol=0)
    assert subspace_target(target, ref, U[None], "rendered") is target
    with pytest.raises(ValueError, match="target mode"):
        subspace_target(target, ref, U[None], "nope")


def test_ema_update_moves_the_teacher_a_momentum_step():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    ema_update(a, b, 0.9)
    for p0, pa, pb in zip(before, a.parameters(), b.parameters()):
        assert_close(pa, 0.9 * p0 + 0.1 * pb)


def test_residual_target_keeps_what_the_rendered_one_teaches_to_drop(tmp_path, lifted_dir, tiny_model_dir):
    """With f = 8 of D = 32 the rendered target lacks the tokens' component outside the scene's subspace, and
    fine-tuning erases much of it; the residual target keeps it (share of that component erased:
    -<change, x_out> / |x_out|^2 on held-out views)."""
    from fit3d.finetune import load_finetuned
    from fit3d.finetune.data import RenderedViews

    scenes = load_scenes([lifted_dir], embed_dim=32)
    U = decoder_subspace(scenes[0].decoder)
    views = RenderedViews(scenes, 8, which="heldout", flip_prob=0.0)
    imgs = torch.stack([views[i]["image"] for i in range(len(views))])
    outside = lambda z: z - torch.einsum("dr,er,nehw->ndhw", U, U, z)  # noqa: E731
    erased = {}
    for mode in ("rendered", "residual"):
        out = tmp_path / mode
        m = finetune([lifted_dir], BACKBONE, out, quick(target_mode=mode, max_steps=8), model_path=str(tiny_model_dir))
        assert m["config"]["target_mode"] == mode
        orig, ft = load_finetuned(out)
        x = orig.features(imgs)[0]
        x_out, change_out = outside(x), outside(ft.features(imgs)[0] - x)
        erased[mode] = float(-(change_out * x_out).sum() / x_out.square().sum())
    assert erased["rendered"] > 0.3  # measured 0.50
    assert erased["residual"] < 0.5 * erased["rendered"]  # measured 0.11


def test_ema_teacher_trains_resumes_exactly_and_is_checked(tmp_path, lifted_dir, tiny_model_dir, killed_run):
    cfg = quick(anchor_weight=1.0, anchor_at="everywhere", anchor_teacher="ema", ema_momentum=0.5,
                target_mode="residual", max_steps=5, checkpoint_every=2)
    ref = finetune([lifted_dir], BACKBONE, tmp_path / "ref", cfg, model_path=str(tiny_model_dir))
    killed_run(tmp_path / "run", cfg)
    resumed = finetune([lifted_dir], BACKBONE, tmp_path / "run", cfg, model_path=str(tiny_model_dir))
    assert resumed["steps"] == ref["steps"] == 5
    import json

    # the teacher came back from the checkpoint: the same anchor, the same losses after the resume
    assert (json.loads((tmp_path / "run" / "losses.json").read_text())["loss"]
            == json.loads((tmp_path / "ref" / "losses.json").read_text())["loss"])
    with pytest.raises(Fit3DError, match="anchor-teacher.*adapter=none"):
        FinetuneConfig(anchor_teacher="ema", adapter="lora").validate()
    with pytest.raises(Fit3DError, match="ema-momentum"):
        FinetuneConfig(ema_momentum=1.5).validate()


@pytest.mark.parametrize("size", [(6, 8), (5, 7), (12, 16)])
def test_area_pooled_decode_equals_decode_then_average_pool(size):
    import torch.nn.functional as F

    from fit3d.finetune.data import decode_to_grid

    torch.manual_seed(0)
    dec = FeatureDecoder(8, 32, kernel_size=5)
    f = torch.randn(2, 8, 48, 64)
    assert_close(decode_to_grid(dec, f, size, "area"), F.adaptive_avg_pool2d(dec(f), size), atol=1e-5, rtol=1e-4)


def test_auto_target_pool_is_area_for_a_solve_lift_only(lifted_dir):
    from fit3d.finetune.data import RenderedViews, scene_target_pool

    scene = load_scenes([lifted_dir], embed_dim=32)[0]
    assert scene_target_pool(scene) == "bilinear"  # back-projected: FiT3D's bilinear sampling
    assert scene_target_pool(scene, "area") == "area"
    scene.meta = {**scene.meta, "method": "solve", "settings": {"solve_targets_at": "grid"}}
    assert scene_target_pool(scene) == "area"
    scene.meta["settings"]["solve_targets_at"] = "render"
    assert scene_target_pool(scene) == "bilinear"
    scene.meta["settings"] = {"solve": {"targets_at": "grid"}}  # today's nested record
    assert scene_target_pool(scene) == "area"
    scene.meta["solve"] = {"fell_back_to": "optimize"}  # no depth, no points: optimize lifted it
    assert scene_target_pool(scene) == "bilinear"
    del scene.meta["solve"]
    kw = dict(which="train", resolution=[64, 48], flip_prob=0.0)
    a = RenderedViews([scene], 8, target_pool="area", **kw)[0]["target"]
    b = RenderedViews([scene], 8, target_pool="bilinear", **kw)[0]["target"]
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_cls_anchor_keeps_the_cls_token_and_still_trains_the_patches(tmp_path, lifted_dir, tiny_model_dir):
    """Stage 2 has no target for [CLS]; without the anchor it drifts with the trained blocks, with
    ``anchor_cls`` it stays near the original's (relative drift |cls_ft - cls| / |cls| on held-out views)
    while the patch tokens still move toward the 3D targets."""
    from fit3d.finetune import load_finetuned
    from fit3d.finetune.data import RenderedViews

    scenes = load_scenes([lifted_dir], embed_dim=32)
    views = RenderedViews(scenes, 8, which="heldout", flip_prob=0.0)
    imgs = torch.stack([views[i]["image"] for i in range(len(views))])
    drift, moved = {}, {}
    for w in (0.0, 1.0):
        out = tmp_path / f"cls{w}"
        m = finetune([lifted_dir], BACKBONE, out, quick(anchor_cls=w, max_steps=8), model_path=str(tiny_model_dir))
        assert m["config"]["anchor_cls"] == w
        orig, ft = load_finetuned(out)
        a, b = orig.features(imgs), ft.features(imgs)
        drift[w] = float((b.cls - a.cls).norm() / a.cls.norm())
        moved[w] = float((b.patch - a.patch).norm() / a.patch.norm())
    assert drift[1.0] < 0.3 * drift[0.0], drift  # measured 0.75 -> 0.10
    assert moved[1.0] > 0.7 * moved[0.0], moved  # the patches still learn (measured 0.35 and 0.33)
    with pytest.raises(Fit3DError, match="anchor-cls"):
        FinetuneConfig(anchor_cls=-1.0).validate()


def test_view_mean_target_takes_the_originals_mean_and_keeps_the_deviations():
    from fit3d.finetune.residual import with_view_mean

    g = torch.Generator().manual_seed(0)
    target, ref = torch.randn(3, 5, 4, 6, generator=g), torch.randn(3, 5, 4, 6, generator=g) + 2.0
    mask = torch.rand(3, 4, 6, generator=g) > 0.4
    mask[2] = False  # a view with nothing unmasked: left as it is
    out = with_view_mean(target, ref, mask)

    def mean(x, i):
        return x[i][:, mask[i]].mean(1)

    for i in (0, 1):
        assert_close(mean(out, i), mean(ref, i), atol=1e-5, rtol=0)  # the original's view-level component
        assert_close(out[i] - mean(out, i)[:, None, None], target[i] - mean(target, i)[:, None, None],
                     atol=1e-5, rtol=0)  # the target's deviations from it, unchanged
    assert_close(out[2], target[2])


def test_view_mean_lever_is_the_loss_to_the_target_with_the_originals_view_mean(tiny_backbone):
    """``forward_loss`` with ``target_mean`` original: FiT3D's masked L1, to the target whose per-view mean token is
    the frozen original's (and the plain loss with the default)."""
    from fit3d.finetune.residual import with_view_mean
    from fit3d.finetune.trainer import LossTerms, forward_loss, masked_l1

    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 48, 64, generator=g)
    with torch.no_grad():
        x = tiny_backbone.features(images).patch
    batch = {"image": images, "target": torch.randn(x.shape, generator=g), "mask": torch.rand(2, 6, 8, generator=g) > 0.3}
    module = lambda im: tiny_backbone.features(im).patch  # noqa: E731
    with torch.no_grad():
        got = forward_loss(module, batch, torch.device("cpu"), False, LossTerms(tiny_backbone, target_mean="original"))
        plain = forward_loss(module, batch, torch.device("cpu"), False, LossTerms(tiny_backbone))
    assert_close(got, masked_l1(x, with_view_mean(batch["target"], x, batch["mask"]), batch["mask"]))
    assert_close(plain, masked_l1(x, batch["target"], batch["mask"]))
    assert float((got - plain).abs()) > 1e-3  # the lever changed the target
    with pytest.raises(Fit3DError, match="target-mean"):
        FinetuneConfig(target_mean="nope").validate()


def test_freeze_last_blocks_leaves_the_last_block_as_the_original(tmp_path, lifted_dir, tiny_model_dir):
    """``freeze_last_blocks`` 1: the last transformer block keeps the original's weights, the others train."""
    from fit3d.finetune import load_finetuned
    from fit3d.finetune.trainer import transformer_blocks

    m = finetune([lifted_dir], BACKBONE, tmp_path / "ft", quick(freeze_last_blocks=1), model_path=str(tiny_model_dir))
    assert m["config"]["freeze_last_blocks"] == 1
    orig, ft = load_finetuned(tmp_path / "ft")
    bo, bf = transformer_blocks(orig.model), transformer_blocks(ft.model)
    same = [all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())) for a, b in zip(bo, bf)]
    assert same[-1] and not any(same[:-1]), same
    with pytest.raises(Fit3DError, match="freeze-last-blocks"):
        FinetuneConfig(freeze_last_blocks=-1).validate()
    with pytest.raises(Fit3DError, match="freeze-last-blocks 9"):
        finetune([lifted_dir], BACKBONE, tmp_path / "bad", quick(freeze_last_blocks=9), model_path=str(tiny_model_dir))


def test_cls_restore_brings_the_cls_token_back_and_holds_the_patches(tmp_path, lifted_dir, tiny_model_dir):
    """``cls_restore_steps``: after the Stage 2 steps, steps that pull [CLS] back to the original's while holding
    the patch tokens at the Stage 2 result. Same seed and Stage 2 steps with and without them: the [CLS] drift on
    held-out views falls, the patch tokens stay near the Stage 2 model's (far nearer than the original's)."""
    from fit3d.finetune import load_finetuned
    from fit3d.finetune.data import RenderedViews

    views = RenderedViews(load_scenes([lifted_dir], embed_dim=32), 8, which="heldout", flip_prob=0.0)
    imgs = torch.stack([views[i]["image"] for i in range(len(views))])
    feats = {}
    for k in (0, 12):
        out = tmp_path / f"restore{k}"
        m = finetune([lifted_dir], BACKBONE, out, quick(max_steps=8, cls_restore_steps=k, cls_restore_lr=1e-3),
                     model_path=str(tiny_model_dir))
        assert m["steps"] == 8 + k and m["config"]["cls_restore_steps"] == k
        assert m["metrics"]["loss"]["steps"] == 8 and ("cls_restore_loss" in m["metrics"]) == (k > 0)
        orig, ft = load_finetuned(out)
        feats["original"], feats[k] = orig.features(imgs), ft.features(imgs)

    def rel(a, b):
        return float((b - a).norm() / a.norm())

    o, s2, r = feats["original"], feats[0], feats[12]
    assert rel(o.cls, r.cls) < 0.5 * rel(o.cls, s2.cls), (rel(o.cls, r.cls), rel(o.cls, s2.cls))
    assert rel(s2.patch, r.patch) < 0.5 * rel(o.patch, s2.patch), (rel(s2.patch, r.patch), rel(o.patch, s2.patch))
    with pytest.raises(Fit3DError, match="cls-restore-steps"):
        FinetuneConfig(cls_restore_steps=-1).validate()
    with pytest.raises(Fit3DError, match="cls-restore-steps"):
        FinetuneConfig(cls_restore_steps=4, adapter="lora").validate()


def test_cls_restore_resumes_with_its_frozen_copy(tmp_path, lifted_dir, tiny_model_dir, killed_run):
    """A run killed during the [CLS]-restore steps resumes from its checkpoint (which holds the frozen Stage 2 copy)
    to the same weights as a run that was never killed."""
    import json

    from safetensors.torch import load_file

    from fit3d.run import load_checkpoint

    cfg = quick(max_steps=2, cls_restore_steps=3, cls_restore_lr=1e-3, checkpoint_every=1)
    finetune([lifted_dir], BACKBONE, tmp_path / "ref", cfg, model_path=str(tiny_model_dir))
    killed_run(tmp_path / "run", cfg, loss="restore_loss", call=2)  # in the second restore step (step 4)
    tensors, ck = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert ck["step"] == 3 and "held" in tensors
    finetune([lifted_dir], BACKBONE, tmp_path / "run", cfg, model_path=str(tiny_model_dir))
    a, b = (load_file(tmp_path / r / "model" / "model.safetensors") for r in ("ref", "run"))
    for k in a:
        assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert (json.loads((tmp_path / "run" / "losses.json").read_text())["loss"]
            == json.loads((tmp_path / "ref" / "losses.json").read_text())["loss"])


def test_targets_from_other_views_are_learned(tmp_path, lifted_dir, tiny_model_dir):
    """``target_views`` others: Stage 2 fits the targets rendered without each view's own Gaussians (masked L1 of the
    fine-tuned tokens to them on the training views below the original's), and records the setting."""
    from fit3d.finetune import load_finetuned
    from fit3d.finetune.data import RenderedViews

    out = tmp_path / "others"
    m = finetune([lifted_dir], BACKBONE, out, quick(target_views="others", max_steps=8), model_path=str(tiny_model_dir))
    assert m["config"]["target_views"] == "others"
    views = RenderedViews(load_scenes([lifted_dir], embed_dim=32), 8, flip_prob=0.0, target_views="others")
    items = [views[i] for i in range(len(views))]
    imgs, tgt = torch.stack([it["image"] for it in items]), torch.stack([it["target"] for it in items])
    mask = torch.stack([it["mask"] for it in items])[:, None].float()
    orig, ft = load_finetuned(out)
    l1 = {k: float(((b.features(imgs)[0] - tgt).abs() * mask).sum() / mask.sum()) for k, b in
          (("original", orig), ("finetuned", ft))}
    assert l1["finetuned"] < 0.9 * l1["original"], l1  # measured 10.7 against 13.1
    with pytest.raises(Fit3DError, match="target-views"):
        FinetuneConfig(target_views="mine").validate()
