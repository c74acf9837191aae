"""Atomic output writing: a crash never leaves a half-written file that loads.

Temporaries are siblings named ``.<name>.<pid>.<random>.tmp``: :func:`clean_stale_temps` removes those
whose process is gone (a kill during a write leaves nothing behind on the next run). Outputs get the
user's normal permissions (``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders), not the
private 0600 / 0700 of ``mkstemp`` / ``mkdtemp``.

An OS error while writing (a full disk, a read-only folder, a file-size limit) becomes one
``OutputError`` line naming the output path; the temporary is removed and the previous file or folder at
that path is left as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: the path(s) it names and the system's reason."""
    names = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{names}: {e.strerror or e}" if names else (e.strerror or str(e) or type(e).__name__)


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def as_os_error(e: BaseException) -> OSError | None:
    """``e`` as an ``OSError``: itself, or one rebuilt from a library error that wraps one (safetensors'
    Rust writer raises ``SafetensorError("... (os error 28)")``); None for any other error."""
    if isinstance(e, OSError):
        return e
    m = _OS_ERROR.search(str(e)) if isinstance(e, Exception) else None
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


def write_error(path: Path, e: OSError):
    """The ``OutputError`` for an OS error while writing ``path`` (nothing was replaced)."""
    from fit3d.errors import OutputError

    return OutputError(f"{path}: could not write ({e.strerror or e}); nothing was written there and any previous "
                       f"version is intact")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed over ``path``.
    An ``OSError`` on the way is an ``OutputError`` naming ``path`` (:func:`write_error`).

    >>> with atomic_path("out.ply") as tmp:
    ...     write_something(tmp)
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as e:
        if as_os_error(e) is None:
            raise
        raise write_error(path, as_os_error(e)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path`` (an existing
    folder is moved aside first and removed after the swap). OS errors as in :func:`atomic_path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise write_error(path, e) from None
    old = None
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old.tmp")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as e:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # the swap failed half-way: the previous folder goes back
        if as_os_error(e) is None:
            raise
        raise write_error(path, as_os_error(e)) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back (the value is process-wide)
    m = os.umask(0o022)
    os.umask(m)
    return m


_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]*(\.old)?\.tmp$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` / :func:`atomic_dir` in ``folder`` (not recursive)
    whose writing process no longer runs; returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed JSON of ``path``; a missing, unreadable or malformed file is a ``Fit3DError`` naming it."""
    from fit3d.errors import Fit3DError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise Fit3DError(f"{path}: {what} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Fit3DError(f"{path}: {what} is unreadable or corrupt ({e})") from None


def read_json_dict(path: str | os.PathLike, what: str = "JSON file", keys: tuple[str, ...] = ()) -> dict:
    """:func:`read_json` of a JSON object holding ``keys``; anything else is a ``Fit3DError`` naming the file."""
    from fit3d.errors import Fit3DError

    d = read_json(path, what)
    if not isinstance(d, dict):
        raise Fit3DError(f"{path}: {what} must hold a JSON object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise Fit3DError(f"{path}: {what} is incomplete (missing {', '.join(missing)})")
    return d


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (checkpoints)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
