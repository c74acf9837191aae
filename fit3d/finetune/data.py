"""Stage 2 data: (scene, view) pairs of all lifted scenes, rendered into 3D-aware targets on the fly.

Every scene's Gaussians and decoder are loaded once into CPU memory (never onto an accelerator
wholesale: FiT3D's own code puts all scenes on GPU 0). DataLoader workers are forked from the
process holding them, so they share those pages copy-on-write instead of loading them again.

One item (``RenderedViews[i]``)::

    image  [3, H, W]  float32 in [0, 1]  the view at the training resolution (a patch multiple)
    target [D, h, w]  float32            decoded rendered features, bilinearly resized to the patch grid
                                         (rendered at the scene's lift resolution unless target_at="train")
    mask   [h, w]     bool               tokens where the scene was rendered (opacity >= threshold)
    alpha  [h, w]     float32 in [0, 1]  rendered opacity at the patch grid (the anchor term weights by 1 - alpha)
    spread [h, w]     float32 in [0, 1]  only with ``with_spread``: how much the Gaussians composited there
                                         disagree (:func:`feature_spread`), area-averaged to the patch grid
    scene, index      int                which scene / which entry, for error messages
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from fit3d.errors import SceneError
from fit3d.finetune.config import TARGET_AT
from fit3d.lift.decoder import FeatureDecoder
from fit3d.splat.gaussians import FeatureGaussians
from fit3d.lift.lifted import LiftedScene, load_lifted

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- scenes
@dataclass
class SceneMemory:
    """What the lifted scenes cost in CPU memory."""

    num_scenes: int
    num_gaussians: int
    gaussian_bytes: int  # all scenes' Gaussian tensors
    decoder_bytes: int

    @property
    def bytes_per_gaussian(self) -> float:
        return self.gaussian_bytes / max(1, self.num_gaussians)

    def as_dict(self) -> dict:
        return {"num_scenes": self.num_scenes, "num_gaussians": self.num_gaussians,
                "bytes_per_gaussian": self.bytes_per_gaussian, "gaussian_bytes": self.gaussian_bytes,
                "decoder_bytes": self.decoder_bytes}

    def __str__(self) -> str:
        return (f"{self.num_scenes} scene(s), {self.num_gaussians:,} Gaussians x "
                f"{self.bytes_per_gaussian:.0f} B = {self.gaussian_bytes / 2**20:.1f} MiB "
                f"(+ decoders {self.decoder_bytes / 2**20:.1f} MiB) in CPU memory")


def load_scenes(dirs, embed_dim: int | None = None, backbone: str | None = None) -> list[LiftedScene]:
    """Load each lifted scene once onto the CPU; check its decoder matches the backbone width."""
    scenes = []
    for d in dirs:
        s = load_lifted(d, map_location="cpu")
        g = s.gaussians
        # Gaussians are only read from here on: drop autograd and keep them contiguous float32.
        s.gaussians = type(g)(*(getattr(g, k).detach().float().contiguous() for k in
                                ("means", "quats", "log_scales", "opacity_logits", "sh", "features")),
                              sh_degree=g.sh_degree)
        s.decoder.requires_grad_(False).eval()
        if embed_dim is not None and s.decoder.out_dim != embed_dim:
            raise SceneError(f"{s.path}: decoder outputs {s.decoder.out_dim} channels but the backbone has "
                             f"{embed_dim} (lifted with {s.meta.get('backbone')!r}, fine-tuning {backbone!r})")
        if s.gaussians.feature_dim != s.decoder.in_dim:
            raise SceneError(f"{s.path}: Gaussians carry {s.gaussians.feature_dim} features but the decoder "
                             f"expects {s.decoder.in_dim}")
        scenes.append(s)
    if not scenes:
        raise SceneError("no lifted scenes given")
    return scenes


def scene_memory(scenes: list[LiftedScene]) -> SceneMemory:
    return SceneMemory(
        num_scenes=len(scenes), num_gaussians=sum(len(s.gaussians) for s in scenes),
        gaussian_bytes=sum(s.gaussians.nbytes() for s in scenes),
        decoder_bytes=sum(p.numel() * p.element_size() for s in scenes for p in s.decoder.parameters()))


def training_resolution(lift_resolution: tuple[int, int], patch_size: int,
                        resolution: list[int] | tuple[int, int] | None = None) -> tuple[int, int]:
    """(W, H) rendered and fed to the backbone: ``resolution`` or the lift one, down to a patch multiple."""
    w, h = resolution if resolution else lift_resolution
    w, h = (int(w) // patch_size) * patch_size, (int(h) // patch_size) * patch_size
    if w < patch_size or h < patch_size:
        raise SceneError(f"resolution {w}x{h} is smaller than one {patch_size}px patch")
    return w, h


# ----------------------------------------------------------------------------------------- decoding
def decode_to_grid(decoder: FeatureDecoder, feats: Tensor, size: tuple[int, int], pool: str = "bilinear") -> Tensor:
    """``interpolate(decoder(feats), size, bilinear)`` (``pool="area"``: ``adaptive_avg_pool2d(decoder(feats),
    size)``) without decoding every pixel.

    feats [B, f, H, W] -> [B, D, h, w]. Exact (up to float rounding): the decoder is one zero-padded
    k x k convolution and bilinear resizing is linear and acts per channel, so resizing the k*k
    shifted copies of the f-dim input and applying the kernel taps on the grid gives the same result
    as FiT3D's decode-at-full-resolution-then-resize, at ~(H*W)/(h*w*k*k/f*D) of the cost
    (hand-written because no library fuses a convolution with a following resize). Area pooling is linear
    and per channel too.
    """
    conv = decoder.conv
    k = conv.kernel_size[0]
    p = conv.padding[0]
    resize = (lambda x: F.adaptive_avg_pool2d(x, size)) if pool == "area" else \
        (lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    if conv.kernel_size != (k, k) or conv.padding != (p, p) or conv.stride != (1, 1) or conv.dilation != (1, 1) \
            or conv.groups != 1 or conv.padding_mode != "zeros" or 2 * p != k - 1:
        return resize(decoder(feats))
    B, f, H, W = feats.shape
    padded = F.pad(feats, (p, p, p, p))
    shifted = torch.stack([resize(padded[:, :, dy:dy + H, dx:dx + W])
                           for dy in range(k) for dx in range(k)], dim=2)  # [B, f, k*k, h, w]
    weight = conv.weight.reshape(conv.out_channels, f * k * k)  # [D, f*k*k], (f, dy, dx) order
    out = torch.einsum("dc,bchw->bdhw", weight.to(feats.dtype), shifted.reshape(B, f * k * k, *size))
    if conv.bias is not None:
        out = out + conv.bias.to(out.dtype)[None, :, None, None]
    return out


# ----------------------------------------------------------------------------------------- spread
def with_square_norm(g: FeatureGaussians) -> FeatureGaussians:
    """``g`` whose features carry one more channel, ``|f|^2`` ([N, F] -> [N, F + 1]), for :func:`feature_spread`."""
    f = g.features
    return FeatureGaussians(g.means, g.quats, g.log_scales, g.opacity_logits, g.sh,
                            torch.cat([f, f.square().sum(1, keepdim=True)], 1), sh_degree=g.sh_degree)


def feature_spread(rendered: Tensor, alpha: Tensor, eps: float = 1e-8) -> Tensor:
    """Relative spread of the features composited at each pixel: [H, W, F + 1] (features, ``|f|^2``), [H, W] -> [H, W].

    With compositing weights w_j (sum_j w_j = alpha), R = sum_j w_j f_j and S = sum_j w_j |f_j|^2, the
    weighted variance of the contributors over their mean square is ``1 - |R|^2 / (alpha S)``: 0 where all
    agree (one surface seen consistently), towards 1 where they cancel. For a back-projected lift the
    contributors are different views' tokens of the same surface, so this is their multi-view spread.
    Pixels nothing covers get 1 (no reliable target)."""
    R, S = rendered[..., :-1], rendered[..., -1]
    denom = alpha * S
    spread = 1.0 - R.square().sum(-1) / denom.clamp_min(eps)
    return torch.where(denom > eps, spread, torch.ones_like(spread)).clamp(0, 1)


# ----------------------------------------------------------------------------------------- culling
def visible_subset(g: FeatureGaussians, K, c2w, width: int, height: int, near: float = 0.01,
                   sigmas: float = 3.0) -> FeatureGaussians:
    """The Gaussians whose ``sigmas``-sigma footprint can touch a ``width`` x ``height`` view (conservative).

    Rendering the subset gives the same image: everything dropped lies behind the near plane or
    fully outside the frame. Saves the rasterizer projecting and sorting the rest of the scene (a view
    of a room sees a fraction of it). Hand-written: a few vectorised lines, no library needed.
    """
    c2w = torch.as_tensor(np.asarray(c2w), dtype=torch.float64)
    K = torch.as_tensor(np.asarray(K), dtype=torch.float64)
    R, t = c2w[:3, :3], c2w[:3, 3]
    cam = ((g.means.double() - t) @ R)  # [N, 3] world -> camera (R^T (x - t))
    z = cam[:, 2]
    zc = z.clamp_min(near)
    u = K[0, 0] * cam[:, 0] / zc + K[0, 2]
    v = K[1, 1] * cam[:, 1] / zc + K[1, 2]
    # 2D std bound: |J| <= f/z * sqrt(1 + (x/z)^2 + (y/z)^2) times the largest 3D std, plus the
    # rasterizer's 0.3 px^2 dilation; then the rasterizer's 3-sigma radius and a pixel of slack.
    tan2 = (cam[:, 0] / zc).square() + (cam[:, 1] / zc).square()
    s2d = g.log_scales.detach().max(dim=1).values.double().exp() * max(K[0, 0], K[1, 1]) / zc * (1 + tan2).sqrt()
    r = sigmas * (s2d.square() + 0.3).sqrt() * 1.1 + 2.0
    keep = (z > near) & (u + r > 0) & (u - r < width) & (v + r > 0) & (v - r < height)
    if bool(keep.all()):
        return g
    idx = keep.nonzero().squeeze(1)
    return FeatureGaussians(*(getattr(g, k).index_select(0, idx) for k in
                              ("means", "quats", "log_scales", "opacity_logits", "sh", "features")),
                            sh_degree=g.sh_degree)


# ----------------------------------------------------------------------------------------- dataset
def scene_target_pool(scene: LiftedScene, pool: str = "auto") -> str:
    """``pool``, or for "auto": "area" when the scene was lifted by ``solve`` fitting token-grid means
    (``solve_targets_at`` grid: its rendered field is only constrained on average over each token), else
    "bilinear" (FiT3D)."""
    if pool != "auto":
        return pool
    meta = scene.meta
    settings = meta.get("settings") or meta.get("config") or {}
    at = (settings.get("solve") or {}).get("targets_at", settings.get("solve_targets_at", "grid"))  # today / older
    solved = (meta.get("method") == "solve" and at == "grid"
              and not (meta.get("solve") or {}).get("fell_back_to"))  # no depth, no points: optimize lifted it
    return "area" if solved else "bilinear"


def _item_seed(seed: int, epoch: int, index: int) -> int:
    """A per-(epoch, item) seed: flips do not depend on worker assignment or on resuming."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def _scene_path(scene: LiftedScene) -> Path:
    p = Path(scene.meta["scene"]["path"])
    if not p.is_absolute() and not p.exists() and (scene.path / p).exists():
        p = scene.path / p  # a path relative to the lifted folder
    return p


