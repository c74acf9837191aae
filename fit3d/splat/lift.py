"""Stage 1: lift a frozen backbone's 2D patch features into per-scene feature Gaussians (FiT3D).

Per scene: targets = the backbone's last-layer patch tokens for every view (cached, bilinearly upsampled
to the render resolution); Gaussians initialised from the scene's points, else back-projected depth
(voxel-downsampled), else random points in the camera frusta, with features at zero; trained with
0.8 L1(RGB) + 0.2 (1 - SSIM) + 1.0 L1(decoded features, targets) under 3DGS density control; every 8th
view is held out and only used for the reported metrics.

Python API: ``lift_scene(scene_or_path, LiftConfig(...), out_dir) -> lift.json dict``.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fit3d.config import check_choices
from fit3d.device import resolve_device
from fit3d.errors import NonFiniteError, SceneError
from fit3d.io import torch_save, write_json
from fit3d.splat.decoder import FeatureDecoder
from fit3d.splat.densify import (PARAM_NAMES, DensifySchedule, DensifyStats, densify_and_prune, param_group,
                                 reset_opacity)
from fit3d.splat.feature_cache import FeatureCache
from fit3d.splat.gaussians import FeatureGaussians, rgb_to_sh_dc
from fit3d.splat.lifted import DECODER_FILE, GAUSSIANS_FILE, META_FILE
from fit3d.splat.render import render
from fit3d.splat.ssim import ssim

CHECKPOINT_FILE = "checkpoint.pt"
STOP_AFTER_ENV = "FIT3D_LIFT_STOP_AFTER"  # testing aid: SIGKILL the process right after checkpointing iteration k


@dataclass
class LiftConfig:
    """Stage 1 settings. Learning rates: FiT3D's values are the reference (see the help of each)."""

    backbone: str = field(default="dinov2_small", metadata={"help": "registered backbone name"})
    model_path: str | None = field(default=None, metadata={
        "help": "local weights folder (default: env FIT3D_MODEL_PATH / the registry's default)"})
    feature_dim: int = field(default=64, metadata={"help": "per-Gaussian feature size f (FiT3D: 64)"})
    width: int = field(default=96, metadata={
        "help": "render width in pixels; CPU-friendly default: 96x72 keeps ~3x3 render pixels per DINOv2 token "
                "of the 448 px input (FiT3D renders 876x584 on a GPU)"})
    height: int | None = field(default=None, metadata={"help": "render height (default: keep the aspect ratio)"})
    feature_size: int = field(default=448, metadata={
        "help": "backbone input long side in pixels, snapped to the patch size (448 -> 32x24 DINOv2 tokens for 4:3)"})
    iterations: int = field(default=5000, metadata={
        "help": "training iterations, one view each (FiT3D: 30000); 5000 lift a 200-view scene at 96x72 in ~12 min "
                "on 2 CPU cores, features included (bench/lift_7scenes.py)"})
    heldout_every: int = field(default=8, metadata={"help": "every k-th view is held out (never trained on)"})
    max_frame: int | None = field(default=None, metadata={
        "help": "use only views whose frame number is <= this (7-Scenes convention: 398)"})
    # learning rates (Adam, eps 1e-15)
    lr_means: float = field(default=1.6e-4, metadata={"help": "initial xyz LR x scene extent (FiT3D 1.6e-4)"})
    lr_means_final: float = field(default=1.6e-6, metadata={"help": "final xyz LR x extent, exponential decay (FiT3D 1.6e-6)"})
    lr_sh_dc: float = field(default=2.5e-3, metadata={"help": "SH DC LR (FiT3D 2.5e-3)"})
    lr_sh_rest: float = field(default=1.25e-4, metadata={"help": "higher SH LR (FiT3D 1.25e-4)"})
    lr_opacity: float = field(default=0.05, metadata={"help": "opacity LR (FiT3D 0.05)"})
    lr_scaling: float = field(default=5e-3, metadata={"help": "log-scale LR (FiT3D 5e-3)"})
    lr_rotation: float = field(default=1e-3, metadata={"help": "rotation LR (FiT3D 1e-3)"})
    lr_features: float = field(default=2e-2, metadata={
        "help": "feature f LR (FiT3D 6.25e-5 over 30k GPU iterations; raised so features, which start at 0 and "
                "are unit-scale coefficients of the PCA-initialised decoder, converge in a few thousand CPU "
                "iterations)"})
    lr_features_final: float | None = field(default=None, metadata={
        "help": "feature LR at the end of the run, reached by log-linear decay from lr_features like 3DGS's xyz "
                "LR; the decoder LR decays by the same factor (None: constant, as FiT3D)"})
    lr_decoder: float = field(default=1e-3, metadata={"help": "decoder LR (FiT3D 6.25e-5; raised like lr_features)"})
    # loss
    lambda_dssim: float = field(default=0.2, metadata={"help": "weight of 1-SSIM in the colour loss (0.2)"})
    feature_weight: float = field(default=1.0, metadata={"help": "weight of the L1 feature loss (1.0)"})
    feature_loss_at: str = field(default="grid", metadata={
        "choices": ("grid", "render"), "help": "where the feature L1 is taken: grid (decoded render average-pooled to the backbone's patch "
                "grid, the tokens' own footprint and the held-out metric's) or render (targets bilinearly "
                "upsampled to the render size, as FiT3D)"})
    feature_grad_to_geometry: bool = field(default=False, metadata={
        "help": "let feature gradients reach means/scales/rotations/opacity (FiT3D: no)"})
    max_sh_degree: int = field(default=3, metadata={"help": "final SH degree, raised by 1 every iterations/30"})
    decoder_init: str = field(default="pca", metadata={
        "choices": ("pca", "random"),
        "help": "decoder start: pca (centre tap = the training tokens' top-f principal directions, scaled so "
                "f starts on a unit scale; the other taps zero) or random (PyTorch's default, as FiT3D)"})
    decoder_kernel: int = field(default=3, metadata={"help": "decoder Conv2d kernel size (FiT3D 3)"})
    # initialisation
    init_points: int = field(default=15000, metadata={"help": "at most this many initial Gaussians"})
    init_voxel: float = field(default=0.0, metadata={
        "help": "voxel size (m) for depth back-projection (0: grown until <= init_points)"})
    init_opacity: float = field(default=0.1, metadata={"help": "initial opacity (3DGS 0.1)"})
    # density control
    densify: bool = field(default=True, metadata={"help": "3DGS clone/split/prune, schedule scaled to iterations"})
    densify_grad_threshold: float = field(default=2e-4, metadata={"help": "view-space gradient threshold (NDC units)"})
    percent_dense: float = field(default=0.01, metadata={"help": "clone below / split above this x extent"})
    min_opacity: float = field(default=0.005, metadata={"help": "prune opacity below this"})
    max_screen_frac: float = field(default=0.15, metadata={
        "help": "prune Gaussians whose screen radius exceeds this fraction of the render width (3DGS: 20 px at "
                "~1000 px, tuned for millions of Gaussians; the CPU budgets here use far fewer, larger ones)"})
    max_gaussians: int = field(default=25000, metadata={"help": "cap on the number of Gaussians (CPU budget)"})
    # run
    checkpoint_every: int = field(default=500, metadata={"help": "checkpoint period in iterations (0: never)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto / cpu / cuda[:i]"})
    raster_backend: str = field(default="auto", metadata={"help": "fit3d.splat.rasterize backend"})
    pca_views: int = field(default=2, metadata={"help": "held-out views in heldout_pca.png (0: none)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def render_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) for source images of ``width`` x ``height``."""
        return self.width, self.height or max(1, round(self.width * height / width))


# ------------------------------------------------------------------ scene preparation
def split_views(names: list[str], every: int) -> tuple[list[int], list[int]]:
    """(train, heldout) indices: every ``every``-th view (index % every == 0) is held out."""
    held = [i for i in range(len(names)) if every > 0 and i % every == 0]
    return [i for i in range(len(names)) if i not in set(held)], held


def camera_extent(c2ws: np.ndarray) -> float:
    """3DGS's scene radius: 1.1 x the largest camera-centre distance from their mean. c2ws [V, 4, 4]."""
    c = c2ws[:, :3, 3]
    return float(1.1 * np.linalg.norm(c - c.mean(0), axis=1).max())


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Average points [P, 3] and colours [P, 3] per voxel of size ``voxel``."""
    q = np.floor((points - points.min(0)) / voxel).astype(np.int64)  # [P, 3] >= 0
    dims = q.max(0) + 1
    key = (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]  # one int64 per voxel: fast 1-D unique
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    p = np.stack([np.bincount(inv, points[:, i], len(counts)) for i in range(3)], 1)
    c = np.stack([np.bincount(inv, colors[:, i], len(counts)) for i in range(3)], 1)
    return (p / counts[:, None]).astype(np.float32), (c / counts[:, None]).astype(np.float32)


def backproject_depth(views) -> tuple[np.ndarray, np.ndarray]:
    """World points [P, 3] and colours [P, 3] from every view's valid depth pixels."""
    pts, cols = [], []
    for v in views:
        if v.depth is None:
            continue
        ys, xs = np.nonzero(v.depth > 0)
        if len(ys) == 0:
            continue
        pts.append(v.unproject(np.stack([xs + 0.5, ys + 0.5], 1), v.depth[ys, xs]))
        cols.append(v.image[ys, xs])
    if not pts:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    return np.concatenate(pts).astype(np.float32), np.concatenate(cols).astype(np.float32)


def initial_points(views, points, points_rgb, cfg: LiftConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(points [P, 3], colours [P, 3], source) with source in points / depth / random.

    views: the training views; points [P, 3] / points_rgb [P, 3]: the scene's points or None."""
    if points is not None and len(points) > 0:
        pts = np.asarray(points, np.float32)
        cols = np.asarray(points_rgb, np.float32) if points_rgb is not None else np.full_like(pts, 0.5)
        source = "points"
    else:
        pts, cols = backproject_depth(views)
        source = "depth"
        if len(pts) > 0:
            voxel = cfg.init_voxel or float(np.linalg.norm(pts.max(0) - pts.min(0))) / 1024
            while True:
                p, c = voxel_downsample(pts, cols, voxel)
                if cfg.init_voxel or len(p) <= cfg.init_points:
                    break
                # surfaces: the count falls ~ with the voxel area; aim just under the cap
                voxel *= max(1.1, 1.05 * math.sqrt(len(p) / cfg.init_points))
            pts, cols = p, c
    if len(pts) == 0:  # last resort: uniform in the training frusta between 0.1 and 2 x extent deep
        source = "random"
        n = cfg.init_points
        ext = max(camera_extent(np.stack([v.c2w for v in views])), 1.0)
        vi = rng.integers(0, len(views), n)
        pts = np.empty((n, 3), np.float32)
        for j, v in enumerate(views):
            sel = vi == j
            m = int(sel.sum())
            u, w = rng.uniform(0, v.width, m), rng.uniform(0, v.height, m)
            z = rng.uniform(0.1, 2 * ext, m)
            pc = np.stack([(u - v.K[0, 2]) / v.K[0, 0] * z, (w - v.K[1, 2]) / v.K[1, 1] * z, z], 1)
            pts[sel] = pc @ v.c2w[:3, :3].T + v.c2w[:3, 3]
        cols = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    if len(pts) > cfg.init_points:
        keep = rng.choice(len(pts), cfg.init_points, replace=False)
        pts, cols = pts[keep], cols[keep]
    return pts, cols, source


def init_params(points: np.ndarray, colors: np.ndarray, cfg: LiftConfig, device) -> dict[str, nn.Parameter]:
    """Raw 3DGS parameters: scale = RMS distance to the 3 nearest neighbours, identity rotation,
    opacity ``init_opacity``, SH DC from colour, features zero."""
    from scipy.spatial import cKDTree

    n = len(points)
    k = min(4, n)
    d, _ = cKDTree(points).query(points, k=k)
    d = np.asarray(d).reshape(n, k)[:, 1:] if k > 1 else np.ones((n, 1))
    dist = np.sqrt(np.maximum((d ** 2).mean(1), 1e-7)).astype(np.float32)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    kb = (cfg.max_sh_degree + 1) ** 2
    o = cfg.init_opacity
    p = {
        "means": t(points),
        "quats": t(np.tile([1.0, 0, 0, 0], (n, 1))),
        "log_scales": t(np.log(dist))[:, None].repeat(1, 3),
        "opacity_logits": torch.full((n,), math.log(o / (1 - o)), device=device),
        "sh_dc": rgb_to_sh_dc(t(colors))[:, None, :],
        "sh_rest": torch.zeros(n, kb - 1, 3, device=device),
        "features": torch.zeros(n, cfg.feature_dim, device=device),
    }
    return {k: nn.Parameter(v.contiguous()) for k, v in p.items()}


@torch.no_grad()
def pca_init_decoder(decoder: FeatureDecoder, cache: FeatureCache, names: list[str], max_tokens: int = 100_000,
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


def as_gaussians(params: dict, sh_degree: int) -> FeatureGaussians:
    return FeatureGaussians(params["means"], params["quats"], params["log_scales"], params["opacity_logits"],
                            torch.cat([params["sh_dc"], params["sh_rest"]], 1), params["features"], sh_degree=sh_degree)


def make_optimizer(params: dict, cfg: LiftConfig, extent: float) -> torch.optim.Adam:
    lrs = {"means": cfg.lr_means * extent, "quats": cfg.lr_rotation, "log_scales": cfg.lr_scaling,
           "opacity_logits": cfg.lr_opacity, "sh_dc": cfg.lr_sh_dc, "sh_rest": cfg.lr_sh_rest,
           "features": cfg.lr_features}
    return torch.optim.Adam([{"params": [params[k]], "lr": lrs[k], "name": k} for k in PARAM_NAMES], lr=0.0, eps=1e-15)


def _log_linear(it: int, iterations: int, start: float, final: float) -> float:
    """3DGS's exponential (log-linear) decay from ``start`` to ``final`` over ``iterations``."""
    t = min(max(it / max(iterations, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(start) + t * math.log(final))


def means_lr(it: int, cfg: LiftConfig, extent: float) -> float:
    """lr_means -> lr_means_final over the run, times the scene extent (3DGS)."""
    return extent * _log_linear(it, cfg.iterations, cfg.lr_means, cfg.lr_means_final)


def features_lr(it: int, cfg: LiftConfig) -> float:
    """lr_features decayed log-linearly to lr_features_final over the run (constant when that is None)."""
    if cfg.lr_features_final is None:
        return cfg.lr_features
    return _log_linear(it, cfg.iterations, cfg.lr_features, cfg.lr_features_final)


# ------------------------------------------------------------------ metrics
def pose_distance(a: np.ndarray, b: np.ndarray, extent: float) -> float:
    """Camera-centre distance plus rotation angle (rad) x half the scene extent. a, b [4, 4] c2w."""
    r = a[:3, :3].T @ b[:3, :3]
    ang = math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2)))
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3]) + 0.5 * extent * ang)


