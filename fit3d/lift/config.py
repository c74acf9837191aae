"""Stage 1 settings: ``LiftConfig`` (every field a ``fit3d lift`` option), with each method's own settings
nested under the method's name (``SolveConfig`` as ``LiftConfig.solve``: ``--solve.cg-ridge``; the old flat
spellings ``--solve-cg-ridge`` / ``solve_cg_ridge=`` remain as hidden aliases)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fit3d.config import check_choices, check_counts, check_memory, check_reals, option_error, vit_bytes
from fit3d.device import PRECISIONS
from fit3d.lift.methods import METHODS


@dataclass
class SolveConfig:
    """Settings of method ``solve`` (``LiftConfig.solve``; options ``--solve.FIELD``, in the pipeline
    ``--lift.solve.FIELD``). Colour iterations use the shared training fields (learning rates, density control)."""

    max_gaussians: int = field(default=60000, metadata={
        "help": "at most this many fused surfels (the voxel grows until the count fits)"})
    voxel: float = field(default=0.0, metadata={
        "help": "fusion voxel size in metres (0: voxel_factor x the median pixel footprint)"})
    voxel_factor: float = field(default=1.0, metadata={"help": "automatic voxel / pixel footprint"})
    min_views: int = field(default=1, metadata={
        "help": "keep voxels seen by at least this many training views (3 on a 12-view synthetic orbit left "
                "holes: held-out cosine 0.42 vs 0.77 with 1)"})
    carve_tol: float = field(default=0.0, metadata={
        "help": "free-space carving, drop fused voxels that over a tenth of the views seeing them see through by "
                "more than this fraction of the depth (0: off; 0.05 on RedKitchen: depth abs rel 0.055 -> 0.037, "
                "feature cosine unchanged)"})
    scale: float = field(default=0.6, metadata={
        "help": "surfel in-plane scale / max(voxel, pixel footprint)"})
    flat: float = field(default=0.1, metadata={"help": "surfel normal-axis scale / in-plane scale"})
    opacity: float = field(default=0.95, metadata={"help": "surfel opacity"})
    fill_holes: bool = field(default=True, metadata={
        "help": "give invalid / depth-edge pixels their nearest valid depth before fusing (a hole in the "
                "depth is a hole in the rendered features: single-view fit cosine 0.963 -> 0.991 on RedKitchen)"})
    geometry_iterations: int = field(default=300, metadata={
        "help": "colour-only optimisation iterations after fusing depth (0: none); RedKitchen after CG and "
                "the least-squares decoder: held-out cosine 0.955 / 0.959 / 0.962 for 0 / 100 / 300 (PSNR 16.4 / "
                "17.7 / 19.3 dB) at ~0.16 CPU s each"})
    geometry_iterations_per_view: float = field(default=8.0, metadata={
        "help": "at most this many colour-only iterations per training view (0: no cap): each iteration renders one "
                "view, so a few-view scene would otherwise revisit every view ~14 times for the fixed count (the "
                "demo's 21-view rooms: 168 instead of 300, held-out cosine -0.0009 / -0.0003, 84: -0.003 / -0.005; "
                "docs/speed.md); 38+ training views keep geometry_iterations"})
    nodepth_iterations: int = field(default=2000, metadata={
        "help": "colour-only optimisation iterations for scenes without depth (geometry from the points)"})
    targets_at: str = field(default="grid", metadata={
        "choices": ("grid", "render"),
        "help": "tokens as the grid loss sees them (each token over its pixels) or bilinearly upsampled"})
    cg_iterations: int = field(default=60, metadata={
        "help": "at most this many conjugate-gradient iterations on the least-squares feature problem, from "
                "the weighted average (0: the average alone); each a sparse product, ~0.3 s over 175 views at 55k "
                "Gaussians (docs/lift-solve.md)"})
    cg_tol: float = field(default=0.01, metadata={
        "help": "stop CG once the mean relative residual is below this (RedKitchen, every view: 39 "
                "iterations; held-out cosine 0.9655 / 0.9678 / 0.9682 at tol 0.05 / 0.02 / 0.01, 3x3 decoder)"})
    cg_ridge: float = field(default=1e-4, metadata={
        "help": "the least-squares problem's ridge, relative to each Gaussian's total pixel weight (the "
                "Jacobi preconditioner), when ridge_select is off or cannot run (fewer than 8 views, "
                "non-numba backends); held-out cosine with 1e-1 / 1e-2 / 1e-3 / 1e-4: RedKitchen 0.951 / 0.963 / "
                "0.970 / 0.971, the demo's 21-view rooms the other way round (0.896 / 0.889 / 0.870 / 0.839)"})
    ridge_select: bool = field(default=True, metadata={
        "help": "choose the ridge among 1e-1 / 1e-2 / 1e-3 / 1e-4 by how well CG on the other training "
                "views predicts every 8th (every 4th below 16 views); then CG over all of them from the chosen "
                "one's features (RedKitchen picks 1e-4, the demo rooms 1e-2 / 1e-1; +13 s on RedKitchen)"})
    ridge_select_iterations: int = field(default=20, metadata={
        "help": "with ridge_select, CG iterations per candidate ridge and of the final solve over "
                "every view (warm-started from the chosen candidate's features)"})
    view_stride: int = field(default=1, metadata={
        "help": "every k-th training view enters the weighted average and the least-squares passes "
                "(RedKitchen, CG to tol 0.02: 0.9678 with every view, 0.9671 with every 2nd)"})
    decoder: str = field(default="lsq", metadata={
        "choices": ("lsq", "pca"),
        "help": "the decoder after the features are solved: lsq (every tap of its Conv2d by ridge least "
                "squares from the rendered features to the training tokens: RedKitchen held-out cosine 0.952 -> "
                "0.962 with a 3x3 one) or pca (the training tokens' PCA basis "
                "the features are solved in, other taps zero)"})
    decoder_kernel: int = field(default=7, metadata={
        "help": "the decoder's Conv2d kernel size (0: decoder_kernel, optimize's 3); the least-squares fit "
                "affords a wider one: RedKitchen 0.9682 / 0.9693 with 5 / 7 (the normal matrix grows as k^4: "
                "7x7 over every view 14 s)"})
    decoder_stride: int = field(default=2, metadata={
        "help": "every k-th training view enters the least-squares decoder (RedKitchen 7x7: 0.9693 / 0.9696 "
                "/ 0.9681 with every view / 2nd / 3rd; 3x3: 0.962 with every view, 0.958 with every 4th)"})
    refine_iterations: int = field(default=0, metadata={
        "help": "Adam iterations of the feature loss on f and the decoder after the solve (0: none; "
                "+0.0015 for 200 after 24 CG iterations on RedKitchen)"})
    joint_iterations: int = field(default=0, metadata={
        "help": "then this many iterations of optimize's colour + feature loss on everything (geometry too, "
                "with feature gradients into it; no density control), solve as optimize's initialiser (0: none; "
                "RedKitchen +0.0045 for 400 from a converged solve)"})

    def validate(self, prefix: str = "solve.") -> None:
        """``Fit3DError`` naming the option (``--<prefix>field``) for any value out of range."""
        check_choices(self, prefix)
        check_counts(self, {"max_gaussians": 1, "min_views": 0, "cg_iterations": 0, "view_stride": 1,
                            "refine_iterations": 0, "joint_iterations": 0, "geometry_iterations": 0,
                            "nodepth_iterations": 0, "decoder_stride": 1, "decoder_kernel": 0,
                            "ridge_select_iterations": 0}, prefix)
        inf = float("inf")
        check_reals(self, {"voxel": (0, inf), "voxel_factor": (1e-6, inf), "carve_tol": (0, inf),
                           "scale": (1e-6, inf), "flat": (1e-6, inf), "opacity": (1e-6, 1 - 1e-6),
                           "cg_tol": (0, inf), "cg_ridge": (0, inf),
                           "geometry_iterations_per_view": (0, inf)}, prefix)
        if self.decoder_kernel > 0 and self.decoder_kernel % 2 == 0:  # 0: LiftConfig.decoder_kernel
            raise option_error(self, "decoder_kernel", "must be odd (the decoder keeps the render size)", prefix)


@dataclass
class BackprojectedConfig:
    """Settings of method ``backprojected`` (``LiftConfig.backprojected``; ``--backprojected.FIELD``)."""

    stride: int = field(default=4, metadata={
        "help": "one Gaussian per this many pixels in x and y of every training view with valid depth"})
    footprint: float = field(default=1.5, metadata={
        "help": "Gaussian radius (1 sigma) / half the stride's pixel footprint at its depth"})
    opacity: float = field(default=0.95, metadata={"help": "opacity of every Gaussian"})
    feature_input: str = field(default="render", metadata={
        "choices": ("render", "cache"),
        "help": "the features lifted: render (the backbone on each view at the render size: a 7 x 5 token grid at "
                "width 96) or cache (the scene's tokens at --feature-size, e.g. 224: the Stage 2 input)"})

    def validate(self, prefix: str = "backprojected.") -> None:
        """``Fit3DError`` naming the option (``--<prefix>field``) for any value out of range."""
        check_choices(self, prefix)
        check_counts(self, {"stride": 1}, prefix)
        check_reals(self, {"footprint": (1e-6, float("inf")), "opacity": (1e-6, 1 - 1e-6)}, prefix)


@dataclass
class LiftConfig:
    """Stage 1 settings. Learning rates: FiT3D's values are the reference (see the help of each)."""

    method: str = field(default="solve", metadata={
        "choices": tuple(METHODS),
        "help": "Stage 1 method (fit3d.lift.methods): " + "; ".join(f"{n}: {m.help}" for n, m in METHODS.items())})
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
    # each method's own settings (fit3d.lift.methods: only the chosen method's enter the recorded settings)
    solve: SolveConfig = field(default_factory=lambda: SolveConfig(), metadata={
        "flat_alias": True, "help": "method solve (fit3d.lift.solve, docs/lift-solve.md)"})
    backprojected: BackprojectedConfig = field(default_factory=lambda: BackprojectedConfig(), metadata={
        "flat_alias": True, "help": "method backprojected (fit3d.lift.backprojected)"})
    # run
    # run (volatile: these do not change the result, so a rerun may change them and still resume / reuse)
    checkpoint_every: int = field(default=500, metadata={
        "volatile": True, "help": "checkpoint period in iterations (0: never)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"volatile": True, "help": "auto / cpu / cuda[:i]"})
    precision: str = field(default="auto", metadata={
        "volatile": True, "choices": PRECISIONS,
        "help": "dtype of the backbone's target features: auto = bf16 autocast on CUDA and on CPUs with bf16 hardware "
                "(AMX / AVX-512 BF16), else float32 (the resolved value is recorded and checked on resume)"})
    raster_backend: str = field(default="auto", metadata={
        "volatile": True, "choices": ("auto", "torch", "numba", "gsplat", "reference"),
        "help": "fit3d.splat.rasterize backend (numba: CPU only; gsplat: CUDA only)"})
    pca_views: int = field(default=2, metadata={"volatile": True, "help": "held-out views in heldout_pca.png (0: none)"})
    progress: bool = field(default=True, metadata={"volatile": True, "help": "show progress bars"})
    cache_dir: str | None = field(default=None, metadata={
        "volatile": True, "help": "backbone token cache (fit3d.models.tokens; default <out>/<scene>/cache, 'none' off); "
                                  "fit3d probe --cache-dir the same folder reuses the tokens of the same images"})

    def validate(self, prefix: str = "") -> None:
        """``Fit3DError`` naming the option (``--<prefix>field``, e.g. ``--lift.solve.cg-ridge`` in the pipeline)
        for any value out of range (called before any work)."""
        from fit3d.device import check_device
        from fit3d.errors import Fit3DError

        check_choices(self, prefix)
        check_counts(self, {"feature_dim": 1, "width": 1, "height": 1, "feature_size": 1, "iterations": 1,
                            "heldout_every": 0, "max_frame": 0, "max_sh_degree": 0, "decoder_kernel": 1,
                            "init_points": 1, "max_gaussians": 1, "checkpoint_every": 0, "pca_views": 0}, prefix)
        inf = float("inf")
        check_reals(self, {"lr_means": (1e-30, inf), "lr_means_final": (1e-30, inf), "lr_sh_dc": (0, inf),
                           "lr_sh_rest": (0, inf), "lr_opacity": (0, inf), "lr_scaling": (0, inf),
                           "lr_rotation": (0, inf), "lr_features": (1e-30, inf), "lr_features_final": (1e-30, inf),
                           "lr_decoder": (0, inf), "lambda_dssim": (0, 1), "feature_weight": (0, inf),
                           "init_voxel": (0, inf), "init_opacity": (1e-6, 1 - 1e-6),
                           "densify_grad_threshold": (0, inf), "percent_dense": (0, inf), "min_opacity": (0, 1),
                           "max_screen_frac": (1e-6, inf)}, prefix)
        if self.max_sh_degree > 3:
            raise option_error(self, "max_sh_degree", "must be 0..3 (the Gaussians store SH up to degree 3)", prefix)
        if self.decoder_kernel % 2 == 0:
            raise option_error(self, "decoder_kernel", "must be odd (the decoder keeps the render size)", prefix)
        for name, m in METHODS.items():  # every method's settings are checked: a bad value is never silent
            if m.config:
                getattr(self, m.config).validate(f"{prefix}{m.config}.")
        check_device(self.device, f"--{prefix}device")
        h = self.height or self.width / 4  # the render height for an aspect up to 4:1 (a lower bound)
        check_memory(self, "width", self.width * h * 4 * (4 + self.feature_dim) * 3,
                     "one rendered view: colour, opacity and features with their gradients", prefix)
        check_memory(self, "feature_size", vit_bytes(self.feature_size, self.feature_size / 4),
                     "the backbone's attention over one view", prefix)
        import torch

        cuda = self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())
        if (self.raster_backend == "gsplat" and not cuda) or (self.raster_backend == "numba" and cuda):
            raise Fit3DError(f"--{prefix}raster-backend {self.raster_backend} does not run on device "
                             f"{self.device!r} (numba: CPU only, gsplat: CUDA only)")

    def render_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) for source images of ``width`` x ``height``."""
        return self.width, self.height or max(1, round(self.width * height / width))
