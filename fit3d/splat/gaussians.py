"""Feature Gaussians: the 3D representation Stage 1 learns and Stage 2 renders.

Stored raw (pre-activation) like 3DGS: ``scales = exp(log_scales)``, ``opacities = sigmoid(opacity_logits)``,
colour from spherical harmonics (``rgb = SH(dirs) + 0.5``, clamped at 0). Saved as a 3DGS-compatible PLY
(x, y, z, nx, ny, nz, f_dc_*, f_rest_*, opacity, scale_*, rot_*) plus ``feat_0..feat_{F-1}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fit3d.errors import SceneError
from fit3d.io import atomic_path
from fit3d.splat.sh import eval_sh, num_sh_bases, rgb_to_sh_dc, sh_basis  # noqa: F401 (the SH API, also here)

@dataclass
class FeatureGaussians:
    """N feature Gaussians (raw parameters, any device).

    means          [N, 3]   world positions
    quats          [N, 4]   rotation (w, x, y, z), unnormalised
    log_scales     [N, 3]
    opacity_logits [N]
    sh             [N, K, 3] SH coefficients, K = (max_sh_degree+1)^2, sh[:, 0] is DC
    features       [N, F]   low-dimensional feature f
    """

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor
    features: Tensor
    sh_degree: int = 3  # active degree used when rendering colour

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        shapes = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        for k, s in shapes.items():
            if tuple(getattr(self, k).shape) != s:
                raise ValueError(f"FeatureGaussians.{k}: expected shape {s}, got {tuple(getattr(self, k).shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"FeatureGaussians.sh: expected [N, K, 3], got {tuple(self.sh.shape)}")
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(f"FeatureGaussians.features: expected [N, F], got {tuple(self.features.shape)}")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]

    @property
    def max_sh_degree(self) -> int:
        return int(math.isqrt(self.sh.shape[1])) - 1

    @property
    def scales(self) -> Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def colors(self, cam_center: Tensor, backend: str = "torch") -> Tensor:
        """[N, 3] view-dependent RGB for a camera at ``cam_center`` [3]; ``backend="numba"`` (CPU tensors): the
        fused kernel of :mod:`fit3d.splat.sh_numba`, held to this torch path."""
        degree = min(self.sh_degree, self.max_sh_degree)
        if backend == "numba":
            from fit3d.splat.sh_numba import sh_colors

            return sh_colors(degree, self.sh, self.means, cam_center)
        dirs = torch.nn.functional.normalize(self.means - cam_center, dim=-1)
        return torch.clamp_min(eval_sh(degree, self.sh, dirs) + 0.5, 0.0)

    def to(self, *args, **kwargs) -> "FeatureGaussians":
        return FeatureGaussians(*(getattr(self, k).to(*args, **kwargs) for k in
                                  ("means", "quats", "log_scales", "opacity_logits", "sh", "features")),
                                sh_degree=self.sh_degree)

    def detach(self) -> "FeatureGaussians":
        return FeatureGaussians(*(getattr(self, k).detach() for k in
                                  ("means", "quats", "log_scales", "opacity_logits", "sh", "features")),
                                sh_degree=self.sh_degree)

    def nbytes(self) -> int:
        return sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in
                   ("means", "quats", "log_scales", "opacity_logits", "sh", "features"))

    # ------------------------------------------------------------------ PLY I/O
    def save_ply(self, path) -> None:
        """Write a 3DGS-compatible binary PLY with extra ``feat_*`` fields, atomically."""
        from plyfile import PlyData, PlyElement

        n, k = len(self), self.sh.shape[1]
        sh = self.sh.detach().float().cpu().numpy()
        dc = sh[:, 0, :]  # [N, 3]
        rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)  # [N, 3*(K-1)] channel-major as 3DGS
        cols = {
            **{a: self.means[:, i] for i, a in enumerate("xyz")},
            **{f"n{a}": torch.zeros(n) for a in "xyz"},
        }
        arrays = {name: t.detach().float().cpu().numpy() for name, t in cols.items()}
        arrays.update({f"f_dc_{i}": dc[:, i] for i in range(3)})
        arrays.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
        arrays["opacity"] = self.opacity_logits.detach().float().cpu().numpy()
        ls = self.log_scales.detach().float().cpu().numpy()
        arrays.update({f"scale_{i}": ls[:, i] for i in range(3)})
        q = self.quats.detach().float().cpu().numpy()
        arrays.update({f"rot_{i}": q[:, i] for i in range(4)})
        f = self.features.detach().float().cpu().numpy()
        arrays.update({f"feat_{i}": f[:, i] for i in range(f.shape[1])})
        data = np.empty(n, dtype=[(name, "f4") for name in arrays])
        for name, a in arrays.items():
            data[name] = a
        el = PlyElement.describe(data, "vertex")
        with atomic_path(path) as tmp:
            PlyData([el], comments=[f"fit3d feature gaussians sh_degree={self.sh_degree} sh_bases={k}"]).write(str(tmp))

    @classmethod
    def load_ply(cls, path) -> "FeatureGaussians":
        """Read a PLY written by :meth:`save_ply` (or a plain 3DGS PLY: features then have F = 0)."""
        from plyfile import PlyData

        try:
            ply = PlyData.read(str(path))
        except FileNotFoundError:
            raise SceneError(f"{path}: Gaussian PLY not found") from None
        except Exception as e:  # plyfile raises several types for corrupt files
            raise SceneError(f"{path}: not a readable PLY ({e})") from None
        v = ply["vertex"].data
        names = v.dtype.names

        def stack(prefix):
            cols = sorted((n for n in names if n.startswith(prefix)), key=lambda s: int(s[len(prefix):]))
            return np.stack([v[c] for c in cols], axis=1).astype(np.float32) if cols else np.zeros((len(v), 0), np.float32)

        n = len(v)
        rest = stack("f_rest_")
        k = 1 + rest.shape[1] // 3
        sh = np.concatenate([stack("f_dc_")[:, None, :], rest.reshape(n, 3, k - 1).transpose(0, 2, 1)], axis=1)
        sh_degree = int(math.isqrt(k)) - 1
        for c in ply.comments:
            if "sh_degree=" in c:
                sh_degree = int(c.split("sh_degree=")[1].split()[0])
        t = torch.from_numpy
        return cls(means=t(np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)),
                   quats=t(stack("rot_")), log_scales=t(stack("scale_")),
                   opacity_logits=t(np.asarray(v["opacity"], np.float32)), sh=t(np.ascontiguousarray(sh)),
                   features=t(stack("feat_")), sh_degree=sh_degree)
