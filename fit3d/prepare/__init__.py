"""Bring your own capture: ``fit3d prepare INPUT --out SCENE`` turns a folder of photos or a video into a
posed scene (structure from motion with ``pycolmap``) that ``fit3d lift`` / ``fit3d pipeline`` read as it is.

| module | holds |
|---|---|
| ``config`` | ``PrepareConfig`` (every field a ``fit3d prepare`` option) |
| ``photos`` | photo folders: listing, header checks, camera groups (EXIF), upright working copies |
| ``video`` | frames sampled from a video by time and sharpness (OpenCV) |
| ``pairs`` | which images to match (sequential / exhaustive) and which can register together |
| ``sfm`` | pycolmap's phases: features, matching, incremental mapping, undistortion |
| ``stage`` | ``prepare_scene``: the phases in order, checks, resume, the record |
| ``cli`` | the ``fit3d prepare`` command |

Output (``SCENE``)::

    images/          undistorted images (PINHOLE)
    sparse/0/        COLMAP model: cameras, poses, the sparse points a depth-free lift starts from
    prepare.json     settings, input fingerprint, per image its source, registered / dropped, times
    work/            COLMAP database, working images, raw reconstruction (what a resumed run continues)
"""

from fit3d.prepare.config import PrepareConfig
from fit3d.prepare.stage import prepare_scene, summary_line

__all__ = ["PrepareConfig", "prepare_scene", "summary_line"]
