"""The Stage 1 methods, one registry: each takes a ``LiftContext`` and returns a ``LiftResult``.

``LiftConfig.method``'s choices are this registry's names; a method with settings of its own has a nested
config in ``LiftConfig`` under its name (``LiftConfig.solve``: ``--solve.cg-ridge``), and only the chosen
method's nested config enters a lift's recorded settings. Each entry names its implementation as ``module:function``
(an entry point, imported when the method runs): the registry imports nothing, so ``LiftConfig`` can take its
choices from it without a circle of imports, and reading it (option parsing, ``--help``) stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """A Stage 1 method: ``entry`` "module:function" (``LiftContext -> LiftResult``); ``config``: the name of its
    nested ``LiftConfig`` field (None: it reads only the shared fields); ``help``: one line for ``--method``."""

    entry: str
    config: str | None
    help: str

    def run(self, ctx):
        """The method's ``LiftResult`` for the ``LiftContext`` ``ctx``."""
        module, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(module), function)(ctx)


METHODS: dict[str, Method] = {
    "optimize": Method("fit3d.lift.optimize:optimize_scene", None,
                       "FiT3D: gradient descent on colour + feature loss from points, under density control (the "
                       "shared training fields: --iterations, --lr-*, ...)"),
    "solve": Method("fit3d.lift.solve:solve_scene", "solve",
                    "the default: geometry fused from depth (without depth: the scene's points or random points, "
                    "trained colour-only), features and decoder in closed form; ~8x faster than optimize and "
                    "closer to held-out views' features (docs/lift-solve.md; --solve.*)"),
    "backprojected": Method("fit3d.lift.backprojected:backprojected_scene", "backprojected",
                            "one Gaussian per sampled depth pixel carrying the backbone's feature there, no "
                            "optimisation (--backprojected.*)"),
}
