"""Low-rank adapters for Stage 2 through the ``peft`` library (LoRA on a transformers ViT's attention).

``add_lora(model, cfg)`` injects LoRA layers into ``model`` in place (its base weights frozen) and returns
the ``PeftModel`` that owns them; ``merge_lora(peft_model)`` folds the adapters back into plain weights,
so the saved ``model/`` stays an ordinary ``save_pretrained`` transformers model (``fit3d probe`` and
``fit3d.load`` read it unchanged).
"""

from __future__ import annotations

from torch import nn

from fit3d.errors import Fit3DError

# Module-name suffixes per target set; both spellings of transformers' DINOv2/ViT attention
# (q_proj/k_proj/v_proj/o_proj in recent versions, query/key/value + output.dense in older ones).
_QKV = ("q_proj", "k_proj", "v_proj", "query", "key", "value")
_PROJ = ("o_proj", "attention.output.dense")
_MLP = ("mlp.fc1", "mlp.fc2", "mlp.weights_in", "mlp.weights_out")
TARGETS = {"qkv": _QKV, "attention": _QKV + _PROJ, "all": _QKV + _PROJ + _MLP}


def lora_target_modules(model: nn.Module, targets: str) -> list[str]:
    """The suffixes of ``TARGETS[targets]`` that name ``nn.Linear`` modules of ``model``."""
    if targets not in TARGETS:
        raise Fit3DError(f"lora_targets = {targets!r}: expected one of {', '.join(TARGETS)}")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    found = [t for t in TARGETS[targets] if any(n == t or n.endswith("." + t) for n in names)]
    if not found:
        raise Fit3DError(f"{type(model).__name__}: no linear layers named {', '.join(TARGETS[targets])} "
                         f"to put LoRA adapters on")
    return found


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets: str = "qkv", seed: int = 0):
    """Inject LoRA (rank ``rank``, scale ``alpha / rank``, B initialised to zero: training starts from the
    original model) into ``model`` in place; every other weight is frozen. Returns the ``PeftModel``."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - peft is a dependency
        raise Fit3DError(f"adapter=lora needs the peft library ({e}); pip install peft") from e
    if rank < 1:
        raise Fit3DError(f"lora_rank = {rank}: must be >= 1")
    import torch

    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=0.0, bias="none",
                     target_modules=lora_target_modules(model, targets))
    with torch.random.fork_rng():  # A's random init does not shift the run's other random streams
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, cfg)
    return peft_model


def merge_lora(peft_model) -> nn.Module:
    """Fold the adapters into the base weights; returns the plain transformers model (LoRA layers removed)."""
    return peft_model.merge_and_unload()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    tot = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), tot
