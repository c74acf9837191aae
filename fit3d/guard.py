"""The output guard: every command that writes checks its output folder before any work, and holds a lock on it.

:func:`guard_output` is called at the start of each command (lift, finetune, probe, pipeline, demo, compare,
generate, the bench scripts), after its options are checked and before any model loads. It

1. resolves ``--out`` (symlinks followed) and refuses an output that *is* an input, *contains* one, or lies
   *inside* one, unless it is a folder of its own there (absent, empty, or written by fit3d) -- inputs are
   scene folders, lifted scenes, fine-tuned folders, model folders, datasets, images: whatever the command
   reads;
2. checks that the output can be made and written: a file in the way, a parent that is a file, a folder
   without write permission or on a read-only file system are errors naming the path;
3. refuses an existing folder that holds files fit3d did not write (:func:`written_by_fit3d`: fit3d's
   record files or its marker :data:`MARKER`), so ``--overwrite`` only ever replaces fit3d's own results
   (``replaces``: the folders ``--overwrite`` swaps out, each checked the same way);
4. marks a new or empty folder as fit3d's (:data:`MARKER`) and takes an advisory lock on it (``flock`` on
   ``OUT/.fit3d.lock``, holding the pid): a second run into the same folder is refused naming the first
   run's pid. Locks are released when the command returns (:func:`release_locks`, called by the CLI), when
   the returned :class:`OutputLock` is closed or used as a context manager, or when the process dies.

Each refusal is a ``Fit3DError`` naming both paths and the option; nothing is written before it.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from fit3d.device import dist_info
from fit3d.errors import Fit3DError, OutputError

MARKER = ".fit3d-output.json"
LOCK_FILE = ".fit3d.lock"
# Files only fit3d writes (records, checkpoints): a folder holding one is fit3d's output.
RECORDS = (MARKER, "lift.json", "fit3d.json", "probe.json", "results.json", "rooms.json", "synthetic.json",
           "checkpoint.safetensors")
_OWN_HIDDEN = (LOCK_FILE, MARKER)


def real(path: str | os.PathLike) -> Path:
    """``path`` made absolute with every symlink resolved (also for paths that do not exist yet)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _is_temporary(name: str) -> bool:
    """fit3d's own transient names: atomic-write temporaries, write probes, ``--overwrite`` staging folders."""
    return (name.endswith(".tmp") or name.startswith(".fit3d-probe.")
            or (name.startswith(".") and name.endswith((".new", ".old"))))


def written_by_fit3d(folder: str | os.PathLike, depth: int = 3) -> bool:
    """Is ``folder`` fit3d's output? It holds fit3d's marker or one of its record files (:data:`RECORDS`), or
    it is a non-empty folder of such folders (a ``fit3d lift`` output: ``OUT/<scene>/lift.json``), up to
    ``depth`` levels. Empty folders and fit3d's own temporaries do not count either way."""
    p = Path(folder)
    if not p.is_dir():
        return False
    if any((p / r).is_file() for r in RECORDS):
        return True
    if depth <= 0:
        return False
    entries = [e for e in _entries(p) if not _is_temporary(e.name) and e.name not in _OWN_HIDDEN]
    return bool(entries) and all(e.is_dir() and not e.is_symlink() and written_by_fit3d(e, depth - 1)
                                 for e in entries)


