"""``ProbeConfig``: every option and default of ``fit3d probe`` (the protocol that uses it:
``fit3d.probe.protocol``), and the protocol's head optimiser per task (``HEAD_PROTOCOL``): the heads'
training settings (``DepthSettings`` / ``SegSettings``) are derived from these, never defaulted elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from fit3d.config import check_choices, check_counts, check_memory, check_reals, check_size, option_error, vit_bytes
from fit3d.device import PRECISIONS, check_device
from fit3d.probe.datasets import DATASETS
from fit3d.probe.sources import KINDS

TASKS = ("seg", "depth", "corr", "cls")
CORR_PROTOCOLS = ("fit3d", "probe3d")


@dataclass(frozen=True)
class HeadProtocol:
    """The protocol's optimiser of one task's linear head (DINOv2's heads, FiT3D's evaluation): AdamW at ``lr``
    (``ProbeConfig.lr`` overrides it), ``weight_decay``, linear warmup over ``warmup_share`` of the iterations
    (``ProbeConfig.warmup`` overrides it)."""

    lr: float
    weight_decay: float
    warmup_share: float


# The one place of these numbers: DepthSettings / SegSettings take them (``from_config``).
HEAD_PROTOCOL = {"depth": HeadProtocol(lr=1e-4, weight_decay=0.01, warmup_share=12800 / 38400),
                 "seg": HeadProtocol(lr=1e-3, weight_decay=1e-4, warmup_share=1500 / 40000)}


@dataclass
class ProbeConfig:
    task: str = field(default="depth", metadata={"help": "what to probe", "choices": TASKS})
    data: str = field(default="", metadata={"help": "dataset folder (train split; also test unless --eval-data)"})
    eval_data: str | None = field(default=None, metadata={"help": "separate dataset folder for the test split"})
    dataset: str = field(default="auto", metadata={"help": "layout", "choices": DATASETS})
    backbone: str = field(default="dinov2_small", metadata={"help": "registered backbone name"})
    model_path: str | None = field(default=None, metadata={"help": "local weights of the backbone"})
    finetuned: str | None = field(default=None, metadata={"help": "fit3d fine-tuned folder (finetuned/concat)"})
    features: list[str] = field(default_factory=lambda: ["original"],
                                metadata={"help": "feature sources", "choices": KINDS})
    layers: list[int] | None = field(default=None, metadata={"help": "backbone layers (e.g. 8 9 10 11: linear4)"})
    out: str = field(default="runs/probe", metadata={"help": "output folder (probe.json, probe.md, figure)"})
    cache_dir: str | None = field(default=None, metadata={"help": "feature cache (default <out>/cache; 'none' off)"})
    resolution: list[int] = field(default_factory=lambda: [448, 336],
                                  metadata={"help": "probe resolution W H (a patch multiple; 448x336 = 32x24 /14)"})
    iterations: int = field(default=1500, metadata={"help": "head training iterations"})
    batch_size: int = field(default=8, metadata={"help": "images per iteration"})
    lr: float | None = field(default=None, metadata={"help": "AdamW lr (default: the task's, HEAD_PROTOCOL: "
                                                              "seg 1e-3, depth 1e-4)"})
    warmup: int | None = field(default=None, metadata={"help": "warmup iterations (default the task's share of "
                                                               "--iterations: seg 1500/40k, depth 12.8k/38.4k)"})
    seed: int = field(default=0, metadata={"help": "seed of everything else (and the heads' when --seeds is not given)"})
    seeds: list[int] | None = field(default=None, metadata={
        "help": "head seeds (init, batch order): one head per source and seed, all trained in one batched pass; "
                "metrics are the mean over seeds, with std and per-seed numbers in probe.json (default [seed])"})
    num_classes: int = field(default=0, metadata={"help": "seg classes (NYUv2: 13 or 40; 0 = dataset's)"})
    min_depth: float = field(default=1e-3, metadata={"help": "depth bins start"})
    max_depth: float | None = field(default=None, metadata={"help": "depth bins end (default the dataset's: "
                                                                    "10 NYU/ScanNet/7-Scenes, 20 ScanNet++, 80 KITTI)"})
    train_frames: str = field(default="0-398", metadata={"help": "frame-number range of training views (scenes)"})
    test_frames: str = field(default="400-498", metadata={"help": "frame-number range of test views (scenes)"})
    val_frames: str | None = field(default=None, metadata={
        "help": "depth: frame-number range carved out of the training views as a validation split; the head "
                "keeps its checkpoint with the best validation abs rel (the protocol's best checkpoint without "
                "looking at the test views), e.g. 320-398"})
    val_every: int = field(default=100, metadata={"help": "validate the depth head every this many iterations"})
    max_items: int = field(default=0, metadata={"help": "cap images per split (evenly spaced; 0 = all)"})
    protocol: str = field(default="fit3d", metadata={
        "help": "corr: fit3d = grid queries of frame-gap pairs, recall within 1/2/4 patches; probe3d = El Banani "
                "et al.'s pairs across the rotation range, quarter-resolution valid-depth points, mutual NN with "
                "a ratio test, recall of the top matches within 5/10/20 px (docs/probe3d-corr.md)",
        "choices": CORR_PROTOCOLS})
    gaps: list[int] = field(default_factory=lambda: [2, 10, 20, 40],
                            metadata={"help": "corr fit3d: frame-number gaps of the pairs"})
    rot_edges: list[float] | None = field(default=None, metadata={
        "help": "corr: relative-rotation bin edges in degrees (default fit3d 0 10 20 40, probe3d 0 15 30 60 180)"})
    depth_tol: float = field(default=0.05, metadata={"help": "corr fit3d: relative depth tolerance of the occlusion check"})
    num_corr: int = field(default=1000, metadata={"help": "corr probe3d: matches kept per pair (top ratio-test weight)"})
    pairs_per_bin: int = field(default=50, metadata={"help": "corr probe3d: pairs drawn per rotation bin"})
    min_overlap: float = field(default=0.1, metadata={
        "help": "corr probe3d: least share of a pair's valid points that reproject into the other view"})
    corr_stride: int = field(default=1, metadata={
        "help": "corr probe3d: use every this-many-th valid-depth pixel of the quarter-resolution views (1 = all)"})
    cls_size: int = field(default=224, metadata={
        "help": "cls: images resized (shorter side to this / 0.875) and centre-cropped to this square size"})
    knn_k: int = field(default=20, metadata={"help": "cls: neighbours voting in the k-NN classifier (DINO: 20)"})
    knn_temperature: float = field(default=0.07, metadata={
        "help": "cls: k-NN vote weight exp(cosine / this) (DINO: 0.07)"})
    figure: int = field(default=4, metadata={"help": "test images in the figure (0 = none)"})
    device: str = field(default="auto", metadata={"volatile": True, "help": "auto / cpu / cuda / cuda:N"})
    precision: str = field(default="auto", metadata={
        "volatile": True, "choices": PRECISIONS,
        "help": "dtype of the frozen features: auto = bf16 autocast on CUDA and on CPUs with bf16 hardware (AMX / "
                "AVX-512 BF16), else float32 (the resolved value is recorded and checked on a rerun)"})
    overwrite: bool = field(default=False, metadata={"volatile": True,
        "help": "replace an earlier probe in --out made with other settings (without it such a rerun is refused)"})
    extract_batch: int = field(default=8, metadata={"help": "images per backbone forward"})

    @property
    def head_seeds(self) -> list[int]:
        return [int(s) for s in self.seeds] if self.seeds else [int(self.seed)]

    def validate(self, prefix: str = "") -> None:
        """``Fit3DError`` naming the option (``--<prefix>field``: ``--probe.iterations`` in the pipeline) for any
        value out of range (called before any work)."""
        check_choices(self, prefix)
        check_counts(self, {"iterations": 1, "batch_size": 1, "num_classes": 0, "val_every": 1, "max_items": 0,
                            "figure": 0, "extract_batch": 1, "num_corr": 1, "pairs_per_bin": 1, "corr_stride": 1,
                            "warmup": 0, "cls_size": 14, "knn_k": 1}, prefix)
        inf = float("inf")
        check_reals(self, {"lr": (0, inf), "min_depth": (0, inf), "max_depth": (0, inf), "depth_tol": (0, inf),
                           "min_overlap": (0, 1), "knn_temperature": (1e-6, inf)}, prefix)
        check_size(self, "resolution", prefix)
        if self.resolution:
            w, h = self.resolution
            check_memory(self, "resolution", vit_bytes(w, h) + 3 * 4 * w * h, "the backbone's attention over one image", prefix)
        if self.max_depth is not None and self.max_depth <= self.min_depth:
            raise option_error(self, "max_depth", f"must be above --{prefix}min-depth {self.min_depth}", prefix)
        if not self.features:
            raise option_error(self, "features", f"expected one or more of {', '.join(KINDS)}", prefix)
        check_device(self.device, f"--{prefix}device")


@dataclass
class HeadSettings:
    """A linear head's training: iterations, batch, AdamW lr / weight decay, warmup iterations, seed. Defaults:
    ``ProbeConfig``'s values and the task's ``HEAD_PROTOCOL`` (``lr`` / ``weight_decay`` / ``warmup`` None
    become the protocol's); ``DepthSettings`` / ``SegSettings`` add their task's fields."""

    TASK: ClassVar[str] = ""

    iterations: int = ProbeConfig.iterations
    batch_size: int = ProbeConfig.batch_size
    lr: float | None = None
    weight_decay: float | None = None
    warmup: int | None = None  # None: the protocol's warmup share of the iterations
    seed: int = ProbeConfig.seed

    def __post_init__(self) -> None:
        p = HEAD_PROTOCOL[self.TASK]
        self.lr = p.lr if self.lr is None else self.lr
        self.weight_decay = p.weight_decay if self.weight_decay is None else self.weight_decay
        if self.warmup is None:
            self.warmup = round(self.iterations * p.warmup_share)

    @classmethod
    def of_run(cls, cfg: ProbeConfig, seed: int, **task):
        """The settings of a probe run of ``cfg`` with head seed ``seed`` (``task``: the task's own fields)."""
        return cls(iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup, seed=seed,
                   **task)


def probe_settings(cfg: ProbeConfig) -> dict:
    """What a probe's result depends on: ``fit3d.run.result_settings`` plus ``precision`` resolved on its device
    (fp32 / bf16). probe.json records it (``config``) and a rerun is checked against it."""
    from fit3d.device import resolve_device, resolve_precision
    from fit3d.run import result_settings

    return {**result_settings(cfg), "precision": resolve_precision(cfg.precision, resolve_device(cfg.device))}
