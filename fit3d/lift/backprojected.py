"""Stage 1 without optimisation (``LiftConfig.method = "backprojected"``): Gaussians back-projected from depth.

One Gaussian per ``stride`` pixels of every training view with valid depth, isotropic, sized to the pixel
footprint; each carries ``f = Q^T x``, where ``x`` is the backbone's feature at its pixel (its patch tokens
of the view at the lift resolution, bilinearly upsampled) and ``Q`` [D, f] the top-f right singular vectors
of a sample of those features; the decoder's centre tap is ``Q``. Rendered + decoded features are then a
multi-view blend of the backbone's own features projected onto its f main directions: 3D-consistent, and
different from the original features in a way a fine-tuned backbone can learn. Seconds per scene: the cheap
lift for tests and benchmarks of Stage 2. The Gaussians are written view by view in the training views' order;
lift.json's ``backprojected.view_gaussians`` counts each view's, so Stage 2 can leave a view's own Gaussians out of
its target (``FinetuneConfig.target_views = "others"``, :meth:`fit3d.finetune.store.SceneRef.view_rows`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fit3d.errors import SceneError
from fit3d.lift.context import LiftContext, LiftResult
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.init import scene_extent
from fit3d.models.backbone import using_precision
from fit3d.splat.gaussians import rgb_to_sh_dc


@torch.no_grad()
def backprojected_scene(ctx: LiftContext) -> LiftResult:
    """Stage 1 by ``method = "backprojected"`` (``ctx.backbone`` computes the features)."""
    cfg, bp = ctx.cfg, ctx.cfg.backprojected
    t0 = time.perf_counter()
    W, H = ctx.size
    views = [ctx.views[i] for i in ctx.train_idx]
    if any(v.depth is None for v in views):
        raise SceneError(f"{ctx.name}: backprojected needs depth for every training view")
    if bp.feature_input == "cache":  # the scene's tokens at LiftConfig.feature_size (e.g. 224: the Stage 2 input)
        patch = torch.stack([ctx.cache.grid(ctx.cache.index(v.name)) for v in views])  # [V, D, h, w]
    else:  # the backbone on each view at the render size (a 7 x 5 token grid at width 96)
        if ctx.backbone is None:
            raise ValueError("backprojected: the context carries no backbone")
        images = torch.stack([torch.from_numpy(v.image).permute(2, 0, 1) for v in views])  # [V, 3, H, W]
        with using_precision(ctx.backbone, (ctx.settings or {}).get("precision")):
            patch, _ = ctx.backbone.features(ctx.backbone.prepare(images))
        patch = patch.float().cpu()  # [V, D, h, w]
    dense = F.interpolate(patch, size=(H, W), mode="bilinear", align_corners=False)  # [V, D, H, W]
    D = dense.shape[1]
    f = min(cfg.feature_dim, D)

    s = bp.stride
    ys, xs = torch.meshgrid(torch.arange(s // 2, H, s), torch.arange(s // 2, W, s), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    means, colors, feats, sizes, counts = [], [], [], [], []
    for i, v in enumerate(views):
        d = torch.from_numpy(v.depth)[ys, xs].double()
        ok = d > 0
        d = d[ok]
        pix = torch.stack([xs[ok], ys[ok]], 1).double() + 0.5  # [M, 2]
        means.append(torch.from_numpy(v.unproject(pix.numpy(), d.numpy())).float())
        colors.append(torch.from_numpy(v.image)[ys[ok], xs[ok]])
        feats.append(dense[i, :, ys[ok], xs[ok]].T)  # [M, D]
        sizes.append((d / v.K[0, 0] * s * bp.footprint / 2).float())
        counts.append(int(ok.sum()))
    means, colors, feats, sizes = (torch.cat(a) for a in (means, colors, feats, sizes))
    if len(means) == 0:
        raise SceneError(f"{ctx.name}: no valid depth in the training views")

    g = torch.Generator().manual_seed(cfg.seed)
    sample = feats[torch.randperm(len(feats), generator=g)[:20000]]
    Q = torch.linalg.svd(sample, full_matrices=False).Vh[:f].T.contiguous()  # [D, f]
    n = len(means)
    params = {"means": means, "quats": torch.tensor([1.0, 0, 0, 0]).expand(n, 4).contiguous(),
              "log_scales": sizes.log()[:, None].expand(n, 3).contiguous(),
              "opacity_logits": torch.full((n,), math.log(bp.opacity / (1 - bp.opacity))),
              "sh_dc": rgb_to_sh_dc(colors)[:, None, :].contiguous(), "sh_rest": torch.zeros(n, 0, 3),
              "features": (feats @ Q).contiguous()}
    params = {k: nn.Parameter(v.to(ctx.device)) for k, v in params.items()}
    decoder = FeatureDecoder(f, D)
    decoder.conv.weight.zero_()
    k = decoder.conv.kernel_size[0] // 2
    decoder.conv.weight[:, :, k, k] = Q
    explained = float((sample @ Q).pow(2).sum() / sample.pow(2).sum())
    extent = scene_extent(views, means.numpy())
    return LiftResult(params, decoder.to(ctx.device), 0, extent, "depth-backprojected", [],
                      {"lift": time.perf_counter() - t0},
                      {"backprojected": {"explained_variance": explained, "view_gaussians": counts}})


def backprojected_lift(scene_path, backbone, out_dir, *, train_views: list[str], heldout_views: list[str],
                       resolution: tuple[int, int], feature_dim: int = 64, stride: int = 4, footprint: float = 1.5,
                       opacity: float = 0.95, model_path: str | None = None, seed: int = 0,
                       feature_size: int | None = None) -> Path:
    """``lift_scene`` with ``method = "backprojected"`` on the named views at ``resolution`` (W, H), with an
    already loaded ``backbone``: the lifted folder ``out_dir`` (returned). ``feature_size``: the backbone's input
    long side for the lifted features (None: the views at ``resolution`` themselves)."""
    from fit3d.lift.config import BackprojectedConfig, LiftConfig
    from fit3d.lift.stage import lift_scene

    cfg = LiftConfig(method="backprojected", backbone=backbone.name, model_path=model_path, feature_dim=feature_dim,
                     width=int(resolution[0]), height=int(resolution[1]), seed=seed, progress=False,
                     **({"feature_size": int(feature_size)} if feature_size else {}),
                     backprojected=BackprojectedConfig(stride=stride, footprint=footprint, opacity=opacity,
                                                       feature_input="cache" if feature_size else "render"))
    lift_scene(scene_path, cfg, out_dir, backbone=backbone, split=(list(train_views), list(heldout_views)))
    return Path(out_dir)
