"""``fit3d export LIFTED_DIR --colors pca --out scene_pca.ply``: a standard 3DGS PLY of a lifted scene whose
colours show its feature field, so any Gaussian-splat viewer shows the features.

The Gaussians keep their geometry (positions, scales, rotations, opacities); their SH DC colour becomes the
PCA colour of their decoded feature (:mod:`fit3d.view.splats`; ``--colors rgb`` keeps the scene's own), the
higher SH bands are zeroed (a feature has no view-dependent colour) and the ``feat_*`` columns are left
out: x, y, z, nx, ny, nz, f_dc_0..2, f_rest_*, opacity, scale_0..2, rot_0..3, as 3DGS writes them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.errors import Fit3DError, SceneError
from fit3d.lift.lifted import is_lifted, load_lifted
from fit3d.splat.gaussians import FeatureGaussians, rgb_to_sh_dc
from fit3d.view.splats import basis_colors, fit_feature_pca, splat_arrays

COLORS = ("pca", "rgb")


@dataclass
class ExportConfig:
    out: str = field(default="", metadata={"help": "the PLY file to write (required)"})
    colors: str = field(default="pca", metadata={"choices": COLORS, "help": "pca: feature PCA colours; rgb: the "
                                                                           "scene's own colours (features dropped)"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out when it exists"})


def export_ply(lifted_dir, out, colors: str = "pca") -> FeatureGaussians:
    """Write ``out`` from the lifted scene in ``lifted_dir``; returns the written Gaussians."""
    if colors not in COLORS:
        raise Fit3DError(f"--colors {colors}: one of {', '.join(COLORS)}")
    if not is_lifted(lifted_dir) and not Path(lifted_dir).is_dir():
        raise SceneError(f"{lifted_dir}: no such lifted scene folder")
    lifted = load_lifted(lifted_dir)
    g = lifted.gaussians.detach().to("cpu")
    if len(g) == 0:
        raise SceneError(f"{lifted_dir}: the lifted scene holds no Gaussians")
    sh = torch.zeros_like(g.sh) if colors == "pca" else g.sh.clone()
    if colors == "pca":
        if g.feature_dim == 0 or g.feature_dim != lifted.decoder.in_dim:
            raise SceneError(f"{lifted_dir}: its Gaussians carry {g.feature_dim} features, its decoder reads "
                             f"{lifted.decoder.in_dim}; re-lift the scene")
        sp = splat_arrays(g, lifted.decoder)
        rgb = torch.from_numpy(basis_colors(fit_feature_pca([sp]), sp))
        sh[:, 0] = rgb_to_sh_dc(rgb)
    out_g = FeatureGaussians(g.means, g.quats, g.log_scales, g.opacity_logits, sh,
                             torch.zeros(len(g), 0), sh_degree=g.sh_degree if colors == "rgb" else 0)
    out_g.save_ply(out)
    return out_g


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lifted", type=Path, help="a lifted scene folder (`fit3d lift` output)")
    add_config_arguments(parser, ExportConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(ExportConfig, args)
    if not cfg.out:
        raise Fit3DError("fit3d export: --out FILE.ply is required")
    out = Path(cfg.out)
    if out.suffix.lower() != ".ply":
        raise Fit3DError(f"--out {out}: give a .ply file name")
    if out.resolve() == (Path(args.lifted) / "gaussians.ply").resolve():
        raise Fit3DError(f"--out {out}: that is the lifted scene's own gaussians.ply; write elsewhere")
    if out.exists() and not cfg.overwrite:
        raise Fit3DError(f"--out {out}: exists; pass --overwrite to replace it")
    g = export_ply(args.lifted, out, cfg.colors)
    print(f"wrote {out}: {len(g):,} Gaussians coloured by {'feature PCA' if cfg.colors == 'pca' else 'RGB'}")
    return 0
