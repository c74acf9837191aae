"""Device and rank selection shared by every stage (one rule for ``device="auto"`` and ``torchrun``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fit3d.errors import Fit3DError


@dataclass
class DistInfo:
    """This process's place under ``torchrun`` (rank 0 of 1 otherwise)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank / world size / local rank from the environment ``torchrun`` sets."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str | None = "auto", local_rank: int | None = None, option: str = "--device") -> torch.device:
    """``"auto"`` (or None): CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.
    Under torchrun (``local_rank`` given, or env ``WORLD_SIZE`` > 1) an index-less CUDA device becomes
    ``cuda:LOCAL_RANK`` (modulo the visible GPUs). A device this machine lacks is a ``Fit3DError`` naming
    ``option``."""
    if local_rank is None:
        di = dist_info()
        local_rank = di.local_rank if di.active else None
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise Fit3DError(f"{option} {name!r}: not a device (expected auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise Fit3DError(f"{option} {name!r}: CUDA is not available on this machine (use cpu or auto)")
        n = torch.cuda.device_count()
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank % n)
        if dev.index is not None and dev.index >= n:
            raise Fit3DError(f"{option} {name!r}: this machine has {n} CUDA device(s) (cuda:0 .. cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise Fit3DError(f"{option} {name!r}: MPS is not available on this machine (use cpu or auto)")
    elif dev.type not in ("cpu", "mps"):
        raise Fit3DError(f"{option} {name!r}: device type {dev.type} is not available (expected auto, cpu or cuda[:N])")
    return dev


def check_device(name: str | None, option: str = "--device") -> None:
    """``None`` / "auto" or a device this machine has (``cuda`` without a GPU and ``cuda:7`` on a
    one-GPU machine are errors naming ``option``): ``resolve_device``'s rule."""
    resolve_device(name, local_rank=0, option=option)
