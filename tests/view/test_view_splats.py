"""The viewer's scene building without a browser: splat arrays, colour modes, picking, subsampling, cameras."""

import math

import numpy as np
import pytest
import torch

from fit3d.data.scene import View
from fit3d.lift.decoder import FeatureDecoder
from fit3d.splat.gaussians import FeatureGaussians, rgb_to_sh_dc
from fit3d.view.cameras import frustum_of, frustum_plane_depth, image_point, look_at_point, up_direction
from fit3d.view.scenes import ViewScene, click_target
from fit3d.view.splats import (BELOW_THRESHOLD, pca_colors, pick_gaussian, similarity_colors, splat_arrays,
                               subsample)


def gaussians(n=200, f=4, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    rgb = torch.rand(n, 3, generator=g)
    quats = torch.randn(n, 4, generator=g)
    return FeatureGaussians(means=means, quats=quats, log_scales=torch.full((n, 3), math.log(scale)),
                            opacity_logits=torch.full((n,), 2.0), sh=rgb_to_sh_dc(rgb)[:, None].contiguous(),
                            features=torch.randn(n, f, generator=g), sh_degree=0), rgb


def decoder(f=4, D=6, seed=0, kernel=3):
    torch.manual_seed(seed)
    return FeatureDecoder(f, D, kernel_size=kernel, bias=True)


def test_splat_arrays_match_the_gaussians():
    g, rgb = gaussians()
    dec = decoder()
    sp = splat_arrays(g, dec)
    assert len(sp) == 200 and sp.total == 200 and sp.describe() == "all 200 Gaussians"
    np.testing.assert_allclose(sp.centers, g.means.numpy(), atol=1e-6)
    np.testing.assert_allclose(sp.rgbs, rgb.numpy(), atol=1e-5)
    np.testing.assert_allclose(sp.opacities[:, 0], torch.sigmoid(torch.tensor(2.0)).item(), atol=1e-6)
    # isotropic scales: covariance = s^2 I whatever the rotation
    np.testing.assert_allclose(sp.covariances, np.broadcast_to(np.eye(3) * 0.05 ** 2, (200, 3, 3)), atol=1e-7)
    # decoded features = the decoder applied to a field constant at f (any kernel size)
    f = g.features[:3]
    field = f[:, :, None, None].expand(3, 4, 9, 9)
    full = dec(field)[:, :, 4, 4].detach().numpy()  # the centre pixel sees every tap
    np.testing.assert_allclose(sp.decoded(np.arange(3)), full, atol=1e-5)


def test_anisotropic_covariance_is_r_s2_rt():
    g, _ = gaussians(n=1)
    g.log_scales = torch.log(torch.tensor([[0.1, 0.2, 0.3]]))
    g.quats = torch.tensor([[math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)]])  # 45 deg about z
    cov = splat_arrays(g, decoder()).covariances[0]
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    np.testing.assert_allclose(cov, R @ np.diag([0.01, 0.04, 0.09]) @ R.T, atol=1e-6)


def test_subsampling_keeps_a_budget_and_grows_scales():
    g, _ = gaussians(n=400)
    sp = splat_arrays(g, decoder(), max_splats=100, seed=1)
    assert len(sp) == 100 and sp.total == 400
    assert np.all(np.diff(sp.index) > 0) and sp.index.max() < 400
    np.testing.assert_allclose(sp.centers, g.means[sp.index].numpy())
    assert sp.scale_gain == pytest.approx(2.0)  # sqrt(400 / 100): the kept splats cover the same area
    np.testing.assert_allclose(sp.covariances[0], np.eye(3) * (0.05 * 2) ** 2, atol=1e-7)
    assert "100 of 400" in sp.describe() and "random" in sp.describe()
    np.testing.assert_array_equal(subsample(400, 100, seed=1), sp.index)  # seeded: the same subset
    assert len(subsample(50, 100)) == 50 and len(subsample(50, 0)) == 50


def test_pca_colours_per_scene_and_shared():
    a = splat_arrays(gaussians(seed=0)[0], decoder())
    b = splat_arrays(gaussians(seed=1)[0], decoder())
    b.features = b.features * 3 + 1  # another scene, other features, the same decoder space
    ca, cb = pca_colors([a, b])
    sa, sb = pca_colors([a, b], shared=True)
    assert ca.shape == (200, 3) and ca.dtype == np.float32 and 0 <= ca.min() and ca.max() <= 1
    assert ca.std(0).min() > 0.1  # the range is used
    np.testing.assert_array_equal(pca_colors([a])[0], ca)  # per scene: each alone
    assert np.abs(sa - ca).mean() > 0.05 or np.abs(sb - cb).mean() > 0.05  # shared basis differs
    # shared: the same decoded feature gets the same colour in both scenes
    b2 = splat_arrays(gaussians(seed=1)[0], decoder())
    b2.features[:5] = a.features[:5]
    b2.norms = np.linalg.norm(b2.decoded(), axis=1)
    s1, s2 = pca_colors([a, b2], shared=True)
    np.testing.assert_allclose(s1[:5], s2[:5], atol=1e-6)


