"""The paper's qualitative figure: an image, PCA of original vs fine-tuned features, depth-probe maps.

``compare_figure(image, original, finetuned, depth_probes=None)`` works on any photo: the image is
resized (keeping its aspect) to a multiple of the patch size, both backbones see the same input, and
one PCA basis fitted on both feature maps colours them, so a colour means the same feature in both.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from fit3d.viz.images import add_colorbar, colorize_depth, depth_range, hstack, to_uint8, upsample
from fit3d.viz.pca import pca_rgb

# A depth probe: (patch [B, D, h, w], cls [B, Dc], (H, W)) -> depth [B, 1, H, W] or [B, H, W] metres.
# ``fit3d.probe.depth.LinearDepthHead`` is one. Keyed by the features it reads:
# "original", "finetuned" or "concat" (original and fine-tuned patch tokens, original [CLS]).
DepthProbe = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]
FEATURE_SOURCES = ("original", "finetuned", "concat")


def model_input_size(height: int, width: int, patch: int, short_side: int = 448,
                     max_side: int = 1344) -> tuple[int, int]:
    """(H, W) for the model: shorter side about ``short_side``, longer side at most ``max_side``, aspect
    kept, both rounded to multiples of ``patch``."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_side:
        scale = max_side / max(height, width)
    return (max(patch, int(round(height * scale / patch)) * patch),
            max(patch, int(round(width * scale / patch)) * patch))


def prepare_image(image, backbone, short_side: int = 448, max_side: int = 1344) -> torch.Tensor:
    """uint8 / float RGB [H, W, 3] -> float [1, 3, H', W'] in [0, 1] sized for ``backbone``."""
    img = torch.from_numpy(to_uint8(image)).permute(2, 0, 1)[None]
    size = model_input_size(img.shape[-2], img.shape[-1], backbone.patch_size, short_side, max_side)
    return backbone.prepare(img, size=size)


def _depth_of(probe: DepthProbe, patch: torch.Tensor, cls: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    with torch.inference_mode():
        d = probe(patch, cls, size)
    d = d.detach().float().cpu()
    return d.reshape(d.shape[0], *d.shape[-2:])[0].numpy()


def feature_pca_figure(image, feature_maps: Mapping[str, torch.Tensor], panel_height: int | None = 320) -> np.ndarray:
    """image | PCA of each map, all maps coloured with one PCA basis (e.g. rendered vs real features
    during lifting: ``{"real": f [D, h, w], "rendered": g [D, h', w']}``). Maps are shown at the image size
    (nearest, so patches stay crisp). Returns uint8 [H, W, 3]."""
    img = to_uint8(image)
    H, W = img.shape[:2]
    rgbs = pca_rgb([f.detach().float().cpu() for f in feature_maps.values()])
    panels = [img] + [upsample(c, H, W) for c in rgbs]
    return hstack(panels, ["image", *feature_maps.keys()], height=panel_height or H)


def probe_features(model, x: torch.Tensor, layers: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch [1, D, h, w], cls [1, Dc]) of ``x`` [1, 3, H, W] exactly as ``fit3d probe`` extracted them
    (``fit3d.probe.features.extract_features``: per-layer tokens concatenated along D)."""
    from fit3d.probe.features import extract_features

    return extract_features(model, [x[0].permute(1, 2, 0).cpu().numpy()], layers=layers, device=model.device)


def compare_figure(image, original, finetuned, depth_probes: Mapping[str, DepthProbe] | None = None, *,
                   short_side: int = 448, max_side: int = 1344, panel_height: int | None = 320,
                   names: tuple[str, str] = ("original", "fine-tuned"),
                   probe_layers: Mapping[str, Sequence[int] | None] | None = None) -> np.ndarray:
    """Side-by-side panels [H, W, 3] uint8: image | PCA original | PCA fine-tuned | depth of each probe.

    image          [H, W, 3] uint8 or float in [0, 1], any size
    original, finetuned  Backbones (``.prepare``, ``.features``, ``.patch_size``) with the same patch size
    depth_probes   optional {"original" | "finetuned" | "concat": probe}; their maps share one colour scale.
                   "concat" reads ``fit3d.models.ConcatFeatures(original, finetuned)`` tokens (patch tokens
                   original first, [CLS] of the original), as ``fit3d probe --features concat``.
    probe_layers   optional {source: backbone layers} a probe was trained on (``fit3d probe --layers``)
    panel_height   display height of each panel (None: the model input height)
    """
    if original.patch_size != finetuned.patch_size:
        raise ValueError(f"compare_figure: patch sizes differ ({original.patch_size} vs {finetuned.patch_size})")
    x = prepare_image(image, original, short_side, max_side)                # [1, 3, H, W]
    H, W = x.shape[-2:]
    po, co = original.features(x)
    pf, cf = finetuned.features(x)
    pca_o, pca_f = pca_rgb([po[0].float().cpu(), pf[0].float().cpu()])
    panels = [to_uint8(x[0].permute(1, 2, 0).cpu().numpy()), upsample(pca_o, H, W), upsample(pca_f, H, W)]
    titles = ["image", f"PCA {names[0]}", f"PCA {names[1]}"]

    depths, depth_titles = [], []
    for source, probe in (depth_probes or {}).items():
        layers = (probe_layers or {}).get(source)
        if source == "original":
            patch, cls = (po, co) if layers is None else probe_features(original, x, layers)
        elif source == "finetuned":
            patch, cls = (pf, cf) if layers is None else probe_features(finetuned, x, layers)
        elif source == "concat":
            from fit3d.models import ConcatFeatures

            patch, cls = probe_features(ConcatFeatures(original, finetuned), x, layers)
        else:
            raise ValueError(f"compare_figure: depth probe source {source!r} is not one of {FEATURE_SOURCES}")
        depths.append(_depth_of(probe, patch, cls, (H, W)))
        depth_titles.append(f"depth: {dict(original=names[0], finetuned=names[1]).get(source, source)}")
    if depths:
        lo, hi = depth_range(depths)
        panels += [colorize_depth(d, lo, hi) for d in depths]
        titles += depth_titles
    height = panel_height or H
    fig = hstack(panels, titles, height=height)
    if depths:  # a colour bar for the shared depth scale, level with the panels
        fig = add_colorbar(fig, lo, hi, height)
    return fig
