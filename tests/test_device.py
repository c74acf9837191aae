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
