"""Stage 1: lift a frozen 2D backbone's patch features into per-scene feature Gaussians.

``lift_scene(scene, LiftConfig(...), out_dir)`` writes a lifted folder; ``load_lifted(out_dir)`` reads it.
Modules: ``config`` (LiftConfig and each method's nested settings), ``methods`` (the registry of Stage 1
methods), ``targets`` (the backbone's tokens per view, cached), ``init`` (initial Gaussians), ``decoder``
(f -> D), ``loss``, ``train`` (the training step the methods share), the methods ``optimize`` (FiT3D's),
``solve`` (closed-form features; a package) and ``backprojected`` (no optimisation), ``evaluate`` (held-out
metrics), ``stage`` (the per-scene driver), ``lifted`` (the on-disk format, its one writer), ``cli``
(``fit3d lift``).
"""

from fit3d.lift.config import LiftConfig
from fit3d.lift.lifted import LiftedScene, is_lifted, load_lifted


def lift_scene(*args, **kwargs):
    """See :func:`fit3d.lift.stage.lift_scene`."""
    from fit3d.lift.stage import lift_scene as _lift_scene

    return _lift_scene(*args, **kwargs)


__all__ = ["LiftConfig", "LiftedScene", "is_lifted", "load_lifted", "lift_scene"]
