"""The original's own [CLS] on a fine-tuned model that shares its first blocks (``cls_branch.safetensors``).

When Stage 2 freezes the patch embedding and the first ``k`` blocks (``freeze_blocks``), the hidden state after
block ``k`` is the original's on every image: same weights, same input. The original's remaining blocks and final
norm, run on that state, give the original's [CLS] exactly. A model folder with this branch outputs its trained
patch tokens and the original's [CLS]:

    hidden_k = prefix(image)                                  shared, frozen (blocks 1..k)
    patch    = finetuned_blocks(hidden_k)[patch tokens]       trained in Stage 2
    cls      = norm_0(original_blocks(hidden_k))[0]           the original's, unchanged

Stage 2 gives [CLS] no target but moves it, and the moved [CLS] is the whole of the fine-tuned model's metric-depth
loss across scenes (``bench/cls_diagnosis.py``, docs/generalize.md); maps on the moved [CLS]
(``fit3d.models.cls_map``) did not carry from validation to the test scenes. The branch removes the move instead.
Its price is compute: attention needs every token, so the branch runs its blocks on all of them. With the
``default`` recipe (6 of 12 blocks trained) that is 1.5x the forward FLOPs and 1.5x the parameters (concat, FiT3D's
assembly: 2x and a 2D-wide output).

``fit3d.finetune.cls_align`` (``cls_align = "original"``) attaches it after Stage 2; ``fit3d.models.load_backbone``
loads it with the weights, whose fingerprint covers the file. Plain transformers loading ignores it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from fit3d.errors import Fit3DError, ModelNotFoundError

CLS_BRANCH_FILE = "cls_branch.safetensors"


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer's list of blocks (the ``ModuleList`` with ``num_hidden_layers`` entries)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if n is not None:
        lists = [m for m in lists if len(m) == n] or lists
    if not lists:
        raise Fit3DError(f"{type(model).__name__}: no transformer block list found")
    return max(lists, key=len)


def block_output(out) -> Tensor:
    """A transformer block's hidden state [B, N, D] from what it returns (a tensor, or a tuple led by it)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def run_tail(blocks, norm: nn.Module, hidden: Tensor) -> Tensor:
    """``norm(blocks(hidden))``: the normed token sequence [B, N, D] of a model's last blocks run on the hidden state
    [B, N, D] that enters the first of them (the anchor's reference, the [CLS] branch)."""
    h = hidden
    for block in blocks:
        h = block_output(block(h))
    return norm(h)


def shared_prefix(original: nn.Module, finetuned: nn.Module) -> int:
    """Number of leading blocks the two models share with every weight before them (0 when anything in front of
    the blocks, e.g. the patch embedding, differs): equal tensors, not only frozen ones."""
    bo, bf = transformer_blocks(original), transformer_blocks(finetuned)
    in_blocks = {id(p) for p in bf.parameters()}
    po = dict(original.named_parameters())
    # the parameters registered before the block list (embeddings, a pre-norm) make block 1's input; those after
    # it (the final norm, a pooler) reach no block's hidden state
    for n, p in finetuned.named_parameters():
        if id(p) in in_blocks:
            break
        if n not in po or po[n].shape != p.shape or not torch.equal(po[n], p):
            return 0
    k = 0
    for a, b in zip(bo, bf):
        pa, pb = list(a.parameters()), list(b.parameters())
        if len(pa) != len(pb) or not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(pa, pb)):
            break
        k += 1
    return k