def _entries(p: Path) -> list[Path]:
    try:
        return list(p.iterdir())
    except OSError as e:
        raise OutputError(f"{p}: cannot list the output folder ({e.strerror or e})") from None


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Names in ``folder`` that fit3d did not write (empty when ``folder`` is absent, empty or fit3d's)."""
    p = Path(folder)
    if not p.is_dir() or written_by_fit3d(p):
        return []
    return sorted(e.name for e in _entries(p) if not _is_temporary(e.name) and e.name not in _OWN_HIDDEN)


def check_not_input(out: str | os.PathLike, inputs: Iterable, option: str = "--out") -> Path:
    """``out`` resolved; ``OutputError`` if it is an input, contains one, or lies inside one without being
    a folder of its own there (absent, empty, or fit3d's). ``inputs``: paths (None entries are skipped)."""
    o = real(out)
    for given in inputs:
        if given in (None, "") or not os.path.lexists(os.path.expanduser(os.fspath(given))):
            continue  # a missing input cannot be harmed; the command names it
        i = real(given)
        if o == i:
            raise OutputError(f"{option} {out} is the input {given}: fit3d never writes into its inputs; choose "
                              f"another {option}")
        if _within(i, o):
            raise OutputError(f"{option} {out} contains the input {given}: fit3d never writes over or beside its "
                              f"inputs; choose another {option} (a new folder)")
        if _within(o, i) and foreign_entries(o):
            raise OutputError(f"{option} {out} lies inside the input {given} and holds files fit3d did not write "
                              f"({', '.join(foreign_entries(o)[:3])}); choose another {option}")
    return o


def check_writable(out: str | os.PathLike, option: str = "--out") -> None:
    """``OutputError`` naming ``out`` unless it is a folder (or can be made as one) fit3d can write in."""
    o = real(out)
    if o.exists() and not o.is_dir():
        raise OutputError(f"{option} {out}: a file is in the way ({o} is not a folder); choose another {option}")
    probe_dir = o
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"{option} {out}: its parent {probe_dir} is a file, not a folder; choose another {option}")
    probe_write(probe_dir, f"{option} {out}")


def probe_write(folder: Path, what: str) -> None:
    """Create and remove a small file in ``folder`` (permission bits, read-only mounts, a full disk's inodes:
    what ``os.access`` cannot tell, e.g. for root); ``OutputError`` naming ``what`` on failure."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fit3d-probe.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {folder} ({e.strerror or e})") from None


def check_replaceable(paths: Iterable, option: str = "--out") -> None:
    """Every existing path in ``paths`` (folders a run writes into or ``--overwrite`` replaces) is fit3d's."""
    for p in paths:
        p = Path(p)
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise OutputError(f"{p}: fit3d would write its result here, but this is not a folder fit3d wrote; "
                              f"move it away or choose another {option}")
        bad = foreign_entries(p)
        if bad:
            raise OutputError(f"{p}: fit3d would write its result here, but the folder holds files fit3d did not "
                              f"write ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); fit3d only ever "
                              f"replaces its own results: move them away or choose another {option}")


def mark(folder: str | os.PathLike, command: str) -> None:
    """Record that ``folder`` is fit3d's output (:data:`MARKER`), once; never fails the run."""
    p = Path(folder) / MARKER
    if p.exists():
        return
    try:
        from fit3d.io import write_json

        write_json(p, {"written_by": "fit3d", "command": command})
    except (OSError, Fit3DError):
        pass


# ----------------------------------------------------------------------------------------- lock
_HELD: dict[Path, "OutputLock"] = {}