def _cos(a: Tensor, b: Tensor) -> float:
    """Mean cosine over the grid. a, b [D, h, w] (b may be [D, 1, 1])."""
    return float(F.cosine_similarity(a, b.expand_as(a), dim=0).mean())


@torch.no_grad()
def evaluate_heldout(params: dict, decoder: FeatureDecoder, views, train_idx: list[int], held_idx: list[int],
                     cache: FeatureCache, sh_degree: int, size: tuple[int, int], extent: float,
                     backend: str = "auto", n_pca: int = 0) -> tuple[dict, list]:
    """Held-out metrics and (for the first ``n_pca`` views) (image, target grid, rendered grid) triples."""
    W, H = size
    dev = params["means"].device
    g = as_gaussians({k: v.detach() for k, v in params.items()}, sh_degree)
    train_grids = [cache.grid(cache.index(views[i].name)) for i in train_idx]
    mean_feat = torch.stack([t.mean((1, 2)) for t in train_grids]).mean(0)[:, None, None]  # [D, 1, 1]
    psnrs, absrels, cos, cos_mean, cos_near, pca = [], [], [], [], [], []
    for j, i in enumerate(held_idx):
        v = views[i]
        r = render(g, v.K, v.c2w, W, H, with_features=True, backend=backend)
        mse = float(((r.rgb.clamp(0, 1) - torch.as_tensor(v.image, device=dev)) ** 2).mean())
        psnrs.append(-10 * math.log10(max(mse, 1e-10)))
        if v.depth is not None:
            gt = torch.as_tensor(v.depth, device=dev)
            ok = (gt > 0) & (r.alpha > 0.5)
            if bool(ok.any()):
                absrels.append(float(((r.depth[ok] - gt[ok]).abs() / gt[ok]).mean()))  # depth: expected depth
        tgt = cache.grid(cache.index(v.name), dev)  # [D, h, w]
        dec = decoder(r.features.permute(2, 0, 1)[None])  # [1, D, H, W]
        rend = F.adaptive_avg_pool2d(dec, tgt.shape[-2:])[0]  # [D, h, w] at the patch grid
        cos.append(_cos(rend, tgt))
        cos_mean.append(_cos(tgt, mean_feat.to(dev)))
        near = min(range(len(train_idx)), key=lambda k: pose_distance(views[train_idx[k]].c2w, v.c2w, extent))
        cos_near.append(_cos(train_grids[near].to(dev), tgt))
        if j < n_pca:
            pca.append((v.image, tgt.cpu(), rend.cpu()))
    m = lambda x: float(np.mean(x)) if x else None  # noqa: E731
    return {"psnr": m(psnrs), "depth_abs_rel": m(absrels), "feature_cosine": m(cos),
            "baseline_mean_cosine": m(cos_mean), "baseline_nearest_cosine": m(cos_near),
            "views": len(held_idx)}, pca