class ClsBranch(nn.Module):
    """The original's blocks ``start..L`` and final norm: ``branch(hidden)`` [B, N, D] (the state after block
    ``start``) -> [CLS] [B, D]. ``capture(model)`` hooks block ``start`` of a model sharing the prefix and
    ``cls()`` runs the branch on what it captured (no grad; eval mode)."""

    def __init__(self, start: int, blocks: nn.ModuleList, norm: nn.Module, meta: dict | None = None):
        super().__init__()
        if start < 1:
            raise Fit3DError("a [CLS] branch needs at least one shared block (cls_align=original needs a recipe that "
                             "freezes the first blocks, freeze_blocks > 0)")
        self.start = int(start)
        self.blocks = blocks
        self.norm = norm
        self.meta = {str(k): str(v) for k, v in (meta or {}).items()}
        self.requires_grad_(False)
        self.eval()
        self._hidden: Tensor | None = None

    @classmethod
    def from_original(cls, original: nn.Module, norm_attr: str, start: int, meta: dict | None = None) -> "ClsBranch":
        """Copies of ``original``'s blocks from ``start`` on and of its final norm (``getattr(original, norm_attr)``)."""
        blocks = transformer_blocks(original)
        if not 0 < start < len(blocks):
            raise Fit3DError(f"a [CLS] branch from block {start} of {len(blocks)}: needs 0 < start < {len(blocks)}")
        return cls(start, copy.deepcopy(blocks[start:]), copy.deepcopy(getattr(original, norm_attr)),
                   {**(meta or {}), "start": start})

    def train(self, mode: bool = True):  # the branch is the frozen original's: never in train mode (dropout)
        return super().train(False)

    @property
    def dim(self) -> int:
        return next(self.norm.parameters()).shape[-1]

    @torch.no_grad()
    def forward(self, hidden: Tensor) -> Tensor:
        return run_tail(self.blocks, self.norm, hidden)[:, 0]

    def capture(self, model: nn.Module):
        """Hook block ``start`` (1-based: its output) of ``model``; returns the hook's handle (remove it after)."""
        self._hidden = None

        def keep(module, args, out):
            self._hidden = block_output(out).detach()

        return transformer_blocks(model)[self.start - 1].register_forward_hook(keep)

    def cls(self) -> Tensor:
        """The original's [CLS] [B, D] of the forward just captured."""
        if self._hidden is None:
            raise RuntimeError("ClsBranch.cls(): no hidden state captured (call capture(model) before the forward)")
        h, self._hidden = self._hidden, None
        return self(h)

    def save(self, folder) -> Path:
        """Write ``folder/cls_branch.safetensors`` (the folder must exist; callers write into a temporary folder)."""
        from safetensors.torch import save_file

        path = Path(folder) / CLS_BRANCH_FILE
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={**self.meta, "start": str(self.start)})
        return path


def load_cls_branch(folder, model: nn.Module, norm_attr: str) -> ClsBranch | None:
    """The branch stored in a model folder (its modules shaped like ``model``'s), None when it has none;
    ``ModelNotFoundError`` for a damaged or foreign file."""
    path = Path(folder) / CLS_BRANCH_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
        start = int(meta.get("start", 0))
        blocks = transformer_blocks(model)
        if not 0 < start < len(blocks):
            raise ValueError(f"branch from block {start} for a model of {len(blocks)} blocks")
        branch = ClsBranch(start, copy.deepcopy(blocks[start:]), copy.deepcopy(getattr(model, norm_attr)), meta)
        branch.load_state_dict(state, strict=True)
    except Exception as e:  # safetensors / torch raise their own types for a truncated or foreign file
        raise ModelNotFoundError(f"{path}: unreadable [CLS] branch ({type(e).__name__}: {str(e)[:200]})") from None
    branch.requires_grad_(False)
    return branch.eval()


# Config entries that name or describe a saved model without changing what it computes.
_CONFIG_META = ("architectures", "transformers_version", "torch_dtype", "dtype", "name_or_path")


def _equal_params(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = list(a.state_dict().items()), list(b.state_dict().items())
    return len(pa) == len(pb) and all(ka == kb and x.shape == y.shape and torch.equal(x, y)
                                      for (ka, x), (kb, y) in zip(pa, pb))


def _compute_config(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    return {k: v for k, v in d.items() if not k.startswith("_") and k not in _CONFIG_META}


def cls_is_original(original: nn.Module, model: nn.Module) -> bool:
    """Whether ``model``'s last-layer [CLS] is ``original``'s own function of the image (both ``Backbone``s):
    ``model`` has a [CLS] branch whose blocks and final norm equal ``original``'s from the branch's start on, the
    blocks before it and everything in front of them (patch embedding, position embedding) equal too, the same
    family, configuration and pixel normalisation, and neither carries a [CLS] map. Then the two compute the same
    operations on the same weights, so the [CLS] of any image is the same (bit for bit, given the same batch and
    device) and features of the one serve for the other (``fit3d.probe.cls``). Weights are compared, not trusted."""
    br = getattr(model, "cls_branch", None)
    if br is None or getattr(original, "cls_branch", None) is not None:
        return False
    if getattr(model, "cls_map", None) is not None or getattr(original, "cls_map", None) is not None:
        return False
    if (model.name, model.family, type(model.model)) != (original.name, original.family, type(original.model)):
        return False
    if not (torch.equal(model.mean.cpu(), original.mean.cpu()) and torch.equal(model.std.cpu(), original.std.cpu())):
        return False
    if _compute_config(model.model) != _compute_config(original.model):
        return False
    if shared_prefix(original.model, model.model) < br.start:
        return False
    norm = getattr(original.model, getattr(original._family, "norm_attr", "") or "", None)
    blocks = transformer_blocks(original.model)
    return (norm is not None and len(br.blocks) == len(blocks) - br.start
            and all(_equal_params(a, b) for a, b in zip(blocks[br.start:], br.blocks)) and _equal_params(norm, br.norm))