class RenderedViews(Dataset):
    """(scene, view) pairs of lifted scenes; an item renders that view's 3D-aware target.

    ``which``: "train" (the views lifted on: FiT3D fine-tunes on them) or "heldout".
    Keys are an entry index or ``(index, epoch)`` (from :class:`ResumableSampler`; the epoch seeds the flip).
    """

    def __init__(self, scenes: list[LiftedScene], patch_size: int, *, which: str = "train",
                 resolution=None, alpha_threshold: float = 0.5, flip_prob: float = 0.5, seed: int = 42,
                 render_kwargs: dict | None = None, cull: bool = True, target_at: str = "lift",
                 with_spread: bool = False, target_pool: str = "auto"):
        if target_at not in TARGET_AT:
            raise ValueError(f"target_at must be one of {TARGET_AT}, got {target_at!r}")
        self.scenes = scenes
        self.target_at = target_at
        self.patch_size = patch_size
        self.alpha_threshold = alpha_threshold
        self.flip_prob = flip_prob
        self.seed = seed
        self.render_kwargs = dict(render_kwargs or {})
        self.cull = cull
        self.with_spread = with_spread
        self.pools = [scene_target_pool(s, target_pool) for s in scenes]
        self.sizes = [training_resolution(s.resolution, patch_size, resolution) for s in scenes]
        key = {"train": "train_views", "heldout": "heldout_views"}[which]
        self.entries: list[tuple[int, str]] = [(i, str(v)) for i, s in enumerate(scenes)
                                               for v in s.meta["scene"].get(key, [])]

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self, index: int) -> str:
        si, view = self.entries[index]
        return f"scene {self.scenes[si].name!r} ({self.scenes[si].path}) view {view!r}"

    def read_view(self, index: int):
        """The source view (image, K, c2w) at this scene's training resolution."""
        from fit3d.data import read_scene

        si, name = self.entries[index]
        s = self.scenes[si]
        W, H = self.sizes[si]
        scene = read_scene(_scene_path(s), layout=s.meta["scene"].get("layout", "auto"), resolution=(W, H),
                           names=[name])
        views = [v for v in scene.views if v.name == name] or scene.views
        if len(views) != 1:
            raise SceneError(f"{self.describe(index)}: expected one view, the reader returned {len(scene.views)}")
        v = views[0]
        if (v.width, v.height) != (W, H):
            v = v.resized(W, H)
        return v

    @torch.no_grad()
    def render_target(self, index: int, K, c2w) -> dict[str, Tensor]:
        """For a camera of this entry's scene: {"target" [D, h, w], "mask" [h, w] bool, "alpha" [h, w] float32,
        and "spread" [h, w] float32 when the dataset was made ``with_spread``}."""
        from fit3d.splat.render import render

        si, _ = self.entries[index]
        s = self.scenes[si]
        W, H = self.sizes[si]
        h, w = H // self.patch_size, W // self.patch_size
        Wr, Hr = self.render_size(si)
        if (Wr, Hr) != (W, H):  # the same camera at the render size (pixel centres at +0.5)
            K = np.diag([Wr / W, Hr / H, 1.0]) @ np.asarray(K, dtype=np.float64)
        g = visible_subset(s.gaussians, K, c2w, Wr, Hr) if self.cull else s.gaussians
        r = render(with_square_norm(g) if self.with_spread else g, K, c2w, Wr, Hr, with_rgb=False,
                   **self.render_kwargs)
        rendered = r.features[..., :-1] if self.with_spread else r.features
        feats = rendered.permute(2, 0, 1)[None].float()  # [1, f, H, W]
        alpha = F.interpolate(r.alpha[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out = {"target": decode_to_grid(s.decoder, feats, (h, w), self.pools[si])[0].contiguous(),  # [D, h, w]
               "mask": alpha >= self.alpha_threshold, "alpha": alpha.clamp(0, 1).contiguous()}
        if self.with_spread:
            out["spread"] = F.interpolate(feature_spread(r.features.float(), r.alpha.float())[None, None],
                                          size=(h, w), mode="area")[0, 0].contiguous()
        return out

    def render_size(self, scene_index: int) -> tuple[int, int]:
        """(W, H) targets of this scene are rendered at before decoding: its lift resolution (the scale its
        decoder was trained at) unless that is coarser than the patch grid, or the training resolution."""
        W, H = self.sizes[scene_index]
        if self.target_at == "train":
            return W, H
        Wl, Hl = self.scenes[scene_index].resolution
        if Wl < W // self.patch_size or Hl < H // self.patch_size:
            return W, H
        return Wl, Hl

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        v = self.read_view(index)
        grids = self.render_target(index, v.K, v.c2w)  # target, mask, alpha (+ spread) at the patch grid
        image = torch.from_numpy(np.ascontiguousarray(v.image)).permute(2, 0, 1).contiguous()  # [3, H, W]
        flip = False
        if self.flip_prob > 0:
            g = torch.Generator().manual_seed(_item_seed(self.seed, epoch, index))
            flip = bool(torch.rand((), generator=g) < self.flip_prob)
        if flip:
            # Flipping at the grid is the same as flipping at full resolution first: the
            # bilinear sampling positions of a patch-multiple resize are mirror-symmetric.
            image = image.flip(-1)
            grids = {k: t.flip(-1) for k, t in grids.items()}
        return {"image": image, **grids, "scene": self.entries[index][0], "index": index, "flip": flip}


def worker_init(worker_id: int, threads: int = 1) -> None:
    """Render workers share 2 cores with the training process: give each few torch threads."""
    torch.set_num_threads(max(1, threads))


class _WorkerInit:
    def __init__(self, threads: int):
        self.threads = threads

    def __call__(self, worker_id: int) -> None:
        worker_init(worker_id, self.threads)


def make_worker_init(threads: int = 1):
    return _WorkerInit(threads)


# ----------------------------------------------------------------------------------------- sampler
class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shards the views across ranks, reshuffled per epoch from ``seed``)
    that can start part-way through an epoch and yields ``(index, epoch)`` keys.

    ``start``: samples of this rank's shard already consumed in the current epoch (resume).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 42):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self):
        indices = list(super().__iter__())
        for i in indices[self.start:]:
            yield (i, self.epoch)

    def __len__(self) -> int:
        return self.num_samples - self.start
