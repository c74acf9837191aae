"""Errors fit3d raises for bad input; each names the file or object at fault."""


class Fit3DError(Exception):
    """Base class: bad input or configuration, reported to the user without a traceback by the CLI."""


class SceneError(Fit3DError):
    """A scene or view on disk is missing, unreadable or inconsistent."""


class ModelNotFoundError(Fit3DError):
    """A backbone could not be found (unknown name, unreachable hub id, missing local folder)."""


class NonFiniteError(Fit3DError):
    """A loss or tensor became NaN/inf."""


class OutputError(Fit3DError):
    """An output fit3d refuses or fails to write: an input, not writable, another program's files, locked by
    another run, or an OS error (disk full, read-only) while writing."""
