"""bench/depth_head_pooling.py: the token-grid metrics average prediction and ground truth over each token's valid
pixels, so within-token detail no longer counts while token-scale errors still do."""

import torch

from bench_kit import load_bench


def test_pooling_averages_valid_pixels_per_token():
    b = load_bench("depth_head_pooling")
    d = torch.tensor([[[1.0, 3.0, 2.0, 2.0], [5.0, 0.0, 2.0, 2.0]]])  # [1, 2, 4]: two 2x2 tokens
    mean, share = b.pool_to_tokens(d, d > 0, 2)
    assert torch.allclose(mean, torch.tensor([[[3.0, 2.0]]]))  # (1 + 3 + 5) / 3 valid pixels
    assert torch.allclose(share, torch.tensor([[[0.75, 1.0]]])) and (share > 0).all()


def test_token_metrics_forgive_detail_inside_tokens_but_not_a_token_scale_error():
    b = load_bench("depth_head_pooling")
    gt = torch.full((2, 4, 4), 2.0)
    gt[:, ::2, ::2] = 3.0  # detail inside every 2x2 token
    flat = torch.full_like(gt, 2.25)  # each token's mean, no detail
    pixel = b.depth_per_image(flat, gt, 1e-3, 10.0)[:, 0]
    token = b.token_metrics(flat, gt, 1e-3, 10.0, 2)[:, 0]
    assert (pixel > 0.4).all() and (token < 1e-6).all()  # rmse: wrong per pixel, right per token
    assert (b.token_metrics(flat + 1.0, gt, 1e-3, 10.0, 2)[:, 0] > 0.99).all()  # a token-scale error stays


def test_standardised_uses_the_training_statistics_for_both_splits():
    b = load_bench("depth_head_pooling")
    g = torch.Generator().manual_seed(0)
    tr = (3.0 + 2.0 * torch.randn(5, 4, 2, 3, generator=g), torch.randn(5, 4, generator=g))
    te = (3.0 + 2.0 * torch.randn(2, 4, 2, 3, generator=g), torch.randn(2, 4, generator=g))
    (p, c), (q, d) = b.standardised(tr, te)
    assert torch.allclose(p.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(p.std((0, 2, 3)), torch.ones(4), atol=1e-5)
    mu, sd = tr[0].mean((0, 2, 3), keepdim=True), tr[0].std((0, 2, 3), keepdim=True)
    assert torch.allclose(q, (te[0] - mu) / sd) and c is tr[1] and d is te[1]  # the test split by the train's, [CLS] as is


def test_a_folder_that_is_no_finetuned_run_is_an_error_naming_the_option(tmp_path, capsys):
    import pytest

    for bench, argv in (("depth_head_pooling", ["--finetuned", str(tmp_path)]),
                        ("target_depth", ["--sun3d", str(tmp_path)])):
        with pytest.raises(SystemExit):
            load_bench(bench).main(argv)
        err = capsys.readouterr().err
        assert f"error: {argv[0]}: {tmp_path}: not a fit3d fine-tuned folder" in err, err
