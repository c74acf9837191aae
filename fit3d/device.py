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


PRECISIONS = ("auto", "fp32", "bf16")  # of frozen feature extraction (``Backbone.features``)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX-512 BF16). There bf16 autocast makes a
    DINOv2 forward 2.5-3x cheaper than float32 (``bench/extract_speed.py``, docs/speed.md); on a CPU without it
    bf16 is emulated and several times slower, so ``auto`` keeps float32."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, name, None)  # private torch helpers; absent or failing means no
        try:
            if probe is not None and probe():
                return True
        except Exception:  # noqa: BLE001 - a detection failure is a "no", never an error
            pass
    return False


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: the dtype frozen features are computed in on ``device``. ``auto``: bf16 autocast on
    CUDA and on a CPU with bf16 hardware (:func:`cpu_has_fast_bf16`), float32 elsewhere (MPS too). None (a
    ``Backbone``'s own default, which Stage 2's models keep): bf16 autocast on CUDA only."""
    kind = torch.device(device).type
    if precision is None:
        return "bf16" if kind == "cuda" else "fp32"
    p = precision
    if p not in PRECISIONS:
        raise Fit3DError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if p == "auto":
        return "bf16" if kind == "cuda" or (kind == "cpu" and cpu_has_fast_bf16()) else "fp32"
    if p == "bf16" and kind not in ("cpu", "cuda"):
        raise Fit3DError(f"precision bf16 on {kind}: bf16 autocast runs on cpu or cuda (use fp32 or auto)")
    return p


def numerics(device: str | torch.device, precision: str | None = "auto") -> str:
    """The device kind and dtype features are computed in, as cache keys and records name it: ``cpu`` (float32),
    ``cpu-bf16``, ``cuda`` (bf16 autocast, the CUDA default), ``cuda-fp32``; other kinds as their name."""
    kind = torch.device(device).type
    p = resolve_precision(precision, kind)
    if kind == "cpu" and p == "bf16":
        return "cpu-bf16"
    if kind == "cuda" and p == "fp32":
        return "cuda-fp32"
    return kind


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with torch's fused kernel where every parameter allows it (CPU or CUDA, floating):
    one pass over a parameter and its two moments per step instead of one per elementwise op (on 2 CPU cores
    3-4x cheaper: 14 against 40-52 CPU ms a Stage 2 step, 4 against 15 ms a batched probe step); the same
    update up to float rounding. Elsewhere (MPS, ...) the default implementation."""
    params = list(params)
    ts = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    fused = bool(ts) and all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in ts)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
