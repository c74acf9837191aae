"""Stage 2 data: (scene, view) pairs of all lifted scenes, rendered into 3D-aware targets on the fly.

Scenes are ``fit3d.finetune.store.SceneRef``s: each render memory-maps the scene's Gaussians and reads
only what the view can see, so memory does not grow with the number of scenes (FiT3D's own code loads
every scene onto GPU 0). A spawned render worker receives the scenes' records, not their Gaussians.
Under ``torchrun`` the sampler gives each rank its own scenes (:class:`ResumableSampler`).

One item (``RenderedViews[i]``)::

    image  [3, H, W]  float32 in [0, 1]  the view at the training resolution (a patch multiple); a scene of
                                         another aspect than ``resolution``'s is centre-cropped to it first
    target [D, h, w]  float32            decoded rendered features, bilinearly resized to the patch grid
                                         (rendered at the scene's lift resolution unless target_at="train")
    mask   [h, w]     bool               tokens where the scene was rendered (opacity >= threshold)
    alpha  [h, w]     float32 in [0, 1]  rendered opacity at the patch grid (the anchor term weights by 1 - alpha)
    spread [h, w]     float32 in [0, 1]  only with ``with_spread``: how much the Gaussians composited there
                                         disagree (:func:`feature_spread`), area-averaged to the patch grid
                                         (with ``target_views="others"`` every [h, w] grid is of the render
                                         without the view's own Gaussians)
    scene, index      int                which scene / which entry, for error messages
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from fit3d.data.scene import aspect_window
from fit3d.errors import Fit3DError, SceneError
from fit3d.finetune.config import TARGET_AT, TARGET_VIEWS
from fit3d.lift.decoder import FeatureDecoder
from fit3d.splat.gaussians import FeatureGaussians
from fit3d.finetune.store import SceneRef, decoder_bytes, scene_refs, visible_mask
from fit3d.resize import area_matrix, interp_matrix, resize

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- scenes
@dataclass
class SceneMemory:
    """What the lifted scenes cost in CPU memory."""

    num_scenes: int
    num_gaussians: int
    gaussian_bytes: int  # all scenes' Gaussians as float32 columns (on disk; never all in memory)
    decoder_bytes: int  # about: the first scene's decoder times the number of scenes

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
                f"(+ decoders {self.decoder_bytes / 2**20:.1f} MiB) on disk, memory-mapped per render")


def load_scenes(dirs, embed_dim: int | None = None, backbone: str | None = None,
                cache_dir=None) -> list[SceneRef]:
    """A :class:`~fit3d.finetune.store.SceneRef` per lifted folder (no Gaussians loaded); checks each decoder
    matches the backbone width and the Gaussians' features. ``cache_dir``: where the columnar copies of the
    PLYs go (default: a ``fit3d-scene-columns`` folder in the system's temporary directory)."""
    if cache_dir is None:
        import tempfile

        cache_dir = Path(tempfile.gettempdir()) / "fit3d-scene-columns"
    scenes = scene_refs(dirs, cache_dir)
    for s in scenes:
        dec = s.decoder
        if embed_dim is not None and dec.out_dim != embed_dim:
            raise SceneError(f"{s.path}: decoder outputs {dec.out_dim} channels but the backbone has "
                             f"{embed_dim} (lifted with {s.meta.get('backbone')!r}, fine-tuning {backbone!r})")
        if s.feature_dim != dec.in_dim:
            raise SceneError(f"{s.path}: Gaussians carry {s.feature_dim} features but the decoder "
                             f"expects {dec.in_dim}")
    if not scenes:
        raise SceneError("no lifted scenes given")
    return scenes


def scene_memory(scenes: list[SceneRef]) -> SceneMemory:
    """What the scenes would hold in memory if loaded whole (they are memory-mapped per render instead)."""
    return SceneMemory(num_scenes=len(scenes), num_gaussians=sum(len(s) for s in scenes),
                       gaussian_bytes=sum(s.nbytes() for s in scenes),
                       decoder_bytes=sum(decoder_bytes(s) for s in scenes[:1]) * len(scenes))


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
    pool_full = (lambda x: F.adaptive_avg_pool2d(x, size)) if pool == "area" else \
        (lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    if conv.kernel_size != (k, k) or conv.padding != (p, p) or conv.stride != (1, 1) or conv.dilation != (1, 1) \
            or conv.groups != 1 or conv.padding_mode != "zeros" or 2 * p != k - 1:
        return pool_full(decoder(feats))
    B, f, H, W = feats.shape
    h, w = size
    # The resize of the window shifted by (dy, dx) is R_dy @ padded @ C_dx^T, with the bilinear (or area)
    # matrices R [h, H] and C [w, W] placed at row / column offset dy / dx of the padded map: all k*k windows
    # come from two matmuls with the stacked matrices (no padded copy resized k*k times).
    matrix = area_matrix if pool == "area" else interp_matrix
    R, C = matrix(H, h, feats.dtype, feats.device), matrix(W, w, feats.dtype, feats.device)
    Rs = feats.new_zeros(k, h, H + 2 * p)
    Cs = feats.new_zeros(k, w, W + 2 * p)
    for d in range(k):
        Rs[d, :, d:d + H], Cs[d, :, d:d + W] = R, C
    padded = F.pad(feats, (p, p, p, p))  # [B, f, H + 2p, W + 2p]
    shifted = resize(padded, Rs.reshape(k * h, -1), Cs.reshape(k * w, -1).T)  # [B, f, k*h, k*w]
    shifted = shifted.reshape(B, f, k, h, k, w).permute(0, 1, 2, 4, 3, 5)  # [B, f, dy, dx, h, w]
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
    """The Gaussians of ``g`` whose footprint can touch a ``width`` x ``height`` view (:func:`visible_mask`).

    Rendering the subset gives the same image. Saves the rasterizer projecting and sorting the rest of the
    scene (a view of a room sees a fraction of it)."""
    keep = visible_mask(g.means, g.log_scales.detach().max(dim=1).values, K, c2w, width, height, near, sigmas)
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


def _without_rows(g: FeatureGaussians, rows: tuple[int, int] | None) -> FeatureGaussians:
    """``g`` without its rows [start, stop) (``g`` itself when None)."""
    if rows is None:
        return g
    keep = torch.ones(len(g), dtype=torch.bool)
    keep[rows[0]:rows[1]] = False
    return FeatureGaussians(**{k: getattr(g, k)[keep] for k in ("means", "quats", "log_scales", "opacity_logits",
                                                                  "sh", "features")}, sh_degree=g.sh_degree)


def _item_seed(seed: int, epoch: int, index: int) -> int:
    """A per-(epoch, item) seed: flips do not depend on worker assignment or on resuming."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def _scene_path(scene: SceneRef) -> Path:
    p = Path(scene.meta["scene"]["path"])
    if not p.is_absolute() and not p.exists() and (scene.path / p).exists():
        p = scene.path / p  # a path relative to the lifted folder
    return p


class RenderedViews(Dataset):
    """(scene, view) pairs of lifted scenes; an item renders that view's 3D-aware target.

    ``which``: "train" (the views lifted on: FiT3D fine-tunes on them) or "heldout". ``images_only``: items hold the
    (flipped) image, scene and index only, nothing is rendered (the [CLS]-restore steps). ``target_views``: "all"
    (FiT3D: every Gaussian) or "others": a view's target is rendered without the Gaussians that view itself
    contributed (back-projected lifts record them), i.e. only from what the other views saw there.
    Keys are an entry index or ``(index, epoch)`` (from :class:`ResumableSampler`; the epoch seeds the flip).
    """

    def __init__(self, scenes: list[SceneRef], patch_size: int, *, which: str = "train",
                 resolution=None, alpha_threshold: float = 0.5, flip_prob: float = 0.5, seed: int = 42,
                 render_kwargs: dict | None = None, cull: bool = True, target_at: str = "lift",
                 with_spread: bool = False, target_pool: str = "auto", images_only: bool = False,
                 render_device: str | torch.device = "cpu", target_views: str = "all"):
        if target_at not in TARGET_AT:
            raise ValueError(f"target_at must be one of {TARGET_AT}, got {target_at!r}")
        if target_views not in TARGET_VIEWS:
            raise ValueError(f"target_views must be one of {TARGET_VIEWS}, got {target_views!r}")
        self.scenes = scenes
        self.target_at = target_at
        self.patch_size = patch_size
        self.alpha_threshold = alpha_threshold
        self.flip_prob = flip_prob
        self.seed = seed
        self.render_kwargs = dict(render_kwargs or {})
        self.cull = cull
        self.with_spread = with_spread
        self.images_only = images_only
        # where targets render: "cpu" (the memory-mapped Gaussians, numba), or a CUDA device: the view's visible
        # Gaussians move there (gsplat) and only the patch-grid targets come back (see render_target)
        self.render_device = torch.device(render_device)
        self._decoders: dict[int, object] = {}  # scene index -> its decoder on render_device
        self.pools = [scene_target_pool(s, target_pool) for s in scenes]
        self.sizes = [training_resolution(s.resolution, patch_size, resolution) for s in scenes]
        # a scene of another aspect than ``resolution`` is centre-cropped to it, not squashed (a portrait capture
        # among landscape scenes); the requested aspect, not the patch-rounded one, so that a scene at it is never cut
        self.aspect = int(resolution[0]) / int(resolution[1]) if resolution else None
        key = {"train": "train_views", "heldout": "heldout_views"}[which]
        self.entries: list[tuple[int, str]] = [(i, str(v)) for i, s in enumerate(scenes)
                                               for v in s.meta["scene"].get(key, [])]
        self.target_views = target_views
        if target_views == "others" and not images_only:  # each scene must say which Gaussians a view made
            self.own = [s.view_rows() for s in scenes]

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
        scene = read_scene(_scene_path(s), layout=s.meta["scene"].get("layout", "auto"),
                           resolution=None if self.aspect else (W, H),
                           names=[name], load_depth=False)  # Stage 2 needs the image and camera only
        views = [v for v in scene.views if v.name == name] or scene.views
        if len(views) != 1:
            raise SceneError(f"{self.describe(index)}: expected one view, the reader returned {len(scene.views)}")
        v = views[0]
        if self.aspect:  # the reader's resize after the window (none for a scene at the aspect: the same view)
            v = v.cropped(*aspect_window(v.width, v.height, self.aspect))
        if (v.width, v.height) != (W, H):
            v = v.resized(W, H)
        return v

    @torch.no_grad()
    def render_target(self, index: int, K, c2w, exclude: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """For a camera of this entry's scene: {"target" [D, h, w], "mask" [h, w] bool, "alpha" [h, w] float32,
        and "spread" [h, w] float32 when the dataset was made ``with_spread``}; ``exclude``: the scene's PLY rows
        [start, stop) left out of the render (``SceneRef.view_rows``)."""
        from fit3d.splat.render import render

        si, _ = self.entries[index]
        s = self.scenes[si]
        W, H = self.sizes[si]
        h, w = H // self.patch_size, W // self.patch_size
        Wr, Hr = self.render_size(si)
        if (Wr, Hr) != (W, H):  # the same camera at the render size (pixel centres at +0.5)
            K = np.diag([Wr / W, Hr / H, 1.0]) @ np.asarray(K, dtype=np.float64)
        g = s.visible(K, c2w, Wr, Hr, exclude) if self.cull else _without_rows(s.gaussians, exclude)
        decoder = s.decoder
        if self.render_device.type != "cpu":
            g = g.to(self.render_device, non_blocking=True)
            if si not in self._decoders:
                self._decoders[si] = copy.deepcopy(s.decoder).to(self.render_device)
            decoder = self._decoders[si]
        r = render(with_square_norm(g) if self.with_spread else g, K, c2w, Wr, Hr, with_rgb=False,
                   **self.render_kwargs)
        rendered = r.features[..., :-1] if self.with_spread else r.features
        feats = rendered.permute(2, 0, 1)[None].float()  # [1, f, H, W]
        alpha = F.interpolate(r.alpha[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out = {"target": decode_to_grid(decoder, feats, (h, w), self.pools[si])[0].contiguous(),  # [D, h, w]
               "mask": alpha >= self.alpha_threshold, "alpha": alpha.clamp(0, 1).contiguous()}
        if self.with_spread:
            out["spread"] = F.interpolate(feature_spread(r.features.float(), r.alpha.float())[None, None],
                                          size=(h, w), mode="area")[0, 0].contiguous()
        return {k: v.cpu() for k, v in out.items()}  # the loader collates (and pins) CPU tensors

    def render_size(self, scene_index: int) -> tuple[int, int]:
        """(W, H) targets of this scene are rendered at before decoding: its lift resolution (the scale its
        decoder was trained at) unless that is coarser than the patch grid, or the training resolution."""
        W, H = self.sizes[scene_index]
        if self.target_at == "train":
            return W, H
        Wl, Hl = self.scenes[scene_index].resolution
        if self.aspect:  # the training view's window at the lift's scale
            _, _, Wl, Hl = aspect_window(Wl, Hl, self.aspect)
        if Wl < W // self.patch_size or Hl < H // self.patch_size:
            return W, H
        return Wl, Hl

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        v = self.read_view(index)
        grids = {}
        if not self.images_only:  # target, mask, alpha (+ spread)
            si, name = self.entries[index]
            exclude = self.own[si].get(name) if self.target_views == "others" else None  # None: a held-out view
            grids = self.render_target(index, v.K, v.c2w, exclude)
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


# Cores below which render workers are not started: on 2 cores a worker's rendering competes with the
# training threads and the step gets slower than rendering inline (bench/finetune.py, docs/speed.md).
MIN_CORES_FOR_A_WORKER = 4


def available_cores() -> int:
    """Cores this process may run on (its affinity mask: what a container or taskset allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def render_workers(workers: int | None) -> int:
    """Render workers to start: ``workers`` when given, else 0 (render inline) below
    ``MIN_CORES_FOR_A_WORKER`` cores and 1 from there."""
    if workers is not None:
        return int(workers)
    return 0 if available_cores() < MIN_CORES_FOR_A_WORKER else 1


def render_plan(workers: int | None, render_on: str, device) -> tuple[int, torch.device]:
    """(render workers, device targets render on) for ``--workers`` / ``--render-on`` and the training device.

    ``auto`` renders on a CUDA training device with gsplat, inline, unless render workers were asked for: gsplat
    renders a view in milliseconds, where the CPU's numba takes tens. Without gsplat the torch rasterizer on
    the GPU is slower than numba (bench/gpu_check.py's Stage 2 rows, docs/gpu.md), so targets render on the
    CPU, as everywhere else, with :func:`render_workers`' default."""
    from fit3d.splat.rasterize import gsplat_available

    device = torch.device(device)
    on_gpu = device.type == "cuda" and not workers and gsplat_available()
    if render_on == "device" or (render_on == "auto" and on_gpu):
        if workers:
            raise Fit3DError(f"--render-on device renders in the training process: use --workers 0, not {workers}")
        return 0, device
    return render_workers(workers), torch.device("cpu")


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
def shard_by_group(groups: list[int], num_replicas: int, tolerance: float = 0.1) -> list[list[int]] | None:
    """Entries (indices into ``groups``, the scene of each entry) per rank, whole scenes to a rank and the
    ranks' entry counts balanced (largest first to the least loaded rank); None when a rank would get no
    scene or the counts differ by more than ``tolerance`` of their mean."""
    by: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    if len(by) < num_replicas:
        return None
    shards: list[list[int]] = [[] for _ in range(num_replicas)]
    for g in sorted(by, key=lambda k: (-len(by[k]), k)):
        min(shards, key=len).extend(by[g])
    sizes = [len(x) for x in shards]
    if max(sizes) - min(sizes) > tolerance * len(groups) / num_replicas:
        return None
    return [sorted(x) for x in shards]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shards the views across ranks, reshuffled per epoch from ``seed``)
    that can start part-way through an epoch and yields ``(index, epoch)`` keys.

    ``groups``: the scene of each entry. With more than one rank and scenes that split evenly
    (:func:`shard_by_group`), each rank draws only from its own scenes, so it touches about
    1 / num_replicas of them; its share is shuffled per epoch and cycled or cut to ``num_samples`` (every rank
    steps equally often). Otherwise views are sharded as ``DistributedSampler`` does.
    ``start``: samples of this rank's shard already consumed in the current epoch (resume).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 42,
                 groups: list[int] | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.start = 0
        shards = shard_by_group(groups, num_replicas) if groups is not None and num_replicas > 1 else None
        self.shard = None if shards is None else shards[rank]

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self):
        if self.shard is None:
            indices = list(super().__iter__())
        else:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.shard), generator=g).tolist() if self.shuffle else range(len(self.shard))
            own = [self.shard[i] for i in order]
            indices = (own * math.ceil(self.num_samples / len(own)))[:self.num_samples]
        for i in indices[self.start:]:
            yield (i, self.epoch)

    def __len__(self) -> int:
        return self.num_samples - self.start
