"""The scene-specific decoder: rendered low-dim features f -> backbone width D, and its PCA start."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fit3d.io import atomic_path

if TYPE_CHECKING:
    from fit3d.lift.targets import TargetCache


class FeatureDecoder(nn.Module):
    """FiT3D's decoder: one ``Conv2d(f -> D, 3x3, padding 1, no bias)``.

    forward: [B, f, H, W] -> [B, D, H, W]
    """

    def __init__(self, in_dim: int = 64, out_dim: int = 384, kernel_size: int = 3, bias: bool = False):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, f: Tensor) -> Tensor:
        return self.conv(f)

    def save(self, path) -> None:
        """``decoder.safetensors`` (with in/out dims in the metadata), written atomically."""
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={"in_dim": str(self.in_dim), "out_dim": str(self.out_dim),
                                "kernel_size": str(self.conv.kernel_size[0]),
                                "bias": str(self.conv.bias is not None)})

    @classmethod
    def load(cls, path, map_location: str | torch.device = "cpu") -> "FeatureDecoder":
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        w = state["conv.weight"]
        dec = cls(int(meta.get("in_dim", w.shape[1])), int(meta.get("out_dim", w.shape[0])),
                  int(meta.get("kernel_size", w.shape[-1])), meta.get("bias", "False") == "True")
        dec.load_state_dict(state)
        return dec


@torch.no_grad()
def pca_init_decoder(decoder: FeatureDecoder, cache: "TargetCache", names: list[str], max_tokens: int = 100_000,
                     seed: int = 0) -> None:
    """Start the decoder as the (uncentred) PCA of the training tokens: centre tap column k =
    sqrt(lambda_k) * q_k for the top-f eigenpairs of E[x x^T] (x [D] tokens), other taps zero. Rendered f
    then only has to learn whitened coefficients instead of a basis and its coefficients jointly.
    Hand-written: a D x D eigendecomposition, no library call to wrap."""
    D, f = decoder.out_dim, decoder.in_dim
    gen = torch.Generator().manual_seed(seed)
    per_view = max(1, max_tokens // max(1, len(names)))
    xs = []
    for n in names:
        g = cache.grid(cache.index(n)).reshape(D, -1).T  # [h*w, D]
        xs.append(g[torch.randperm(len(g), generator=gen)[:per_view]])
    x = torch.cat(xs).double()
    evals, evecs = torch.linalg.eigh(x.T @ x / len(x))  # ascending
    k = min(f, D)
    top = evecs[:, -k:].flip(1) * evals[-k:].flip(0).clamp_min(0).sqrt()  # [D, k]
    w = decoder.conv.weight
    w.zero_()
    c = w.shape[-1] // 2
    w[:, :k, c, c] = top.to(w.dtype)
