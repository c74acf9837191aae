"""How well recovered camera poses agree with reference poses, after a similarity alignment.

Structure from motion recovers poses up to a similarity (rotation, translation, scale): the recovered
camera centres are aligned to the reference ones by the least-squares similarity (Umeyama's method,
``pycolmap.estimate_sim3d``), then each view's rotation error (degrees, the angle of R_ref^T R_aligned) and
camera-centre error (as a percentage of the scene extent: the largest distance of a reference centre from
their mean) are measured.

When the reference poses belong to another sensor of the same rig (7-Scenes: the depth camera's poses, the
colour camera a few degrees away), every rotation error carries that fixed offset; ``camera_offset_deg`` is
the one camera-side rotation that best explains them (the mean of R_ref^T R_aligned) and
``median_rotation_deg_after_offset`` what remains once it is removed. ``mean_pose_baseline`` gives the
errors of the trivial answer (every camera at the mean reference centre with the mean rotation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from fit3d.errors import SceneError


def model_poses(model_dir) -> dict[str, np.ndarray]:
    """``{image name without suffix: c2w [4, 4]}`` (OpenCV axes) of the registered images of a COLMAP model."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    out = {}
    for im in rec.images.values():
        if im.has_pose:
            w2c = np.eye(4)
            w2c[:3] = im.cam_from_world().matrix()
            out[str(Path(im.name).with_suffix(""))] = np.linalg.inv(w2c)
    return out


def pose_errors(est: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    """Errors of the poses ``est`` against ``ref`` (both ``{name: c2w [4, 4]}``) on their common names.

    Returns ``views`` (common), ``median_rotation_deg``, ``median_centre_error_pct`` (of ``extent``),
    ``max_rotation_deg``, ``extent`` (reference units) and per view ``rotation_deg`` / ``centre_error_pct``."""
    import pycolmap

    names = sorted(set(est) & set(ref))
    if len(names) < 3:
        raise SceneError(f"pose comparison needs at least 3 common views, got {len(names)}")
    c_est = np.stack([est[n][:3, 3] for n in names])  # [V, 3]
    c_ref = np.stack([ref[n][:3, 3] for n in names])  # [V, 3]
    sim = pycolmap.estimate_sim3d(c_est, c_ref)
    if sim is None:
        raise SceneError("pose comparison: no similarity aligns the camera centres (degenerate layout)")
    R, s, t = sim.rotation.matrix(), float(sim.scale), np.asarray(sim.translation)
    aligned = s * c_est @ R.T + t  # [V, 3]
    extent = float(np.linalg.norm(c_ref - c_ref.mean(0), axis=1).max())
    centre = 100.0 * np.linalg.norm(aligned - c_ref, axis=1) / max(extent, 1e-12)  # [V]
    diff = Rotation.from_matrix(np.stack([ref[n][:3, :3].T @ R @ est[n][:3, :3] for n in names]))  # [V]
    rot = np.degrees(diff.magnitude())  # [V]
    offset = diff.mean()
    rest = np.degrees((offset.inv() * diff).magnitude())  # [V]
    return {"views": len(names), "median_rotation_deg": float(np.median(rot)), "max_rotation_deg": float(rot.max()),
            "median_centre_error_pct": float(np.median(centre)), "extent": extent,
            "camera_offset_deg": float(np.degrees(offset.magnitude())),
            "median_rotation_deg_after_offset": float(np.median(rest)),
            "rotation_deg": dict(zip(names, rot.tolist())), "centre_error_pct": dict(zip(names, centre.tolist()))}


def mean_pose_baseline(ref: dict[str, np.ndarray]) -> dict:
    """Median rotation error (deg) and centre error (% of the extent) of putting every camera of ``ref`` at
    the mean centre with the mean rotation: the scale the errors of :func:`pose_errors` are read against."""
    c = np.stack([m[:3, 3] for m in ref.values()])  # [V, 3]
    d = np.linalg.norm(c - c.mean(0), axis=1)  # [V]
    rots = Rotation.from_matrix(np.stack([m[:3, :3] for m in ref.values()]))
    return {"median_rotation_deg": float(np.median(np.degrees((rots.mean().inv() * rots).magnitude()))),
            "median_centre_error_pct": float(100.0 * np.median(d) / max(d.max(), 1e-12))}
