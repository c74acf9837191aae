"""Scenes, views and readers for the on-disk layouts fit3d understands."""

from fit3d.data.scene import Scene, View, check_pose, check_intrinsics

__all__ = ["Scene", "View", "check_pose", "check_intrinsics", "read_scene"]


def read_scene(path, **kwargs):
    """Read a scene folder, detecting its layout (see ``fit3d.data.readers``)."""
    from fit3d.data.readers import read_scene as _read

    return _read(path, **kwargs)
