"""Frames from a video, sampled by time and sharpness (OpenCV).

The video's frames are split into ``max_frames`` equal windows of time; from each window the sharpest of
up to ``CANDIDATES`` evenly spaced frames is kept (sharpness: variance of the Laplacian of the grey image
at most 640 px wide, so it does not depend on the video's size). Motion blur is the common failure of
frames grabbed from a hand-held video; within a window the sharpest frame is the one SIFT matches best.
Kept frames are written as ``frame-NNNNNN.jpg`` (NNNNNN: the frame's index in the video) as soon as their
window closes, so memory holds one frame at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fit3d.errors import SceneError

CANDIDATES = 10  # frames scored per window
_SHARPNESS_WIDTH = 640


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # frame count (decoded, where the container did not say)
    fps: float
    size: tuple[int, int]  # (W, H)


@dataclass(frozen=True)
class SampledFrame:
    name: str  # file name written, frame-NNNNNN.jpg
    index: int  # frame index in the video
    time: float  # seconds from the start
    sharpness: float  # variance of the Laplacian


def _open(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise SceneError(f"{path}: cannot read the video (OpenCV could not open it: not a video, an unsupported "
                         f"codec or a damaged file)")
    return cap


def probe(path: Path) -> VideoInfo:
    """Frame count, rate and size of the video at ``path``; ``SceneError`` naming it if no frame decodes."""
    cap = _open(path)
    try:
        ok, first = cap.read()
        if not ok or first is None:
            raise SceneError(f"{path}: cannot read the video (no frame decodes: a damaged file or an unsupported codec)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if count <= 0:  # some containers do not say: count by decoding
            count = 1
            while cap.grab():
                count += 1
        return VideoInfo(count, fps if fps > 0 else 30.0, (first.shape[1], first.shape[0]))
    finally:
        cap.release()


def write_video(path: Path, frames, fps: float = 10.0) -> Path:
    """Encode BGR uint8 frames [H, W, 3] as Motion-JPEG in an .avi (the codec every OpenCV build writes):
    test and benchmark videos made from a posed scene's frames."""
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not vw.isOpened():
        raise SceneError(f"{path}: OpenCV cannot write a Motion-JPEG video here")
    try:
        vw.write(first)
        for f in frames:
            vw.write(f)
    finally:
        vw.release()
    return path


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian of ``frame`` [H, W, 3] (BGR uint8) at most 640 px wide."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if grey.shape[1] > _SHARPNESS_WIDTH:
        s = _SHARPNESS_WIDTH / grey.shape[1]
        grey = cv2.resize(grey, (_SHARPNESS_WIDTH, max(1, round(grey.shape[0] * s))), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def windows(count: int, max_frames: int) -> list[list[int]]:
    """Candidate frame indices of each of ``min(count, max_frames)`` equal windows of ``count`` frames."""
    n = min(count, max_frames)
    edges = np.linspace(0, count, n + 1)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        lo, hi = int(np.ceil(a)), max(int(np.ceil(b)), int(np.ceil(a)) + 1)
        idx = np.unique(np.linspace(lo, hi - 1, min(CANDIDATES, hi - lo)).round().astype(int))
        out.append([int(i) for i in idx if i < count])
    return [w for w in out if w]


def sample_frames(path: Path, info: VideoInfo, max_frames: int, max_size: int, out_dir: Path,
                  progress: Callable[[int], None] | None = None) -> list[SampledFrame]:
    """Write the sharpest frame of each time window of the video at ``path`` into ``out_dir`` (long side
    at most ``max_size``, 0: any) and return them in time order; ``progress(1)`` after each window."""
    from fit3d.io import atomic_path

    wins = windows(info.frames, max_frames)
    owner = {i: w for w, idx in enumerate(wins) for i in idx}
    best: dict[int, tuple[float, int, np.ndarray]] = {}
    kept: list[SampledFrame] = []

    def flush(w: int) -> None:
        if w not in best:
            return
        score, index, frame = best.pop(w)
        if max_size and max(frame.shape[:2]) > max_size:
            s = max_size / max(frame.shape[:2])
            frame = cv2.resize(frame, (max(1, round(frame.shape[1] * s)), max(1, round(frame.shape[0] * s))),
                               interpolation=cv2.INTER_AREA)
        name = f"frame-{index:06d}.jpg"
        with atomic_path(out_dir / name) as tmp:
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            tmp.write_bytes(buf.tobytes())
        kept.append(SampledFrame(name, index, index / info.fps, score))
        if progress:
            progress(1)

    cap = _open(path)
    try:
        last = max(owner) if owner else -1
        open_w = 0
        for i in range(last + 1):
            if not cap.grab():
                break
            w = owner.get(i)
            if w is None:
                continue
            while open_w < w:  # earlier windows are complete
                flush(open_w)
                open_w += 1
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                continue
            s = sharpness(frame)
            if w not in best or s > best[w][0]:
                best[w] = (s, i, frame)
        for w in range(open_w, len(wins)):
            flush(w)
    finally:
        cap.release()
    return kept
