"""The Stage 1 methods, one registry: each takes a ``LiftContext`` and returns a ``LiftResult``.

``LiftConfig.method``'s choices are this registry's names; a method with settings of its own has a nested
config in ``LiftConfig`` under its name (``LiftConfig.solve``: ``--solve.cg-ridge``), and only the chosen
method's nested config enters a lift's recorded settings. The implementations are imported when a method
runs, so reading the registry (option parsing, ``--help``) stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _optimize(ctx):
    from fit3d.lift.optimize import optimize_scene

    return optimize_scene(ctx)


def _solve(ctx):
    from fit3d.lift.solve import solve_scene

    return solve_scene(ctx)


def _backprojected(ctx):
    from fit3d.lift.backprojected import backprojected_scene

    return backprojected_scene(ctx)


@dataclass(frozen=True)
class Method:
    """A Stage 1 method: ``run(ctx) -> LiftResult``; ``config``: the name of its nested ``LiftConfig`` field
    (None: it reads only the shared fields); ``help``: one line for ``--method``'s help."""

    run: Callable
    config: str | None
    help: str


METHODS: dict[str, Method] = {
    "optimize": Method(_optimize, None, "FiT3D: gradient descent on colour + feature loss from points, under "
                                        "density control (the shared training fields: --iterations, --lr-*, ...)"),
    "solve": Method(_solve, "solve", "geometry fused from depth, features and decoder in closed form "
                                     "(docs/lift-solve.md; --solve.*)"),
    "backprojected": Method(_backprojected, "backprojected", "one Gaussian per sampled depth pixel carrying the "
                                                             "backbone's feature there, no optimisation "
                                                             "(--backprojected.*)"),
}
