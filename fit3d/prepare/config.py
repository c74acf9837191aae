"""``fit3d prepare`` settings (``PrepareConfig``): one dataclass, every field a command-line option."""

from __future__ import annotations

from dataclasses import dataclass, field

CAMERA_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE")


@dataclass
class PrepareConfig:
    """How a folder of photos or a video becomes a posed scene (structure from motion with pycolmap)."""

    max_frames: int = field(default=150, metadata={
        "help": "at most this many images: a video gives one frame per equal time window (the sharpest of the "
                "window), a larger photo folder is thinned evenly in name order"})
    max_size: int = field(default=1600, metadata={
        "help": "long side in pixels of the images the scene keeps; larger photos and video frames are "
                "downscaled first (0: keep the input size)"})
    sift_max_size: int = field(default=640, metadata={
        "help": "long side at which SIFT features are extracted (COLMAP: 3200); on the 50 fox photos 640 / 800 / "
                "1024 register all at a median rotation error of 0.60 / 0.61 / 0.58 deg for 83 / 132 / 247 CPU s "
                "(bench/prepare_fox.py): raise it for large scenes with small detail"})
    max_features: int = field(default=4096, metadata={"help": "SIFT features per image (COLMAP: 8192)"})
    matching: str = field(default="auto", metadata={
        "choices": ("auto", "sequential", "exhaustive"),
        "help": "image pairs to match: sequential (each image with its next --sequential-overlap ones and those "
                "2, 4, 8, ... ahead: video), exhaustive (every pair); auto: sequential for a video or more than "
                "--exhaustive-max photos, else exhaustive"})
    sequential_overlap: int = field(default=10, metadata={
        "help": "sequential matching: each image is matched with this many following ones"})
    exhaustive_max: int = field(default=150, metadata={
        "help": "matching auto: photo folders up to this size are matched exhaustively (pairs grow as N^2)"})
    camera: str = field(default="auto", metadata={
        "choices": ("auto", "single", "per-image"),
        "help": "intrinsics: single (one camera took every image: shared, better constrained), per-image (each "
                "image its own); auto: single for a video and for photos of one size and one camera (EXIF), "
                "an error naming the groups for mixed photos"})
    camera_model: str = field(default="SIMPLE_RADIAL", metadata={
        "choices": CAMERA_MODELS, "help": "COLMAP camera model estimated (the output is undistorted to PINHOLE)"})
    min_images: int = field(default=3, metadata={
        "volatile": True, "help": "fewest images accepted, in the input and in the reconstruction"})
    min_registered: float = field(default=0.5, metadata={
        "volatile": True,
        "help": "stop with an error when the largest reconstruction holds less than this fraction of the images "
                "(a partial one above it is kept and its dropped images listed)"})
    seed: int = field(default=0, metadata={"help": "random seed of COLMAP's RANSAC and mapper"})
    threads: int = field(default=-1, metadata={"volatile": True, "help": "CPU threads (-1: all)"})
    progress: bool = field(default=True, metadata={"volatile": True, "help": "progress bars per phase"})

    def validate(self) -> None:
        """``Fit3DError`` naming the option for any value out of range (called before any work)."""
        from fit3d.config import check_choices, check_counts, check_reals, option_error

        check_choices(self)
        check_counts(self, {"max_frames": 1, "max_size": 0, "sift_max_size": 64, "max_features": 64,
                            "sequential_overlap": 1, "exhaustive_max": 2, "min_images": 2})
        check_reals(self, {"min_registered": (0.0, 1.0)})
        if self.max_frames < self.min_images:
            raise option_error(self, "max_frames", f"must be >= --min-images ({self.min_images})")
        if self.threads == 0 or self.threads < -1:
            raise option_error(self, "threads", "must be -1 (all) or a positive count")
