"""A lifted scene built without optimisation, for tests and benchmarks of Stage 2.

Gaussians are back-projected from the training views' depth (one per ``stride`` pixels, isotropic,
sized to the pixel footprint); each carries ``f = Q^T x``, where ``x`` is the backbone's feature at its
pixel and ``Q`` [D, f] the top-f right singular vectors of the sampled features; the decoder's centre
tap is ``Q``. Rendered + decoded targets are then a multi-view blend of the backbone's own features
projected onto its f main directions: 3D-consistent, and different from the original features in a way
a fine-tuned backbone can learn. Written in the layout of :mod:`fit3d.lift.lifted`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fit3d.data import read_scene
from fit3d.errors import SceneError
from fit3d.io import read_json_dict, write_json
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.lifted import DECODER_FILE, GAUSSIANS_FILE, META_FILE
from fit3d.splat.gaussians import FeatureGaussians, rgb_to_sh_dc


def generated_with(scene_path) -> dict | None:
    """The generator record of a ``fit3d generate`` scene (its ``synthetic.json``), so that a room regenerated
    under the same folder with other settings does not pass for the lifted one; None for other scenes."""
    p = Path(scene_path) / "synthetic.json"
    return read_json_dict(p, "generated scene record") if p.exists() else None


@torch.no_grad()
def backprojected_lift(scene_path, backbone, out_dir, *, train_views: list[str], heldout_views: list[str],
                       resolution: tuple[int, int], layout: str = "auto", feature_dim: int = 64,
                       stride: int = 4, footprint: float = 1.5, opacity: float = 0.95,
                       model_path: str | None = None, seed: int = 0, feature_size: int | None = None) -> Path:
    """Write ``out_dir`` (gaussians.ply, decoder.safetensors, lift.json) for ``scene_path``.

    resolution (W, H): the "lift" resolution (views are read at it). feature_size: the backbone's input long
    side (the views read again at that size; None: the lift resolution itself, e.g. a 7 x 5 token grid at
    96 x 72, so the targets are the features of a small image). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    W, H = resolution
    scene = read_scene(scene_path, layout=layout, resolution=(W, H), names=list(train_views))
    views = scene.views
    if any(v.depth is None for v in views):
        raise SceneError(f"{scene_path}: back-projection needs depth for every training view")
    feature_views = views
    if feature_size:
        s = feature_size / max(W, H)
        feature_views = read_scene(scene_path, layout=layout, resolution=(round(W * s), round(H * s)),
                                   names=list(train_views), load_depth=False).views
    images = torch.stack([torch.from_numpy(v.image).permute(2, 0, 1) for v in feature_views])  # [V, 3, H', W']
    patch = backbone.features(backbone.prepare(images)).patch.float().cpu()  # [V, D, h, w]
    dense = F.interpolate(patch, size=(H, W), mode="bilinear", align_corners=False)  # [V, D, H, W]
    D = dense.shape[1]
    f = min(feature_dim, D)

    ys, xs = torch.meshgrid(torch.arange(stride // 2, H, stride), torch.arange(stride // 2, W, stride), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    means, colors, feats, sizes = [], [], [], []
    for i, v in enumerate(views):
        d = torch.from_numpy(v.depth)[ys, xs].double()
        ok = d > 0
        d = d[ok]
        pix = torch.stack([xs[ok], ys[ok]], 1).double() + 0.5  # [M, 2]
        means.append(torch.from_numpy(v.unproject(pix.numpy(), d.numpy())).float())
        K = v.K
        colors.append(torch.from_numpy(v.image)[ys[ok], xs[ok]])
        feats.append(dense[i, :, ys[ok], xs[ok]].T)  # [M, D]
        sizes.append((d / K[0, 0] * stride * footprint / 2).float())
    means, colors, feats, sizes = (torch.cat(a) for a in (means, colors, feats, sizes))
    if len(means) == 0:
        raise SceneError(f"{scene_path}: no valid depth in the training views")

    g = torch.Generator().manual_seed(seed)
    sample = feats[torch.randperm(len(feats), generator=g)[:20000]]
    Q = torch.linalg.svd(sample, full_matrices=False).Vh[:f].T.contiguous()  # [D, f]
    n = len(means)
    gaussians = FeatureGaussians(
        means=means, quats=torch.tensor([1.0, 0, 0, 0]).expand(n, 4).contiguous(),
        log_scales=sizes.log()[:, None].expand(n, 3).contiguous(),
        opacity_logits=torch.full((n,), math.log(opacity / (1 - opacity))),
        sh=rgb_to_sh_dc(colors)[:, None, :].contiguous(), features=(feats @ Q).contiguous(), sh_degree=0)
    decoder = FeatureDecoder(f, D)
    decoder.conv.weight.zero_()
    k = decoder.conv.kernel_size[0] // 2
    decoder.conv.weight[:, :, k, k] = Q

    settings = {"builder": "backprojected", "backbone": backbone.name, "model_path": model_path,
                "scene": str(Path(scene_path).resolve()), "layout": layout, "train_views": list(train_views),
                "heldout_views": list(heldout_views), "resolution": [int(W), int(H)], "feature_dim": f,
                "stride": stride, "footprint": footprint, "opacity": opacity, "seed": seed,
                **({"feature_size": int(feature_size)} if feature_size else {}),
                "source": generated_with(scene_path)}
    out_dir.mkdir(parents=True, exist_ok=True)
    gaussians.save_ply(out_dir / GAUSSIANS_FILE)
    decoder.save(out_dir / DECODER_FILE)
    write_json(out_dir / META_FILE, {
        "name": out_dir.name, "backbone": backbone.name, "model_path": model_path, "feature_dim": f,
        "resolution": [int(W), int(H)],
        "scene": {"path": str(Path(scene_path).resolve()), "layout": layout,
                  "train_views": list(train_views), "heldout_views": list(heldout_views)},
        "iterations": 0, "builder": "fit3d.lift.backprojected (depth back-projection, no optimisation)",
        "settings": settings, "num_gaussians": n, "explained_variance": float((sample @ Q).pow(2).sum() / sample.pow(2).sum()),
    })
    return out_dir
