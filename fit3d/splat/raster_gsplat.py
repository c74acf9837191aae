"""CUDA backend: gsplat's fused kernels, called so that no channels are wasted on padding.

gsplat's ``rasterize_to_pixels`` is compiled for a fixed set of channel counts and pads any other
count up to the next one (67 colour channels + 1 depth channel -> 128). We split the channels into
chunks whose sizes are all compiled ones: the first chunk carries the expected depth
("RGB+ED", e.g. 64 + 1 = 65), the rest render plain "RGB" (e.g. 3). Each chunk is an independent
differentiable call on the same Gaussians, so geometry gradients add up correctly.
"""

from __future__ import annotations

import torch
from torch import Tensor

# channel counts gsplat compiles rasterize_to_pixels for (gsplat/cuda/_wrapper.py)
SUPPORTED_CHANNELS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513)


def channel_chunks(C: int) -> list[int]:
    """Split C colour channels: the first chunk + 1 depth channel and every later chunk are supported
    sizes, e.g. 67 -> [64, 3], 35 -> [32, 3], 3 -> [3]."""
    first = max(s - 1 for s in SUPPORTED_CHANNELS if 1 <= s - 1 <= C) if C >= 1 else 0
    chunks, rest = [first], C - first
    while rest > 0:
        s = max(s for s in SUPPORTED_CHANNELS if s <= rest)
        chunks.append(s)
        rest -= s
    return chunks


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     viewmat: Tensor, K: Tensor, width: int, height: int, *, near_plane: float = 0.01,
                     eps2d: float = 0.3):
    """Same contract as :func:`fit3d.splat.rasterize.rasterize`; CUDA tensors, computes in float32."""
    from gsplat import rasterization  # lazy: only CUDA machines have it

    dt = colors.dtype
    f32 = torch.float32
    geo = dict(means=means.to(f32), quats=quats.to(f32), scales=scales.to(f32), opacities=opacities.to(f32),
               viewmats=viewmat.detach().to(device=means.device, dtype=f32)[None],
               Ks=K.detach().to(device=means.device, dtype=f32)[None], width=int(width), height=int(height),
               near_plane=near_plane, eps2d=eps2d, sh_degree=None, packed=False, rasterize_mode="classic")
    cols = colors.to(f32)
    images, depth, alpha = [], None, None
    start = 0
    for i, n in enumerate(channel_chunks(cols.shape[1])):
        out, a, _ = rasterization(colors=cols[:, start:start + n], render_mode="RGB+ED" if i == 0 else "RGB", **geo)
        if i == 0:
            images.append(out[0, ..., :-1])
            depth, alpha = out[0, ..., -1], a[0, ..., 0]
        else:
            images.append(out[0])
        start += n
    image = torch.cat(images, -1) if len(images) > 1 else images[0]
    return image.to(dt), depth.to(dt), alpha.to(dt)
