"""One device rule for every stage (fit3d.device)."""

from __future__ import annotations

import pytest
import torch

from fit3d.device import dist_info, resolve_device
from fit3d.errors import Fit3DError


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu:0"])
def test_not_a_device_is_a_plain_error(name):
    with pytest.raises(Fit3DError, match="--device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(Fit3DError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_dist_info_reads_torchrun_env(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    di = dist_info()
    assert (di.rank, di.world_size, di.local_rank, di.active, di.is_main) == (3, 4, 1, True, False)
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")


def test_adamw_takes_the_fused_kernel_on_the_cpu_with_the_default_update():
    from fit3d.device import adamw

    g = torch.Generator().manual_seed(0)
    w0 = [torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
    grads = [[torch.randn(w.shape, generator=g, dtype=torch.float64) for w in w0] for _ in range(20)]
    out = []
    for make in (lambda ps: adamw(ps, lr=1e-2, weight_decay=1e-2),
                 lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2)):
        ps = [w.clone().requires_grad_() for w in w0]
        opt = make(ps)
        for gs in grads:
            for p, gr in zip(ps, gs):
                p.grad = gr.clone()
            opt.step()
        out.append((ps, opt.param_groups[0]["fused"]))
    (fused, is_fused), (ref, _) = out
    assert is_fused
    for a, b, w in zip(fused, ref, w0):
        assert (a - b).abs().max() < 1e-13 and (a - w).abs().max() > 1e-2