def save_pca_figure(path, triples) -> None:
    """Rows: held-out image | backbone features | rendered decoded features (shared PCA basis)."""
    import cv2
    from PIL import Image

    from fit3d.io import atomic_path
    from fit3d.viz.pca import pca_rgb

    if not triples:
        return
    maps = pca_rgb([m for _, t, r in triples for m in (t, r)])
    rows = []
    h = 160
    for k, (img, _, _) in enumerate(triples):
        w = round(h * img.shape[1] / img.shape[0])
        tiles = [(np.clip(img, 0, 1) * 255).astype(np.uint8)] + maps[2 * k:2 * k + 2]
        tiles = [cv2.resize(t, (w, h), interpolation=cv2.INTER_NEAREST if t.shape[0] < h else cv2.INTER_AREA)
                 for t in tiles]
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(rows, 0)).save(tmp, format="PNG")


# ------------------------------------------------------------------ the run
class _Terminate:
    """Turns SIGTERM into a flag the loop checks (it then checkpoints and stops)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _load_backbone(cfg: LiftConfig, device):
    from fit3d.models import load_backbone

    return load_backbone(cfg.backbone, model_path=cfg.model_path, device=str(device))


def _read_scene(path, cfg: LiftConfig):
    from fit3d.data import read_scene

    names = None
    if cfg.max_frame is not None:
        from fit3d.data.readers import frame_number

        names = lambda n: frame_number(n) <= cfg.max_frame  # noqa: E731
    return read_scene(path, names=names)


def lift_scene(scene_or_path, cfg: LiftConfig | None = None, out_dir=".", *, backbone=None,
               name: str | None = None) -> dict:
    """Lift one scene into ``out_dir`` (the scene's own folder; files gaussians.ply, decoder.safetensors,
    lift.json written last). Resumes from ``out_dir/checkpoint.pt`` when present.

    scene_or_path: a ``Scene`` or a folder for ``fit3d.data.read_scene``. ``backbone``: an already loaded
    backbone (else ``load_backbone(cfg.backbone, cfg.model_path)``). Returns the lift.json dict.
    """
    cfg = cfg or LiftConfig()
    check_choices(cfg)
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if isinstance(scene_or_path, (str, os.PathLike)):
        scene = _read_scene(scene_or_path, cfg)
        src_path, layout = str(Path(scene_or_path).resolve()), scene.meta.get("layout", "auto")
    else:
        scene = scene_or_path
        if cfg.max_frame is not None:
            from fit3d.data.readers import frame_number

            scene = scene.select(lambda n: frame_number(n) <= cfg.max_frame)
        src_path, layout = scene.source, scene.meta.get("layout", "auto")
    name = name or scene.name
    if len(scene) < 2:
        raise SceneError(f"{src_path or name}: need at least 2 views to lift (one is held out), got {len(scene)}")
    names = [v.name for v in scene.views]
    train_idx, held_idx = split_views(names, cfg.heldout_every)
    if not train_idx:
        raise SceneError(f"{src_path or name}: no training views left after holding out every {cfg.heldout_every}th")
    timings: dict[str, float] = {"read": time.perf_counter() - t_start}

    # Targets, computed on the source-resolution images and cached.
    t0 = time.perf_counter()
    if backbone is None:
        backbone = _load_backbone(cfg, device)
    cache = FeatureCache.build(out / "cache" / f"{cfg.backbone}-{cfg.feature_size}.npy", scene.views, backbone,
                               long_side=cfg.feature_size, backbone_name=cfg.backbone, progress=cfg.progress)
    timings["features"] = time.perf_counter() - t0

    W, H = cfg.render_size(scene.views[0].width, scene.views[0].height)
    views = [v.resized(W, H) for v in scene.views]
    points, points_rgb = scene.points, scene.points_rgb
    del scene  # the source-resolution images are no longer needed (when read here)
    c2ws = np.stack([views[i].c2w for i in train_idx])
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    ckpt_path = out / CHECKPOINT_FILE
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False) if ckpt_path.exists() else None
    if ckpt is not None and (ckpt.get("train_views") != [names[i] for i in train_idx]
                             or ckpt.get("config", {}).get("iterations") != cfg.iterations
                             or ckpt.get("config", {}).get("feature_dim") != cfg.feature_dim):
        ckpt = None  # a checkpoint of another run: start over
    if ckpt is not None:
        params = {k: nn.Parameter(v.to(device)) for k, v in ckpt["params"].items()}
        extent, init_source = ckpt["extent"], ckpt["init_source"]
    else:
        pts, cols, init_source = initial_points([views[i] for i in train_idx], points, points_rgb, cfg, rng)
        extent = camera_extent(c2ws)
        # Cameras that barely move (turntable-free captures) give a near-zero radius: floor it at a
        # tenth of the initial point cloud's size so the xyz LR and the split threshold stay sensible.
        extent = max(extent, 0.1 * float(np.linalg.norm(pts.max(0) - pts.min(0))), 1e-3)
        params = init_params(pts, cols, cfg, device)
    optimizer = make_optimizer(params, cfg, extent)
    decoder = FeatureDecoder(cfg.feature_dim, cache.dim, cfg.decoder_kernel).to(device)
    if cfg.decoder_init == "pca":  # (a resumed run loads its decoder below)
        pca_init_decoder(decoder, cache, [names[i] for i in train_idx], seed=cfg.seed)
    dec_opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr_decoder, eps=1e-15)
    stats = DensifyStats(len(params["means"]), device)
    sched = DensifySchedule.scaled(cfg.iterations)
    sh_interval = max(1, cfg.iterations // 30)
    max_screen = cfg.max_screen_frac * W
    start_it, history, train_s, resumed_from = 0, [], 0.0, None
    perm: list[int] = []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        decoder.load_state_dict(ckpt["decoder"])
        dec_opt.load_state_dict(ckpt["decoder_optimizer"])
        stats.load_state_dict({k: v.to(device) for k, v in ckpt["stats"].items()})
        gen.set_state(ckpt["generator"])
        rng.bit_generator.state = ckpt["np_rng"]
        start_it, history, train_s, perm = ckpt["iteration"], ckpt["history"], ckpt["train_seconds"], ckpt["perm"]
        resumed_from = start_it
    del ckpt

    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)

    def save_checkpoint(it: int) -> None:
        torch_save({"iteration": it, "params": {k: v.detach() for k, v in params.items()},
                    "optimizer": optimizer.state_dict(), "decoder": decoder.state_dict(),
                    "decoder_optimizer": dec_opt.state_dict(), "stats": stats.state_dict(),
                    "generator": gen.get_state(), "np_rng": rng.bit_generator.state, "history": history,
                    "train_seconds": train_s + time.perf_counter() - t0, "perm": perm, "extent": extent, "init_source": init_source,
                    "train_views": [names[i] for i in train_idx], "config": asdict(cfg)}, ckpt_path)

    from tqdm import tqdm

    t0 = time.perf_counter()
    run_loss = {"loss": 0.0, "rgb": 0.0, "feat": 0.0, "n": 0}
    bar = tqdm(range(start_it, cfg.iterations), desc=f"lift {name}", disable=not cfg.progress, unit="it",
               initial=start_it, total=cfg.iterations)
    with _Terminate() as term:
        for it in bar:
            if not perm:
                perm = torch.randperm(len(train_idx), generator=gen).tolist()
            vi = train_idx[perm.pop()]
            v = views[vi]
            param_group(optimizer, "means")["lr"] = means_lr(it, cfg, extent)
            if cfg.lr_features_final is not None:  # the decoder's LR follows the features' by the same factor
                lr_f = features_lr(it, cfg)
                param_group(optimizer, "features")["lr"] = lr_f
                dec_opt.param_groups[0]["lr"] = cfg.lr_decoder * lr_f / cfg.lr_features
            sh_degree = min(cfg.max_sh_degree, it // sh_interval)
            g = as_gaussians(params, sh_degree)
            r = render(g, v.K, v.c2w, W, H, detach_geometry_for_features=not cfg.feature_grad_to_geometry,
                       backend=cfg.raster_backend)
            gt = torch.as_tensor(v.image, device=device)
            l_rgb = (1 - cfg.lambda_dssim) * (r.rgb - gt).abs().mean() + cfg.lambda_dssim * (1 - ssim(r.rgb, gt))
            dec = decoder(r.features.permute(2, 0, 1)[None])  # [1, D, H, W]
            ti = cache.index(v.name)
            if cfg.feature_loss_at == "grid":
                tgt = cache.grid(ti, device)  # [D, h, w]
                l_feat = (F.adaptive_avg_pool2d(dec, tgt.shape[-2:])[0] - tgt).abs().mean()
            else:
                l_feat = (dec - cache.target(ti, W, H, device)).abs().mean()
            loss = l_rgb + cfg.feature_weight * l_feat
            if not torch.isfinite(loss):
                raise NonFiniteError(f"lift {name}: loss became {float(loss)} at iteration {it} (view {v.name})")
            loss.backward()
            with torch.no_grad():
                if cfg.densify and it < sched.stop:
                    vm = torch.linalg.inv(torch.as_tensor(v.c2w, dtype=torch.float32, device=device))
                    stats.update(params["means"].detach(), params["means"].grad, params["log_scales"].detach().exp().max(1).values,
                                 vm, torch.as_tensor(v.K, dtype=torch.float32, device=device), W, H)
            optimizer.step()
            dec_opt.step()
            optimizer.zero_grad(set_to_none=True)
            dec_opt.zero_grad(set_to_none=True)
            done = it + 1
            if cfg.densify:
                if sched.densify_now(done):
                    densify_and_prune(params, optimizer, stats, grad_threshold=cfg.densify_grad_threshold,
                                      extent=extent, percent_dense=cfg.percent_dense, min_opacity=cfg.min_opacity,
                                      max_screen_size=max_screen if done > sched.opacity_reset_interval else None,
                                      max_gaussians=cfg.max_gaussians, generator=gen)
                if sched.reset_now(done):
                    reset_opacity(params, optimizer)
            run_loss["loss"] += float(loss.detach())
            run_loss["rgb"] += float(l_rgb.detach())
            run_loss["feat"] += float(l_feat.detach())
            run_loss["n"] += 1
            if done % max(1, cfg.iterations // 50) == 0 or done == cfg.iterations:
                n = run_loss.pop("n")
                history.append({"iteration": done, **{k: v / n for k, v in run_loss.items()},
                                "gaussians": len(params["means"])})
                run_loss = {"loss": 0.0, "rgb": 0.0, "feat": 0.0, "n": 0}
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", feat=f"{history[-1]['feat']:.3f}",
                                n=len(params["means"]))
            stop = term.requested or done == stop_after
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations) or stop:
                save_checkpoint(done)
            if done == stop_after:
                os.kill(os.getpid(), signal.SIGKILL)  # testing aid: a hard kill right after the checkpoint
            if term.requested:
                train_s += time.perf_counter() - t0
                raise KeyboardInterrupt(f"lift {name}: stopped by SIGTERM at iteration {done}; checkpoint saved")
    bar.close()
    train_s += time.perf_counter() - t0
    timings["train"] = train_s

    t0 = time.perf_counter()
    sh_degree = min(cfg.max_sh_degree, cfg.iterations // sh_interval)
    decoder.eval()
    heldout, pca = evaluate_heldout(params, decoder, views, train_idx, held_idx, cache, sh_degree, (W, H), extent,
                                    cfg.raster_backend, cfg.pca_views) if held_idx else ({}, [])
    timings["eval"] = time.perf_counter() - t0
    if pca:
        save_pca_figure(out / "heldout_pca.png", pca)

    g = as_gaussians({k: v.detach().cpu() for k, v in params.items()}, sh_degree)
    g.save_ply(out / GAUSSIANS_FILE)
    decoder.cpu().save(out / DECODER_FILE)
    timings["total"] = time.perf_counter() - t_start
    meta = {
        "name": name, "backbone": cfg.backbone, "model_path": cfg.model_path, "feature_dim": cfg.feature_dim,
        "resolution": [W, H],
        "scene": {"path": src_path, "layout": layout, "train_views": [names[i] for i in train_idx],
                  "heldout_views": [names[i] for i in held_idx]},
        "iterations": cfg.iterations, "timings": timings, "heldout": heldout,
        "gaussians": len(g), "init": init_source, "extent": extent, "resumed_from": resumed_from,
        "target_grid": list(cache.grid_size), "target_dim": cache.dim,
        "history": history, "config": asdict(cfg),
    }
    write_json(out / META_FILE, meta)  # last: its presence marks the lift finished
    ckpt_path.unlink(missing_ok=True)
    return meta
