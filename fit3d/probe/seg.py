"""Linear semantic segmentation probe: BatchNorm + 1x1 conv on frozen patch tokens (mmseg's BNHead).

Logits are bilinearly upsampled to the label resolution; cross-entropy ignores ``ignore_index``;
mIoU / mAcc come from a confusion matrix (classes absent from both prediction and labels are skipped,
as mmseg's nan-mean does). Optimiser as DINOv2 / FiT3D: AdamW lr 1e-3, wd 1e-4, poly with linear warmup.

Training takes the cross entropy on every ``label_stride``-th label pixel in each direction (the
upsampled logits at those pixels exactly; the offset cycles through the stride x stride pixel phases
from one iteration to the next, so every pixel takes its turn). The logits are bilinear between token
centres, ``patch`` pixels apart: a stride of a few pixels samples them, and the labels, several times per
patch, at a ``stride^2``-th of the cost of the full-resolution loss (``bench/seg_stride.py``: the same
mIoU within the seed spread). Prediction and metrics stay at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fit3d.probe.config import HeadSettings, ProbeConfig
from fit3d.probe.train import label_phase, train_head


class LinearSegHead(nn.Module):
    """BN + 1x1 conv: patch [B, D, h, w] -> logits [B, C, H, W] (bilinear to ``out_size``)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, patch: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        logits = self.conv(self.bn(patch))  # [B, C, h, w]
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


@dataclass
class SegSettings(HeadSettings):
    """The seg head's training (mmseg BNHead as DINOv2 / FiT3D): ``HeadSettings`` (defaults from ``ProbeConfig``
    and ``HEAD_PROTOCOL["seg"]``) plus the ignored label; a probe run's: :meth:`from_config`."""

    TASK: ClassVar[str] = "seg"

    ignore_index: int = 255
    label_stride: int = 4  # cross entropy on every k-th label pixel per direction (1: all; module docstring)

    @classmethod
    def from_config(cls, cfg: ProbeConfig, ignore_index: int, seed: int) -> "SegSettings":
        """A probe run's: ``cfg``'s settings and the data's ignored label."""
        return cls.of_run(cfg, seed, ignore_index=ignore_index)


def train_seg(patch: torch.Tensor, labels: torch.Tensor, num_classes: int, s: SegSettings) -> tuple[LinearSegHead, dict]:
    """Fit a head on cached features. patch [N, D, h, w], labels [N, H, W] int (ignore_index allowed)."""
    torch.manual_seed(s.seed)
    head = LinearSegHead(patch.shape[1], num_classes).to(patch.device, patch.dtype)
    out_size = tuple(labels.shape[-2:])
    k, it = s.label_stride, iter(range(s.iterations))

    def step(idx):
        r, c = label_phase(k, next(it))
        logits = head(patch[idx], out_size)[..., r::k, c::k]
        lab = labels[idx, r::k, c::k].long()
        ce = F.cross_entropy(logits, lab, ignore_index=s.ignore_index, reduction="sum")
        return ce / (lab != s.ignore_index).sum().clamp(min=1)  # the mean over kept pixels (0 if none)

    log = train_head(head, len(patch), step, iterations=s.iterations, batch_size=s.batch_size, lr=s.lr,
                     weight_decay=s.weight_decay, schedule="poly", warmup=s.warmup, seed=s.seed, desc="seg probe")
    return head, log


@torch.no_grad()
def predict_seg(head: LinearSegHead, patch: torch.Tensor, out_size: tuple[int, int], batch_size: int = 16) -> torch.Tensor:
    """Class ids [N, H, W] (int64)."""
    head.eval()
    return torch.cat([head(patch[i:i + batch_size], out_size).argmax(1) for i in range(0, len(patch), batch_size)])


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """[C, C] int64 counts, rows = ground truth, columns = prediction; ignored pixels are left out."""
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    idx = gt[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def seg_metrics(conf: torch.Tensor) -> dict:
    """miou, macc (class-mean, nan-skipping), aacc (pixel accuracy) and per-class IoU, from a confusion matrix."""
    conf = conf.double()
    tp = conf.diag()
    gt_area = conf.sum(1)
    union = gt_area + conf.sum(0) - tp
    iou = tp / union  # nan where a class is in neither prediction nor labels
    acc = tp / gt_area  # nan where a class has no labelled pixels
    return {"miou": float(torch.nanmean(iou)), "macc": float(torch.nanmean(acc)),
            "aacc": float(tp.sum() / conf.sum().clamp(min=1)), "iou_per_class": [float(x) for x in iou]}


def majority_baseline(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                      ignore_index: int = 255) -> dict:
    """Metrics of predicting the training set's most frequent class everywhere."""
    lab = train_labels[(train_labels != ignore_index) & (train_labels >= 0)].long()
    major = int(torch.bincount(lab, minlength=num_classes).argmax())
    return seg_metrics(confusion_matrix(torch.full_like(test_labels, major), test_labels, num_classes, ignore_index))


def majority_image(train_labels: torch.Tensor, num_classes: int, ignore_index: int = 255,
                   size: tuple[int, int] | None = None) -> tuple[int, torch.Tensor]:
    """(the training labels' most frequent class, [H, W] long each pixel's most frequent class over the training
    images [N, H, W]: a position prior, sky above and road below; the majority class where no image has a label).
    ``size`` (H, W): the image resized (nearest) to another label size."""
    t = train_labels.long()
    H, W = t.shape[-2:]
    valid = (t != ignore_index) & (t >= 0) & (t < num_classes)
    pixel = torch.arange(H * W).reshape(H, W).expand_as(t)
    counts = torch.bincount((pixel * num_classes + t)[valid], minlength=H * W * num_classes).reshape(H, W, num_classes)
    majority = int(counts.sum((0, 1)).argmax())
    image = torch.where(counts.sum(-1) > 0, counts.argmax(-1), torch.tensor(majority))
    if size is not None and tuple(size) != (H, W):
        image = F.interpolate(image[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()
    return majority, image


def majority_image_baseline(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                            ignore_index: int = 255) -> dict:
    """Metrics of predicting every test image as :func:`majority_image` (what a head must beat to read more than
    where a pixel is)."""
    _, image = majority_image(train_labels, num_classes, ignore_index, tuple(test_labels.shape[-2:]))
    return seg_metrics(confusion_matrix(image.expand_as(test_labels), test_labels, num_classes, ignore_index))
