"""Linear depth probe as DINOv2's "linear" depth head (BNHead without BN, bins + linear classify).

Per location: patch token concatenated with the image's [CLS] token -> x4 bilinear upsample -> 1x1 conv
to ``n_bins`` logits -> ReLU + 0.1, normalised over bins -> depth = sum(p_k * bin_k), bins uniform on
[min_depth, max_depth]; the depth map is bilinearly resized to the label resolution.
Loss: SigLoss (lambda 0.15) + 0.5 x multi-scale gradient loss on log depth. AdamW 1e-4, wd 0.01, cosine
with linear warmup. Training takes the loss on every ``label_stride``-th label pixel of each direction
(default 2; the phase cycles as the seg probe's, ``fit3d.probe.seg``): the depth map is bilinear between
the x4 upsampled bins, 3.5 label pixels apart at a 14 px patch, so every other pixel samples it and
the labels densely; every scale of the gradient loss keeps its pixel pairs (``gradient_pairs``); the
final resize and the loss cost a quarter (``bench/depth_stride.py``: the same RMSE within the seed
spread). Metrics on valid pixels (0 < gt within [min_depth, max_depth], inside the Eigen /
Garg crop when set), averaged over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fit3d.probe.config import HeadSettings, ProbeConfig
from fit3d.probe.train import label_phase, train_head

DEPTH_METRICS = ("rmse", "abs_rel", "sq_rel", "log10", "rmse_log", "delta1", "delta2", "delta3")


class LinearDepthHead(nn.Module):
    """patch [B, D, h, w] + cls [B, Dc] -> depth [B, 1, H, W] metres."""

    def __init__(self, patch_dim: int, cls_dim: int, n_bins: int = 256, min_depth: float = 1e-3,
                 max_depth: float = 10.0, upsample: int = 4, use_cls: bool = True):
        super().__init__()
        self.use_cls, self.upsample = use_cls, upsample
        self.conv = nn.Conv2d(patch_dim + (cls_dim if use_cls else 0), n_bins, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, n_bins))

    def forward(self, patch: torch.Tensor, cls: torch.Tensor | None, out_size: tuple[int, int]) -> torch.Tensor:
        x = patch
        if self.use_cls:
            x = torch.cat([patch, cls[:, :, None, None].expand(-1, -1, *patch.shape[-2:])], 1)
        # DINOv2 upsamples the tokens x4 and then applies the 1x1 conv; both are linear per location and
        # bilinear weights sum to 1, so conv-then-upsample is identical and 16x cheaper (D >> bins/16).
        logits = self.conv(x)
        if self.upsample != 1:
            logits = F.interpolate(logits, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        prob = torch.relu(logits) + 0.1
        prob = prob / prob.sum(1, keepdim=True)
        depth = (prob * self.bins[None, :, None, None]).sum(1, keepdim=True)  # [B, 1, 4h, 4w]
        return F.interpolate(depth, size=out_size, mode="bilinear", align_corners=False)


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, lam: float = 0.15, eps: float = 1e-3) -> torch.Tensor:
    """Scale-invariant log loss (DINOv2 / depth toolbox): sqrt(var(g) + lam * mean(g)^2), g = log ratio."""
    g = torch.log(pred[valid] + eps) - torch.log(gt[valid] + eps)
    if g.numel() < 2:
        return pred.sum() * 0.0
    return torch.sqrt(torch.var(g) + lam * g.mean() ** 2)


def gradient_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, scales: int = 4, eps: float = 1e-3,
                  dims: tuple[int, ...] | None = None, grid: int = 1) -> torch.Tensor:
    """Multi-scale gradient matching of the log-depth difference (depth toolbox ``GradientLoss``).

    pred, gt [B, 1, H, W], valid [B, 1, H, W] bool. At scale s (stride 2s, s=0 full) it sums
    |d(x) - d(x+2)| along rows and columns over pairs of valid pixels, divided by the valid count.
    ``dims``: reduce over these dimensions only (one loss per remaining index, e.g. per head of a batched
    trainer: pred [G, B, 1, H, W], dims (1, 2, 3, 4) -> [G]); None: over all (a scalar). ``grid``: the maps
    hold every grid-th label pixel (``log_gradient_loss``).
    """
    m = valid.to(pred.dtype)
    return log_gradient_loss((torch.log(pred + eps) - torch.log(gt + eps)) * m, m, scales, dims, grid)


def gradient_pairs(scale: int, grid: int = 1) -> tuple[int, int]:
    """(subsampling step, pair offset), in pixels of a map sampled every ``grid`` label pixels, of the
    gradient loss at ``scale``: at full resolution (grid 1) scale s keeps every st-th pixel (st = 1, 2s for
    s > 0) and pairs pixels 2 st apart. On a grid-2 map the same pairs (2 st label pixels apart, on a
    lattice of spacing max(st, 2)) are (max(1, st / 2), 2 st / max(2, st)): every scale's pairs exist, on a
    lattice at most twice as sparse, so the loss is the same average over fewer pairs. Grids above 2 lose
    the finest scale's pairs (2 label pixels apart) and are refused."""
    if grid not in (1, 2):
        raise ValueError(f"the depth loss's grid must be 1 or 2 label pixels, got {grid}")
    st = 1 if scale == 0 else 2 * scale
    step = max(1, st // grid)
    return step, 2 * st // (grid * step)


def log_gradient_loss(d: torch.Tensor, m: torch.Tensor, scales: int = 4, dims: tuple[int, ...] | None = None,
                      grid: int = 1) -> torch.Tensor:
    """``gradient_loss`` from the masked log-depth difference d = (log pred - log gt) * m and the mask m
    (a scale's subsampled d is d at the subsampled pixels, so d is computed once for every scale).
    ``grid``: d's pixels are every grid-th label pixel (a strided loss, ``gradient_pairs``)."""
    total = d.new_zeros(())
    for s in range(scales):
        step, o = gradient_pairs(s, grid)
        ds, ms = d[..., ::step, ::step], m[..., ::step, ::step]
        v = (ds[..., :-o, :] - ds[..., o:, :]).abs() * ms[..., :-o, :] * ms[..., o:, :]
        h = (ds[..., :, :-o] - ds[..., :, o:]).abs() * ms[..., :, :-o] * ms[..., :, o:]
        if dims is None:
            total = total + (v.sum() + h.sum()) / ms.sum().clamp(min=1)
        else:
            total = total + (v.sum(dims) + h.sum(dims)) / ms.expand_as(ds).sum(dims).clamp(min=1)
    return total


def valid_mask(gt: torch.Tensor, min_depth: float, max_depth: float, crop: str | None = None) -> torch.Tensor:
    """Pixels that count: gt in (min_depth, max_depth], inside the Eigen (NYU) / Garg (KITTI) crop."""
    m = (gt > min_depth) & (gt <= max_depth)
    if crop:
        H, W = gt.shape[-2:]
        c = torch.zeros_like(m)
        if crop == "eigen":  # rows 45:471, cols 41:601 of 640x480, scaled to this resolution
            c[..., round(45 * H / 480):round(471 * H / 480), round(41 * W / 640):round(601 * W / 640)] = True
        elif crop == "garg":
            c[..., int(0.40810811 * H):int(0.99189189 * H), int(0.03594771 * W):int(0.96405229 * W)] = True
        else:
            raise ValueError(f"unknown crop {crop!r}")
        m &= c
    return m


def depth_metrics_image(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> dict | None:
    """Metrics of one image on its valid pixels (pred already clamped to the depth range)."""
    p, g = pred[valid].double(), gt[valid].double()
    if g.numel() == 0:
        return None
    ratio = torch.maximum(p / g, g / p)
    return {"rmse": float(torch.sqrt(((p - g) ** 2).mean())), "abs_rel": float(((p - g).abs() / g).mean()),
            "sq_rel": float(((p - g) ** 2 / g).mean()), "log10": float((torch.log10(p) - torch.log10(g)).abs().mean()),
            "rmse_log": float(torch.sqrt(((torch.log(p) - torch.log(g)) ** 2).mean())),
            "delta1": float((ratio < 1.25).double().mean()), "delta2": float((ratio < 1.25 ** 2).double().mean()),
            "delta3": float((ratio < 1.25 ** 3).double().mean())}


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, min_depth: float, max_depth: float,
                  crop: str | None = None) -> dict:
    """Mean over images of the per-image metrics. pred, gt [N, H, W] (or [N, 1, H, W]) metres."""
    pred = pred.reshape(-1, *gt.shape[-2:]).clamp(min_depth, max_depth)
    gt = gt.reshape(-1, *gt.shape[-2:])
    per = [m for i in range(len(gt)) if (m := depth_metrics_image(pred[i], gt[i], valid_mask(gt[i], min_depth, max_depth, crop)))]
    if not per:
        return {k: float("nan") for k in DEPTH_METRICS}
    return {k: sum(m[k] for m in per) / len(per) for k in DEPTH_METRICS}


@dataclass
class DepthSettings(HeadSettings):
    """The depth head's training (DINOv2's linear depth head): ``HeadSettings`` (defaults from ``ProbeConfig`` and
    ``HEAD_PROTOCOL["depth"]``) plus the bins, depth range and loss weights; a probe run's: :meth:`from_config`."""

    TASK: ClassVar[str] = "depth"

    n_bins: int = 256
    min_depth: float = 1e-3
    max_depth: float = 10.0
    grad_weight: float = 0.5
    use_cls: bool = True
    label_stride: int = 2  # loss on every k-th label pixel per direction (1: all, 2: module docstring)

    def __post_init__(self) -> None:
        super().__post_init__()
        gradient_pairs(0, self.label_stride)  # refuses a stride the gradient loss cannot keep its pairs on

    @classmethod
    def from_config(cls, cfg: ProbeConfig, max_depth: float, seed: int) -> "DepthSettings":
        """A probe run's: ``cfg``'s settings, ``max_depth`` the data's when ``cfg`` gives none."""
        return cls.of_run(cfg, seed, min_depth=cfg.min_depth, max_depth=max_depth)


def train_depth(patch: torch.Tensor, cls: torch.Tensor, depth: torch.Tensor, s: DepthSettings,
                val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                val_every: int = 100) -> tuple[LinearDepthHead, dict]:
    """Fit a head on cached features. patch [N, D, h, w], cls [N, Dc], depth [N, H, W] metres (0 invalid).

    ``val``: (patch, cls, depth) of a validation split; the head keeps the checkpoint with the best
    validation abs rel (evaluated every ``val_every`` iterations), as the protocol's best checkpoint.
    """
    torch.manual_seed(s.seed)
    head = LinearDepthHead(patch.shape[1], cls.shape[1], s.n_bins, s.min_depth, s.max_depth, use_cls=s.use_cls).to(patch.device, patch.dtype)
    out_size = tuple(depth.shape[-2:])
    k, it = s.label_stride, iter(range(s.iterations))

    def step(idx):
        r, c = label_phase(k, next(it))
        gt = depth[idx][:, None, r::k, c::k].to(patch.dtype)
        pred = head(patch[idx], cls[idx], out_size)[..., r::k, c::k]
        valid = valid_mask(gt, s.min_depth, s.max_depth)
        return sig_loss(pred, gt, valid) + s.grad_weight * gradient_loss(pred, gt, valid, grid=k)

    validate = None
    if val is not None:
        vp, vc, vd = val

        def validate():
            pred = predict_depth(head, vp, vc, tuple(vd.shape[-2:]))
            return depth_metrics(pred, vd, s.min_depth, s.max_depth)["abs_rel"]

    log = train_head(head, len(patch), step, iterations=s.iterations, batch_size=s.batch_size, lr=s.lr,
                     weight_decay=s.weight_decay, schedule="cosine", warmup=s.warmup, seed=s.seed, desc="depth probe",
                     validate=validate, val_every=val_every)
    return head, log


@torch.no_grad()
def predict_depth(head: LinearDepthHead, patch: torch.Tensor, cls: torch.Tensor, out_size: tuple[int, int],
                  batch_size: int = 16) -> torch.Tensor:
    """Depth [N, H, W] metres."""
    head.eval()
    return torch.cat([head(patch[i:i + batch_size], cls[i:i + batch_size], out_size)[:, 0]
                      for i in range(0, len(patch), batch_size)])


def mean_depth_baseline(train_depth: torch.Tensor, test_depth: torch.Tensor, min_depth: float, max_depth: float,
                        crop: str | None = None) -> dict:
    """Metrics of predicting the training set's mean valid depth everywhere."""
    v = valid_mask(train_depth, min_depth, max_depth)
    mean = float(train_depth[v].mean())
    return depth_metrics(torch.full_like(test_depth, mean), test_depth, min_depth, max_depth, crop)


def mean_depth_image(train_depth: torch.Tensor, min_depth: float, max_depth: float,
                     size: tuple[int, int] | None = None) -> tuple[float, torch.Tensor]:
    """(the training images' [N, H, W] mean valid depth, [H, W] each pixel's mean valid depth over them: a position
    prior, floor below and far wall in the middle; the overall mean where no training image has a valid depth).
    ``size`` (H, W): the image bilinearly resized to another label size."""
    v = valid_mask(train_depth, min_depth, max_depth).float()
    mean = (train_depth * v).sum() / v.sum().clamp_min(1)
    image = torch.where(v.sum(0) > 0, (train_depth * v).sum(0) / v.sum(0).clamp_min(1), mean)
    if size is not None and tuple(size) != tuple(image.shape):
        image = F.interpolate(image[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return float(mean), image


def mean_depth_image_baseline(train_depth: torch.Tensor, test_depth: torch.Tensor, min_depth: float,
                              max_depth: float, crop: str | None = None) -> dict:
    """Metrics of predicting every test image as :func:`mean_depth_image` (what a head must beat to read more than
    where a pixel is)."""
    _, image = mean_depth_image(train_depth, min_depth, max_depth, tuple(test_depth.shape[-2:]))
    return depth_metrics(image.expand_as(test_depth).contiguous(), test_depth, min_depth, max_depth, crop)