def test_similarity_colours_threshold_and_query():
    g, _ = gaussians()
    sp = splat_arrays(g, decoder())
    q = sp.decoded(np.array([7]))[0]
    cos = sp.cosine_to(q)
    ref = sp.decoded() @ q / (np.linalg.norm(sp.decoded(), axis=1) * np.linalg.norm(q))
    np.testing.assert_allclose(cos, ref, atol=1e-5)
    assert cos[7] == pytest.approx(1.0, abs=1e-5)
    rgb = similarity_colors(cos, threshold=0.5)
    below = cos < 0.5
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(rgb[below], np.broadcast_to(BELOW_THRESHOLD, (below.sum(), 3)))
    assert rgb[7].sum() > rgb[~below].sum(1).mean() - 1e-6  # the clicked one is the brightest
    assert (similarity_colors(cos, threshold=0.9) == BELOW_THRESHOLD).all(1).sum() > below.sum()


def test_pick_gaussian_takes_the_first_along_the_ray():
    centers = np.array([[0, 0, 5.0], [0, 0, 2.0], [0.5, 0, 1.0], [0, 0, -1.0]], np.float32)
    cov = np.broadcast_to(np.eye(3, dtype=np.float32) * 0.01, (4, 3, 3))
    op = np.ones((4, 1), np.float32)
    assert pick_gaussian(centers, op, cov, (0, 0, 0), (0, 0, 2)) == (1, pytest.approx(2.0))  # not behind, not aside
    op[1] = 0.01  # nearly transparent: looked through
    assert pick_gaussian(centers, op, cov, (0, 0, 0), (0, 0, 1))[0] == 0
    assert pick_gaussian(centers, op, cov, (0, 0, 0), (1, 0, 0)) is None


def camera(c2w, W=64, H=48, f=50.0, name="0"):
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    return View(image=np.zeros((H, W, 3), np.float32), K=K, c2w=c2w, name=name)


def test_frustum_click_lands_on_the_pixel_seen_along_that_ray():
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]).T  # looking along +y... any rotation
    c2w[:3, 3] = [1.0, 2.0, 0.5]
    v = camera(c2w)
    fr = frustum_of(v)
    assert fr.fov == pytest.approx(2 * math.atan(24 / 50)) and fr.aspect == pytest.approx(64 / 48)
    # a ray from behind the camera through its centre and pixel (u, v) hits the image plane at (u, v)
    for u, vv in [(10.0, 7.0), (32.0, 24.0), (60.0, 40.0)]:
        d_cam = np.array([(u - 32) / 50, (vv - 24) / 50, 1.0])
        d = c2w[:3, :3] @ d_cam
        o = c2w[:3, 3] - 3 * d
        hit = image_point(fr, 0.3, o, d)
        assert hit is not None
        assert hit[:2] == (pytest.approx(u, abs=1e-6), pytest.approx(vv, abs=1e-6))
        zp = frustum_plane_depth(fr.fov, fr.aspect, 0.3)
        assert hit[2] == pytest.approx((3 + zp) * np.linalg.norm(d), rel=1e-6)
    assert image_point(fr, 0.3, c2w[:3, 3], -c2w[:3, 2]) is None  # pointing away


def test_click_target_prefers_what_is_nearer():
    g, _ = gaussians(n=1)
    g.means = torch.tensor([[0.0, 0.0, 5.0]])
    scene = ViewScene("s", None, "b", splat_arrays(g, decoder()))
    scene.frustums = [frustum_of(camera(np.eye(4)))]
    hit = click_target(scene, 0.3, (0, 0, -1), (0, 0, 1))
    assert hit.kind == "camera" and hit.point == (pytest.approx(32), pytest.approx(24))
    assert click_target(scene, 0.3, (0, 0, -1), (0, 0, 1), hidden={0}).kind == "gaussian"
    assert click_target(scene, 0.3, (0, 0, -1), (0, 0, 1), cameras_shown=False).kind == "gaussian"
    assert click_target(scene, 0.3, (0, 0, -1), (0, 1, 0)) is None


def test_up_and_look_at():
    c2w = np.eye(4)  # OpenCV: y down, so up is -y
    np.testing.assert_allclose(up_direction(np.stack([c2w, c2w])), [0, -1, 0])
    pts = np.array([[0, 0, 2.0], [0, 0, 4.0], [0, 0, -3.0], [0, 0, 3.0]])
    np.testing.assert_allclose(look_at_point(c2w, pts), [0, 0, 3.0])
