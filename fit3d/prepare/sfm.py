"""Structure from motion with ``pycolmap``: SIFT features, matching of listed pairs, incremental mapping,
undistortion. Thin wrappers that run COLMAP's phases in steps a progress bar can follow.

Every phase reads and writes one COLMAP database (``database.db``); COLMAP skips images whose features and
pairs whose matches are already in it, which makes extraction and matching resumable chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MIN_INLIERS = 15  # COLMAP's IncrementalPipelineOptions.min_num_matches: fewer verified matches do not link images
MIN_MODEL_SIZE = 3  # keep reconstructions this small (COLMAP: 10), so the largest is found on few images


@contextmanager
def quiet_colmap(verbose: bool = False):
    """Silence COLMAP's info and warning log lines (the progress bars say what runs) unless ``verbose``."""
    import pycolmap

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = old if verbose else 2
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _reader_options(camera_model: str):
    import pycolmap

    ro = pycolmap.ImageReaderOptions()
    ro.camera_model = camera_model
    return ro


def _camera_mode(single: bool):
    import pycolmap

    return pycolmap.CameraMode.SINGLE if single else pycolmap.CameraMode.PER_IMAGE


def image_ids(db_path: Path) -> dict[str, int]:
    """``{image name: COLMAP image id}`` of the database."""
    import pycolmap

    with pycolmap.Database.open(str(db_path)) as db:
        return {im.name: im.image_id for im in db.read_all_images()}


def extracted(db_path: Path) -> set[str]:
    """Names of the images whose features are in the database."""
    import pycolmap

    with pycolmap.Database.open(str(db_path)) as db:
        return {im.name for im in db.read_all_images() if db.num_keypoints_for_image(im.image_id) > 0}


def extract(db_path: Path, image_dir: Path, names: list[str], *, single_camera: bool, camera_model: str,
            sift_max_size: int, max_features: int, threads: int, progress: Callable[[int], None],
            should_stop: Callable[[], bool], chunk: int = 8) -> None:
    """SIFT features of ``names`` (in ``image_dir``) into the database, ``chunk`` images per call.
    The images are imported first, so every chunk shares the one camera when ``single_camera``."""
    import pycolmap

    pycolmap.Database.open(str(db_path)).close()  # creates the file
    ro = _reader_options(camera_model)
    have = image_ids(db_path)
    if len(have) < len(names):
        pycolmap.import_images(str(db_path), str(image_dir), camera_mode=_camera_mode(single_camera),
                               image_names=[n for n in names if n not in have], options=ro)
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size, ext.num_threads = sift_max_size, threads
    ext.sift.max_num_features = max_features
    done = extracted(db_path)
    todo = [n for n in names if n not in done]
    progress(len(names) - len(todo))
    for k in range(0, len(todo), chunk):
        if should_stop():
            return
        part = todo[k:k + chunk]
        pycolmap.extract_features(str(db_path), str(image_dir), image_names=part,
                                  camera_mode=_camera_mode(single_camera), reader_options=ro, extraction_options=ext)
        progress(len(part))


def match(db_path: Path, names: list[str], pairs: list[tuple[int, int]], pairs_file: Path, *, threads: int,
          progress: Callable[[int], None], should_stop: Callable[[], bool]) -> None:
    """Match and geometrically verify the listed ``pairs`` (indices into ``names``) in chunks."""
    import pycolmap

    ids = image_ids(db_path)
    with pycolmap.Database.open(str(db_path)) as db:
        todo = [p for p in pairs if not db.exists_matches(ids[names[p[0]]], ids[names[p[1]]])]
    progress(len(pairs) - len(todo))
    opts = pycolmap.FeatureMatchingOptions()
    opts.num_threads = threads
    chunk = max(50, -(-len(todo) // 10))  # ~10 calls: each costs about a CPU second of set-up
    for k in range(0, len(todo), chunk):
        if should_stop():
            return
        part = todo[k:k + chunk]
        pairs_file.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in part))
        pycolmap.match_image_pairs(str(db_path), matching_options=opts,
                                   pairing_options=pycolmap.ImportedPairingOptions(match_list_path=str(pairs_file)))
        progress(len(part))
    pairs_file.unlink(missing_ok=True)


def verified_pairs(db_path: Path, names: list[str], min_inliers: int = MIN_INLIERS) -> list[tuple[int, int]]:
    """Pairs (indices into ``names``) with at least ``min_inliers`` geometrically verified matches."""
    import pycolmap

    pos = {n: k for k, n in enumerate(names)}
    index = {i: pos[n] for n, i in image_ids(db_path).items() if n in pos}
    with pycolmap.Database.open(str(db_path)) as db:
        pair_ids, counts = db.read_two_view_geometry_num_inliers()
    out = []
    for pid, c in zip(pair_ids, counts):
        a, b = pycolmap.pair_id_to_image_pair(pid)
        if c >= min_inliers and a in index and b in index:
            out.append((index[a], index[b]))
    return out


def reconstruct(db_path: Path, image_dir: Path, out_dir: Path, *, seed: int, threads: int,
                progress: Callable[[int], None], should_stop: Callable[[], bool]) -> dict:
    """Incremental mapping; ``{model index: pycolmap.Reconstruction}`` written under ``out_dir/<index>``.
    ``progress(1)`` per registered image; ``should_stop()`` is polled there and cancels the mapper."""
    import pycolmap

    pycolmap.set_random_seed(seed)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads, opts.random_seed, opts.min_model_size = threads, seed, MIN_MODEL_SIZE
    opts.min_num_matches = MIN_INLIERS
    token = pycolmap.CancellationToken()

    def step() -> None:
        progress(1)
        if should_stop():
            token.cancel()

    return pycolmap.incremental_mapping(str(db_path), str(image_dir), str(out_dir), options=opts,
                                        next_image_callback=step, cancellation_token=token)


def undistort(model_dir: Path, image_dir: Path, out_dir: Path, threads: int) -> None:
    """COLMAP's undistortion: ``out_dir/images`` (PINHOLE images) and ``out_dir/sparse`` (the model)."""
    import pycolmap

    pycolmap.undistort_images(str(out_dir), str(model_dir), str(image_dir), num_threads=threads)


def registered_names(rec) -> list[str]:
    """Sorted names of the images with a pose in reconstruction ``rec``."""
    return sorted(im.name for im in rec.images.values() if im.has_pose)


def model_stats(rec) -> dict:
    """Registered images, mean reprojection error (px), 3D points and cameras of ``rec``."""
    err = rec.compute_mean_reprojection_error()
    return {"registered": int(rec.num_reg_images()), "points": int(rec.num_points3D()),
            "mean_reprojection_error": float(err) if np.isfinite(err) else None, "cameras": int(rec.num_cameras())}
