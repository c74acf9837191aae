"""Stage 1 building blocks: SSIM, density control (optimizer-aware), schedule scaling, feature cache, init."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fit3d.data.scene import View
from fit3d.splat.densify import (PARAM_NAMES, DensifySchedule, DensifyStats, densify_and_prune, reset_opacity)
from fit3d.lift.targets import TargetCache, backbone_input_size
from fit3d.lift.config import LiftConfig
from fit3d.lift.init import init_params, initial_points, split_views, voxel_downsample
from fit3d.lift.train import make_optimizer
from fit3d.splat.ssim import ssim


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 32, 3, generator=g)
    torch.testing.assert_close(ssim(x, x), torch.tensor(1.0))
    a = ssim(x, (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1))
    b = ssim(x, (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1))
    assert 1.0 > a > b
    y = x.clone().requires_grad_(True)
    (1 - ssim(y, x.flip(0))).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_schedule_scales_3dgs_numbers():
    s = DensifySchedule.scaled(30_000)
    assert (s.start, s.stop, s.interval, s.opacity_reset_interval) == (500, 15_000, 100, 3_000)
    s = DensifySchedule.scaled(3_000)
    assert (s.start, s.stop, s.interval, s.opacity_reset_interval) == (50, 1_500, 10, 300)
    assert s.densify_now(50) and not s.densify_now(55) and not s.densify_now(1_510)
    assert s.reset_now(300) and not s.reset_now(1_800)


def _params(n=6):
    cfg = LiftConfig(feature_dim=4, max_sh_degree=1)
    pts = np.arange(n * 3, dtype=np.float32).reshape(n, 3) * 0.1
    return init_params(pts, np.full((n, 3), 0.5, np.float32), cfg, "cpu"), cfg


def test_densify_clones_splits_prunes_and_keeps_adam_state_aligned():
    params, cfg = _params(6)
    opt = make_optimizer(params, cfg, extent=1.0)
    sum(p.sum() for p in params.values()).backward()
    opt.step()
    with torch.no_grad():
        params["log_scales"][:] = np.log(0.001)
        params["log_scales"][1] = np.log(0.5)  # large -> split
        params["opacity_logits"][5] = -10.0  # transparent -> pruned
    stats = DensifyStats(6)
    stats.grad_accum[:] = torch.tensor([1.0, 1.0, 0, 0, 0, 0])
    stats.denom[:] = 1
    out = densify_and_prune(params, opt, stats, grad_threshold=0.5, extent=1.0, generator=torch.Generator())
    assert out == {"cloned": 1, "split": 1, "pruned": 2, "total": 7}  # 6 +1 clone +2 halves -1 split -1 transparent
    for name in PARAM_NAMES:
        p = params[name]
        assert p.shape[0] == 7
        g = next(g for g in opt.param_groups if g["name"] == name)
        assert g["params"][0] is p
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
    # split halves have scale 0.5 / 1.6; the clone repeats Gaussian 0
    sc = params["log_scales"].exp()[:, 0]
    assert torch.isclose(sc, torch.tensor(0.5 / 1.6)).sum() == 2
    assert (params["means"] == params["means"][0]).all(1).sum() == 2
    assert stats.grad_accum.shape == (7,) and stats.grad_accum.sum() == 0
    reset_opacity(params, opt)
    assert (torch.sigmoid(params["opacity_logits"]) <= 0.0100001).all()
    sum(p.sum() for p in params.values()).backward()
    opt.step()  # optimizer still consistent after surgery


def test_densify_respects_max_gaussians():
    params, cfg = _params(6)
    opt = make_optimizer(params, cfg, extent=1.0)
    with torch.no_grad():
        params["log_scales"][:] = np.log(0.001)
    stats = DensifyStats(6)
    stats.grad_accum[:] = torch.arange(6.0)
    stats.denom[:] = 1
    out = densify_and_prune(params, opt, stats, grad_threshold=0.5, extent=1.0, max_gaussians=8)
    assert out["total"] == 8 and out["cloned"] == 2


def test_view_space_gradient_matches_a_pixel_shift():
    # A mean moving 1 px sideways at depth z moves x_cam by z / fx: the stat must invert that.
    stats = DensifyStats(1)
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    means = torch.tensor([[0.0, 0.0, 2.0]])
    grad = torch.tensor([[1.0, 0.0, 0.0]])  # dL/dx_world = dL/dx_cam (identity pose)
    stats.update(means, grad, torch.tensor([0.01]), torch.eye(4), K, 100, 80)
    torch.testing.assert_close(stats.grad_accum, torch.tensor([1.0 * 2.0 / 100 * 50]))  # * z / fx * W / 2
    assert stats.denom.item() == 1


class _Backbone:
    patch_size, embed_dim = 4, 2

    def __init__(self):
        self.calls = 0

    def features(self, x):
        self.calls += 1
        f = torch.nn.functional.avg_pool2d(x, 4)[:, :2]
        return f, f.mean((2, 3))


def _views(n=3, w=16, h=12):
    rng = np.random.default_rng(0)
    return [View(image=rng.random((h, w, 3), dtype=np.float32), K=np.diag([10.0, 10.0, 1.0]), c2w=np.eye(4),
                 name=f"v{i}") for i in range(n)]


def test_feature_cache_is_computed_once_and_upsampled(tmp_path):
    bb, views = _Backbone(), _views()
    c = TargetCache.build(tmp_path / "tokens", views, bb, long_side=16, progress=False)
    assert c.grids.shape == (3, 2, 3, 4) and c.grids.dtype == np.float16 and c.computed == 3
    calls = bb.calls
    c2 = TargetCache.build(tmp_path / "tokens", views, bb, long_side=16, progress=False)
    assert bb.calls == calls and c2.names == ["v0", "v1", "v2"] and c2.computed == 0
    np.testing.assert_array_equal(c.grids, c2.grids)
    t = c2.target(1, 16, 12)
    assert t.shape == (1, 2, 12, 16)
    torch.testing.assert_close(t.mean(), c2.grid(1).mean(), atol=1e-2, rtol=0)
    sub = TargetCache.build(tmp_path / "tokens", views[1:], bb, long_side=16, progress=False)  # cached per image
    assert bb.calls == calls and sub.names == ["v1", "v2"]
    np.testing.assert_array_equal(sub.grids, c.grids[1:])
    chunked = TargetCache.build(None, views, bb, long_side=16, progress=False, chunk=2)  # 2 views at a time, no cache
    np.testing.assert_array_equal(chunked.grids, c.grids)
    assert chunked.computed == 3
    calls = bb.calls
    TargetCache.build(tmp_path / "tokens", views, bb, long_side=8, progress=False)  # another input size: computed
    assert bb.calls > calls
    assert backbone_input_size(640, 480, 448, 14) == (448, 336)


def test_split_views_holds_out_every_eighth():
    train, held = split_views([str(i) for i in range(17)], 8)
    assert held == [0, 8, 16] and len(train) == 14 and not set(train) & set(held)


def test_init_from_depth_voxelises_and_caps():
    v = _views(2)
    for x in v:
        x.depth = np.full((12, 16), 2.0, np.float32)
    cfg = LiftConfig(init_points=50)
    pts, cols, src = initial_points(v, None, None, cfg, np.random.default_rng(0))
    assert src == "depth" and 0 < len(pts) <= 50
    np.testing.assert_allclose(pts[:, 2], 2.0, atol=1e-5)
    p, c = voxel_downsample(np.array([[0, 0, 0], [0.01, 0, 0], [1, 1, 1]], np.float32), np.ones((3, 3), np.float32), 0.5)
    assert len(p) == 2
    for x in v:
        x.depth = None
    pts, _, src = initial_points(v, None, None, cfg, np.random.default_rng(0))
    assert src == "random" and len(pts) == 50
    params = init_params(pts, np.full((50, 3), 0.5, np.float32), cfg, "cpu")
    assert (params["features"] == 0).all() and params["features"].shape == (50, 64)
    assert isinstance(params["means"], nn.Parameter)


class _Grids:
    """Stands for a TargetCache: ``grid(i)`` [D, h, w], ``index(name)``."""

    def __init__(self, grids):
        self.grids = grids

    def index(self, name):
        return int(name)

    def grid(self, i, device=None):
        return self.grids[i]


def test_pca_decoder_init_spans_the_tokens_with_unit_scale_coefficients():
    from fit3d.lift.decoder import FeatureDecoder
    from fit3d.lift.decoder import pca_init_decoder

    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(48, 6, generator=g))[0]  # tokens live in a 6-dim subspace of D = 48
    grids = [(basis @ (torch.randn(6, 20, generator=g) * torch.arange(6, 0, -1)[:, None])).reshape(48, 4, 5)
             for _ in range(5)]
    dec = FeatureDecoder(8, 48)
    pca_init_decoder(dec, _Grids(grids), [str(i) for i in range(5)])
    w = dec.conv.weight.detach()
    off_centre = w.clone()
    off_centre[:, :, 1, 1] = 0
    assert w[:, :, 1, 1].abs().sum() > 0 and off_centre.abs().max() == 0
    centre = w[:, :, 1, 1].double()  # [48, 8]
    x = torch.cat([t.reshape(48, -1) for t in grids], 1).double()  # [48, 100]
    coef = torch.linalg.pinv(centre, rtol=1e-5) @ x  # [8, 100]: the f that decodes (1x1) to each token
    torch.testing.assert_close(centre @ coef, x, atol=1e-4, rtol=1e-4)
    rms = coef[:6].pow(2).mean(1).sqrt()  # whitened: the used directions need coefficients of RMS ~1
    assert ((rms > 0.8) & (rms < 1.25)).all(), rms
    assert w[:, 6:, 1, 1].norm() < 1e-4  # directions the tokens do not use stay (near) zero


def test_feature_lr_decays_log_linearly_when_asked():
    from fit3d.lift.train import features_lr

    const = LiftConfig(iterations=100, lr_features=0.02)
    assert features_lr(0, const) == features_lr(100, const) == 0.02
    cfg = LiftConfig(iterations=100, lr_features=0.02, lr_features_final=0.002)
    assert features_lr(0, cfg) == pytest.approx(0.02) and features_lr(100, cfg) == pytest.approx(0.002)
    assert features_lr(50, cfg) == pytest.approx((0.02 * 0.002) ** 0.5)  # geometric midpoint


def test_a_setting_outside_its_choices_is_a_plain_error():
    from fit3d.config import check_choices
    from fit3d.errors import Fit3DError

    check_choices(LiftConfig())
    with pytest.raises(Fit3DError, match=r"--feature-loss-at \(LiftConfig.feature_loss_at\) = 'pixel'.*grid, render"):
        check_choices(LiftConfig(feature_loss_at="pixel"))
