"""Stage 2 configuration (defaults as FiT3D: AdamW 1e-5, wd 1e-4, batch 2, clip 0.1, 1 epoch, seed 42)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fit3d.device import PRECISIONS

TARGET_AT = ("lift", "train")  # where Stage 2 targets are rendered: the scene's lift resolution / the training one
ADAPTERS = ("none", "lora")  # what is trained: the whole backbone (after freeze_blocks) / LoRA adapters (peft)
LORA_TARGETS = ("qkv", "attention", "all")  # LoRA on q/k/v; + the attention output projection; + the MLP
ANCHOR_AT = ("opacity", "everywhere", "unmasked", "spread")  # where the anchor to the frozen original applies
TARGET_MODES = ("rendered", "residual", "projection")  # fit3d.finetune.residual
CLS_ALIGNS = ("none", "ridge", "shift", "original")  # fit3d.finetune.cls_align
TARGET_VIEWS = ("all", "others")  # which views' Gaussians a view's target is rendered from (fit3d.finetune.data)
TARGET_MEANS = ("target", "original")  # whose per-view mean token the Stage 2 target carries (fit3d.finetune.residual)
TARGET_POOLS = ("auto", "bilinear", "area")  # how the decoded render is brought to the token grid
ANCHOR_TEACHERS = ("original", "ema")  # what the anchor pulls toward: the frozen original / an EMA of the model


@dataclass
class FinetuneConfig:
    """Stage 2 settings. ``backbone``, ``model_path``, ``device`` and ``seed`` mean what they mean in every
    stage's config."""

    backbone: str = field(default="dinov2_small", metadata={"help": "registered backbone name (see `fit3d backbones`)"})
    model_path: str | None = field(default=None, metadata={
        "help": "local weights folder or hub id (default: env FIT3D_MODEL_PATH / the registry's default)"})
    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=2, metadata={"help": "images per step (per process under torchrun)"})
    grad_clip: float = field(default=0.1, metadata={"help": "clip the global gradient norm to this (0 = off)"})
    epochs: int = field(default=1, metadata={"help": "passes over all training views of all scenes"})
    max_steps: int | None = field(default=None, metadata={
        "help": "train exactly this many optimiser steps, over as many epochs as that takes "
                "(default: --epochs passes over the views)"})
    seed: int = field(default=42, metadata={"help": "seed for the view order, flips and initialisation"})
    freeze_blocks: int = field(default=0, metadata={
        "help": "freeze the patch embedding and the first k transformer blocks (0 = whole backbone trained; "
                "k < 0: train only the last -k blocks)"})
    freeze_last_blocks: int = field(default=0, metadata={
        "help": "also freeze the last k transformer blocks (0 = FiT3D). The last block's [CLS] output reaches no "
                "Stage 2 target, so training that block moves [CLS] freely (issue 21: the depth head's metric "
                "scale); frozen, it maps the trained blocks' tokens as the original did"})
    adapter: str = field(default="none", metadata={
        "choices": ADAPTERS,
        "help": "none: train the backbone's weights; lora: train low-rank adapters (peft LoRA) on the attention "
                "(see --lora-targets) with the backbone frozen, merged into the weights before saving"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (adapter=lora)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha (update = alpha / r * B A)"})
    lora_targets: str = field(default="qkv", metadata={
        "choices": LORA_TARGETS,
        "help": "layers that get LoRA adapters: qkv (attention query/key/value), attention (+ its output "
                "projection), all (+ the MLP)"})
    anchor_weight: float = field(default=0.0, metadata={
        "help": "weight of an L1 term pulling the fine-tuned patch tokens toward the frozen original's "
                "(0 = off, FiT3D); per token it is weighted as --anchor-at says"})
    anchor_at: str = field(default="opacity", metadata={
        "choices": ANCHOR_AT,
        "help": "opacity: weight 1 - rendered opacity (where the 3D target is unreliable or absent); everywhere: "
                "weight 1 on every token (plain distillation); unmasked: weight 1 on the tokens the 3D loss masks out; "
                "spread: where the Gaussians composited at a token disagree (multi-view spread of the target, see "
                "--anchor-spread) or opacity is low"})
    anchor_spread: float = field(default=0.25, metadata={
        "help": "anchor_at=spread: the relative spread of the rendered features (compositing-weighted variance of "
                "the Gaussians' f over their mean square, 0 = every contributor agrees) at which a token's anchor "
                "weight reaches 1; the weight is max(1 - opacity, min(1, spread / this)). 0.25: about the 90th "
                "percentile of back-projected 7-Scenes / generated-room targets (median ~0.1)"})
    anchor_cls: float = field(default=0.0, metadata={
        "help": "weight of an L1 term keeping the fine-tuned [CLS] token at the frozen original's (0 = off, FiT3D). "
                "Stage 2 has no 3D target for [CLS] but trains the blocks that make it; a drifted [CLS] costs the "
                "probes that read it (the depth head's metric scale; issue 21, docs/generalize.md)"})
    cls_restore_steps: int = field(default=0, metadata={
        "help": "after the Stage 2 steps, this many more steps that pull the [CLS] token back to the frozen original's "
                "while holding every patch token at the Stage 2 result (a frozen copy taken when the Stage 2 steps "
                "end); no rendering. 0 = off (FiT3D). Stage 2 has no target for [CLS] but moves it, which costs the "
                "probes that read it; an anchor during Stage 2 (--anchor-cls) fights the 3D targets instead. At full "
                "scale it did not remove the depth head's loss across scenes and cost CamVid (issue 21, "
                "docs/generalize.md)"})
    cls_restore_weight: float = field(default=1.0, metadata={
        "help": "cls_restore_steps: weight of the [CLS] L1 term against the patch-token L1 term (weight 1)"})
    cls_restore_lr: float = field(default=1e-5, metadata={
        "help": "cls_restore_steps: learning rate of those steps (same AdamW state as Stage 2's)"})
    cls_align: str = field(default="none", metadata={
        "choices": CLS_ALIGNS,
        "help": "none: the fine-tuned model's [CLS] as Stage 2 leaves it (FiT3D); ridge: after Stage 2, an affine map "
                "on the output [CLS] fitted in closed form to give the frozen original's [CLS] on the Stage 2 views "
                "(ridge toward the identity, its weight cross-validated over the scenes), saved beside the weights "
                "(model/cls_map.safetensors); shift: only the mean offset (W = I); original: no map, the output [CLS] is the "
                "original's own, computed by the original's blocks after the prefix Stage 2 froze (model/"
                "cls_branch.safetensors; 1.5x the forward when 6 of 12 blocks are trained; shift where Stage 2 trained every "
                "block). The patch tokens do not change. Stage 2 has no target for [CLS] but "
                "moves it, which costs the probes that read it (fit3d.finetune.cls_align, issue 21)"})
    cls_align_views: int = field(default=0, metadata={
        "help": "cls_align: fit the map on this many of the Stage 2 training views, evenly spaced over them (scene by "
                "scene); 0 = every view. The fit runs both models once per view"})
    interpolate: float = field(default=1.0, metadata={
        "help": "weight-space ensemble (WiSE-FT): the saved model's weights are original + this x (fine-tuned - "
                "original); 1 = the fine-tuned weights (FiT3D), smaller keeps more of the original "
                "(fit3d.finetune.wise; one model, no extra cost at inference)"})
    weight_average: float = field(default=0.0, metadata={
        "help": "the saved weights are an exponential moving average of the trained weights over the Stage 2 steps, "
                "with a time constant of this fraction of them (0.2: about the last fifth of the run; 0 = the last step's "
                "weights, FiT3D). Averages out the step-to-step noise of which views came last "
                "(fit3d.finetune.averaging)"})
    anchor_teacher: str = field(default="original", metadata={
        "choices": ANCHOR_TEACHERS,
        "help": "what the anchor term pulls toward: original (the frozen pretrained model) or ema (an exponential "
                "moving average of the model being trained, a self-distillation teacher as Splat-and-Distill's; "
                "limits how fast the features drift, not how far)"})
    ema_momentum: float = field(default=0.999, metadata={
        "help": "anchor_teacher=ema: teacher = m * teacher + (1 - m) * model after every step"})
    target_mode: str = field(default="rendered", metadata={
        "choices": TARGET_MODES,
        "help": "rendered: the rendered, decoded 3D-aware target (FiT3D); residual: its part inside the scene's "
                "lifted subspace (the decoder's main directions) plus the frozen original's tokens outside it, so "
                "the model is not taught to drop what the f-dim lift cannot carry; projection: the original's "
                "tokens projected onto that subspace (a control without 3D signal) (fit3d.finetune.residual)"})
    target_mean: str = field(default="target", metadata={
        "choices": TARGET_MEANS,
        "help": "target: the target as it is (FiT3D); original: each view's target with its mean token over the "
                "unmasked tokens replaced by the frozen original's mean for that view. A 3D-consistent target is "
                "the same for a surface from every view, so it averages away what is view-dependent about a whole "
                "image (e.g. how far the camera is); this keeps the view's own global component and takes the 3D "
                "signal from the tokens' deviations from it (fit3d.finetune.residual.with_view_mean)"})
    target_views: str = field(default="all", metadata={
        "choices": TARGET_VIEWS,
        "help": "all: a view's target is rendered from every Gaussian (FiT3D); others: without the Gaussians that "
                "view itself contributed (back-projected lifts record them), so the target at a pixel is only what "
                "the other views saw there, as Splat-and-Distill renders its teacher from other views: nothing of "
                "the view's own tokens to copy"})
    subspace_rank: int = field(default=0, metadata={
        "help": "target_mode residual / projection: dimensions of each scene's lifted subspace (0 = the decoder's "
                "input width f)"})
    resolution: list[int] | None = field(default=None, metadata={
        "help": "W H of the rendered view and backbone input, rounded down to a patch multiple "
                "(default: each scene's lift resolution, rounded down)"})
    target_at: str = field(default="lift", metadata={
        "choices": TARGET_AT,
        "help": "resolution the 3D-aware targets are rendered at, before decoding and resizing to the patch grid: "
                "lift (each scene's lift resolution: the scale its decoder was trained at, and cheap) or train "
                "(the training resolution, as FiT3D)"})
    target_pool: str = field(default="auto", metadata={
        "choices": TARGET_POOLS,
        "help": "how the decoded render reaches the token grid: bilinear (FiT3D: sample at the token centres), area "
                "(the mean over each token's pixels: what a solve lift fitted, its field is free within a token), "
                "auto (area for scenes lifted with --method solve and solve_targets_at grid, else bilinear)"})
    alpha_threshold: float = field(default=0.5, metadata={
        "help": "tokens whose rendered opacity (bilinearly downsampled to the patch grid) is below this "
                "are masked out of the loss"})
    flip_prob: float = field(default=0.5, metadata={"help": "probability of a horizontal flip of image+target+mask"})
    workers: int | None = field(default=None, metadata={"volatile": True,
        "help": "DataLoader workers rendering the next batches while the backbone trains (0 = render inline; "
                "default: from the cores available, fit3d.finetune.data.render_workers)"})
    render_on: str = field(default="auto", metadata={"volatile": True, "choices": ("auto", "cpu", "device"),
        "help": "where targets render: cpu (numba, in the render workers or inline), device (the view's visible "
                "Gaussians moved to the training device: gsplat on CUDA; inline, so --workers 0), or auto: device "
                "on CUDA with gsplat unless --workers is above 0, else cpu"})
    worker_threads: int = field(default=1, metadata={"volatile": True, "help": "torch threads inside each render worker"})
    worker_start: str = field(default="spawn", metadata={"volatile": True, "choices": ("spawn", "forkserver", "fork"),
        "help": "how render workers start: spawn (safe: the renderer's OpenMP/numba threads do not survive "
                "fork; Gaussians still cross once through shared memory), forkserver, or fork"})
    prefetch: int = field(default=2, metadata={"volatile": True, "help": "batches each worker renders ahead"})
    checkpoint_every: int = field(default=200, metadata={"volatile": True,
        "help": "write a resumable checkpoint every this many steps (0 = only at the end)"})
    log_every: int = field(default=10, metadata={"volatile": True, "help": "log the running loss every this many steps"})
    device: str = field(default="auto", metadata={"volatile": True,
        "help": "auto / cpu / cuda / cuda:N (auto: cuda when available; under torchrun cuda:LOCAL_RANK)"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (never on CPU)"})
    precision: str = field(default="auto", metadata={
        "volatile": True, "choices": PRECISIONS,
        "help": "dtype of the frozen original's forward in each step (the residual target's and the anchor's "
                "reference; no gradient flows through it): auto = bf16 autocast on CUDA and on CPUs with bf16 "
                "hardware (AMX / AVX-512 BF16), else float32. Training stays float32 on the CPU (--amp: CUDA); "
                "the held-out evaluation and --cls-align run at the backbone's default. The resolved value is "
                "recorded and checked on resume"})
    evaluate: bool = field(default=True, metadata={
        "help": "after training, measure original vs fine-tuned features against the rendered targets on "
                "held-out views"})
    progress: bool = field(default=True, metadata={"volatile": True, "help": "show a tqdm progress bar (rank 0)"})
    recipe: str | None = field(default=None, metadata={"volatile": True, "set_by": "--recipe",
        "help": "the named preset these settings started from (fit3d.finetune.recipes), recorded; chosen with "
                "--recipe, which makes the preset the base of every other option"})

    def validate(self, prefix: str = "") -> None:
        """``Fit3DError`` naming the option (``--<prefix>field``: ``--finetune.lr`` in the pipeline) for any value
        out of range (called before any work)."""
        from fit3d.config import check_choices, check_counts, check_memory, check_reals, check_size, option_error, vit_bytes
        from fit3d.device import check_device

        check_choices(self, prefix)
        check_counts(self, {"batch_size": 1, "epochs": 1, "max_steps": 1, "workers": 0,
                            "worker_threads": 1, "prefetch": 1, "checkpoint_every": 0, "log_every": 0,
                            "lora_rank": 1, "subspace_rank": 0, "freeze_last_blocks": 0,
                            "cls_restore_steps": 0, "cls_align_views": 0}, prefix)
        inf = float("inf")
        check_reals(self, {"lr": (0, inf), "weight_decay": (0, inf), "grad_clip": (0, inf),
                           "alpha_threshold": (0, 1), "flip_prob": (0, 1), "lora_alpha": (0, inf),
                           "anchor_weight": (0, inf), "anchor_spread": (1e-6, 1), "anchor_cls": (0, inf),
                           "cls_restore_weight": (0, inf), "cls_restore_lr": (0, inf),
                           "ema_momentum": (0, 1), "weight_average": (0, 1)}, prefix)
        if not 0.0 < float(self.interpolate) <= 1.0:
            raise option_error(self, "interpolate", "must be in (0, 1] (1 = the fine-tuned weights)", prefix)
        if isinstance(self.freeze_blocks, bool) or not isinstance(self.freeze_blocks, int):
            raise option_error(self, "freeze_blocks", "must be an integer (k < 0: train only the last -k blocks)",
                               prefix)
        if self.cls_restore_steps and self.adapter != "none":
            raise option_error(self, "cls_restore_steps", "needs adapter=none (the frozen copy is of the backbone's "
                                                          "own weights)", prefix)
        if self.weight_average and self.adapter != "none":
            raise option_error(self, "weight_average", "needs adapter=none (it averages the backbone's own weights)",
                               prefix)
        if self.weight_average and self.cls_restore_steps:
            raise option_error(self, "weight_average", "averages the Stage 2 steps: not with cls_restore_steps",
                               prefix)
        if self.anchor_teacher == "ema" and self.adapter != "none":
            raise option_error(self, "anchor_teacher", "ema needs adapter=none (the teacher averages the backbone's "
                                                       "own weights)", prefix)
        if self.render_on == "device" and self.workers:
            raise option_error(self, "render_on", f"device renders in the training process: use --{prefix}workers 0, "
                                                  f"not {self.workers}", prefix)
        check_size(self, "resolution", prefix)
        if self.resolution:
            check_memory(self, "resolution", vit_bytes(*self.resolution) * 2 * self.batch_size,
                         "the backbone's attention over a batch, with gradients", prefix)
        check_device(self.device, f"--{prefix}device")