class OutputLock:
    """An advisory ``flock`` on ``folder/.fit3d.lock`` (re-entrant within a process)."""

    def __init__(self, folder: Path, command: str):
        self.folder, self.command, self.count = folder, command, 1
        self.path = folder / LOCK_FILE
        self.fd = self._acquire()

    def _acquire(self) -> int:
        for _ in range(5):  # the file may be unlinked by its holder between our open and our flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise OutputError(f"{self.path}: cannot lock the output folder ({e.strerror or e})") from None
                raise OutputError(f"{self.folder}: another fit3d run is writing there ({_holder(self.path)}); "
                                  f"wait for it to finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"pid": os.getpid(), "command": self.command}).encode())
                return fd
            os.close(fd)
        raise OutputError(f"{self.path}: could not lock the output folder (it keeps changing)")

    def release(self) -> None:
        self.count -= 1
        if self.count > 0 or self.fd < 0:
            return
        try:  # before unlocking, and only our own file (an --overwrite swap may have replaced the folder)
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1
        _HELD.pop(self.folder, None)
        if _created.pop(self.folder, False):
            _remove_if_only_ours(self.folder)

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        d = json.loads(path.read_text() or "{}")
        return f"pid {d['pid']}, fit3d {d.get('command', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def _remove_if_only_ours(folder: Path) -> None:
    """Remove ``folder`` again when the run left nothing in it but fit3d's marker (a refused or failed run
    leaves no empty output folder behind)."""
    try:
        names = {e.name for e in folder.iterdir()}
        if names <= {MARKER}:
            for n in names:
                (folder / n).unlink()
            folder.rmdir()
    except OSError:
        pass


_created: dict[Path, bool] = {}
_AT_EXIT: list[bool] = []


def release_locks() -> None:
    """Release every lock this process holds (the CLI calls it when a command returns or fails)."""
    for lock in list(_HELD.values()):
        lock.count = 1
        lock.release()


def lock_output(folder: str | os.PathLike, command: str) -> OutputLock:
    """Lock ``folder`` (made if needed) for this process; re-entrant. ``OutputError`` naming the other run's pid
    when another process holds it."""
    f = real(folder)
    held = _HELD.get(f)
    if held is not None and held.fd >= 0:
        held.count += 1
        return held
    if not f.exists():
        try:
            f.mkdir(parents=True)
        except OSError as e:
            raise OutputError(f"{folder}: cannot make the output folder ({e.strerror or e})") from None
        _created[f] = True
    lock = OutputLock(f, command)
    if not _AT_EXIT:
        atexit.register(release_locks)  # scripts that never call it (bench/) leave no lock file behind
        _AT_EXIT.append(True)
    _HELD[f] = lock
    return lock


# ----------------------------------------------------------------------------------------- the guard
def guard_output(out: str | os.PathLike, inputs: Iterable = (), *, command: str, replaces: Iterable = (),
                 option: str = "--out") -> OutputLock:
    """Check ``out`` against ``inputs`` and for writability, refuse another program's files (in ``out`` and in
    each of ``replaces``), then mark and lock it. Returns the held :class:`OutputLock` (released by
    :func:`release_locks` or on ``close``/``with``). Call before any model loads; see the module docstring."""
    inputs = [p for p in inputs if p not in (None, "")]
    check_not_input(out, inputs, option)
    check_writable(out, option)
    check_replaceable(replaces, option)
    fresh = not Path(out).is_dir() or not any(e.name not in _OWN_HIDDEN for e in _entries(Path(out)))
    bad = foreign_entries(out)
    if bad:
        raise OutputError(f"{option} {out}: the folder holds files fit3d did not write ({', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''}); fit3d writes only into a new or empty folder or one "
                          f"it made, so it never overwrites anything else: choose another {option}")
    if dist_info().rank != 0:  # under torchrun rank 0 holds the lock for all ranks
        return _NoLock()
    lock = lock_output(out, command)
    if fresh:  # a new or empty folder becomes fit3d's; an existing output is left exactly as it is
        mark(lock.folder, command)
    return lock


class _NoLock:
    def release(self) -> None:
        pass

    def __enter__(self) -> "_NoLock":
        return self

    def __exit__(self, *exc) -> None:
        pass


def clear_output(folder: str | os.PathLike) -> None:
    """Empty ``folder`` (a fresh start) when fit3d wrote it; its lock and marker stay. ``OutputError`` when it
    holds anything fit3d did not write: only fit3d's own results are ever removed."""
    import shutil

    p = Path(folder)
    if not p.is_dir():
        return
    check_replaceable([p])
    for e in _entries(p):
        if e.name in _OWN_HIDDEN:
            continue
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        else:
            e.unlink()


def model_inputs(model_path: str | None) -> list[str]:
    """The local weights a run reads: ``model_path`` or ``$FIT3D_MODEL_PATH`` when they name a folder."""
    given = model_path or os.environ.get("FIT3D_MODEL_PATH")
    return [given] if given and Path(given).expanduser().exists() else []
