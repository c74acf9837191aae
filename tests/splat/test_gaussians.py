"""FeatureGaussians: PLY round trip (3DGS properties + feat_*), SH evaluation, shapes."""

import numpy as np
import pytest
import torch

from fit3d.errors import SceneError
from fit3d.splat.gaussians import FeatureGaussians, eval_sh, rgb_to_sh_dc


def random_gaussians(n=50, k=16, f=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FeatureGaussians(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g),
                            torch.randn(n, 3, generator=g), torch.randn(n, generator=g),
                            torch.randn(n, k, 3, generator=g), torch.randn(n, f, generator=g), sh_degree=2)


def test_ply_round_trip_keeps_every_parameter(tmp_path):
    g = random_gaussians()
    g.save_ply(tmp_path / "g.ply")
    h = FeatureGaussians.load_ply(tmp_path / "g.ply")
    for k in ("means", "quats", "log_scales", "opacity_logits", "sh", "features"):
        torch.testing.assert_close(getattr(h, k), getattr(g, k))
    assert h.sh_degree == 2 and h.feature_dim == 7 and h.max_sh_degree == 3


def test_ply_has_standard_3dgs_properties(tmp_path):
    from plyfile import PlyData

    random_gaussians(n=5, f=3).save_ply(tmp_path / "g.ply")
    names = PlyData.read(str(tmp_path / "g.ply"))["vertex"].data.dtype.names
    want = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "feat_0", "feat_1", "feat_2"])
    assert list(names) == want


def test_ply_f_rest_is_channel_major_like_3dgs(tmp_path):
    from plyfile import PlyData

    g = random_gaussians(n=3, f=1)
    g.save_ply(tmp_path / "g.ply")
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"].data
    # 3DGS: f_rest_{c * 15 + j} is channel c of SH basis j + 1
    np.testing.assert_allclose(v["f_rest_16"], g.sh[:, 2, 1].numpy(), rtol=1e-6)


def test_missing_or_corrupt_ply_raises_scene_error(tmp_path):
    with pytest.raises(SceneError, match="not found"):
        FeatureGaussians.load_ply(tmp_path / "none.ply")
    (tmp_path / "bad.ply").write_bytes(b"garbage")
    with pytest.raises(SceneError, match="bad.ply"):
        FeatureGaussians.load_ply(tmp_path / "bad.ply")


def test_dc_colour_round_trips_through_sh():
    rgb = torch.rand(10, 3)
    sh = torch.zeros(10, 16, 3)
    sh[:, 0] = rgb_to_sh_dc(rgb)
    g = FeatureGaussians(torch.randn(10, 3), torch.randn(10, 4), torch.zeros(10, 3), torch.zeros(10), sh,
                         torch.zeros(10, 0), sh_degree=3)
    torch.testing.assert_close(g.colors(torch.zeros(3)), rgb)
    torch.testing.assert_close(eval_sh(0, sh, torch.randn(10, 3)) + 0.5, rgb)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="quats"):
        FeatureGaussians(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4),
                         torch.zeros(4, 1, 3), torch.zeros(4, 2))


def test_eval_sh_contraction_equals_the_term_by_term_formula():
    """eval_sh contracts a basis with the coefficients; the 3DGS formula sums sh[:, k] terms."""
    from fit3d.splat.sh import SH_C0, SH_C1, SH_C2, SH_C3

    g = torch.Generator().manual_seed(0)
    sh = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=1)
    x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    terms = [SH_C0 * sh[:, 0], -SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3],
             SH_C2[0] * xy * sh[:, 4] + SH_C2[1] * yz * sh[:, 5] + SH_C2[2] * (2.0 * zz - xx - yy) * sh[:, 6]
             + SH_C2[3] * xz * sh[:, 7] + SH_C2[4] * (xx - yy) * sh[:, 8],
             SH_C3[0] * y * (3 * xx - yy) * sh[:, 9] + SH_C3[1] * xy * z * sh[:, 10]
             + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11] + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
             + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + SH_C3[5] * z * (xx - yy) * sh[:, 14]
             + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15]]
    for degree in range(4):
        torch.testing.assert_close(eval_sh(degree, sh, d), sum(terms[:degree + 1]))
