import numpy as np
import torch

from fit3d.viz.pca import fit_pca, pca_rgb


def clustered(seed=0, D=16, h=6, w=8):
    """[D, h, w] features made of 4 well-separated clusters (3 principal directions), plus small noise."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, D, generator=g) * 5
    assign = torch.arange(h * w).reshape(h, w) % 4
    f = centers[assign].permute(2, 0, 1) + 0.01 * torch.randn(D, h, w, generator=g)
    return f, assign


def test_shapes_dtype_and_range():
    f, _ = clustered()
    out = pca_rgb([f, f[:, :3, :5]])
    assert [o.shape for o in out] == [(6, 8, 3), (3, 5, 3)]
    assert all(o.dtype == np.uint8 for o in out)
    assert out[0].max() > 200 and out[0].min() < 50  # the range is used


def test_same_features_get_the_same_colours_across_maps():
    f, assign = clustered()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    g = f[:, :, perm]  # the same tokens in another order
    a, b = pca_rgb([f, g])
    np.testing.assert_array_equal(b, a[:, perm.numpy()])
    # tokens of one cluster share a colour, different clusters differ
    cols = {int(k): a[assign.numpy() == k] for k in range(4)}
    for k, c in cols.items():
        assert np.abs(c.astype(int) - c[0].astype(int)).max() <= 3
    means = [c.mean(0) for c in cols.values()]
    assert min(np.abs(means[i] - means[j]).max() for i in range(4) for j in range(i + 1, 4)) > 60


def test_basis_is_shared_not_refitted_per_map():
    f, _ = clustered()
    alone = pca_rgb([f])[0]
    a, b = pca_rgb([f, 3 * f])  # a scaled copy: separate bases would colour both like `alone`
    np.testing.assert_array_equal(pca_rgb([3 * f])[0], alone)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 20
    basis = fit_pca([f, 3 * f])
    np.testing.assert_array_equal(basis.to_rgb(f), a)


def test_deterministic_and_handles_tiny_inputs():
    f, _ = clustered()
    np.testing.assert_array_equal(pca_rgb([f])[0], pca_rgb([f.clone()])[0])
    tiny = torch.randn(2, 1, 2)  # D=2 < 3 components, 2 tokens
    out = pca_rgb([tiny])[0]
    assert out.shape == (1, 2, 3)
