"""The run layer shared by lift, finetune and the pipeline: checkpoints, RNG state, interrupts, resume rule.

- :func:`save_checkpoint` / :func:`load_checkpoint`: one safetensors file holding every tensor, with the
  plain state (numbers, strings, lists, dicts, tuples, numpy arrays by reference) as JSON in its header.
  Nothing is unpickled from disk; optimiser state dicts (nested dicts of tensors keyed by ints) and RNG
  states (:func:`capture_rng` / :func:`restore_rng`) round-trip exactly.
- :func:`result_settings` / :func:`check_resume`: the one rule for reuse and resume. Every config field
  determines the result unless declared ``metadata={"volatile": True}``; a rerun over an output recorded
  with other settings stops with a :class:`SettingsMismatch` naming each field (old -> new).
- :class:`Interrupt`: SIGTERM and SIGINT become a flag the loop polls; it checkpoints and raises
  :class:`Interrupted` ("rerun the same command to resume"). A second signal interrupts at once.
- :func:`staged_dir` / :func:`commit_staged`: ``--overwrite`` builds the new result in a sibling folder and
  swaps it in only once complete, so a failed or interrupted rerun never destroys finished work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fit3d.errors import Fit3DError
from fit3d.io import atomic_path, read_json

FORMAT = "fit3d-checkpoint/1"
_STATE_KEY = "fit3d_state"


# ----------------------------------------------------------------------------------------- checkpoints
class _Encoder:
    """Turns nested plain data + tensors into (JSON tree, {key: tensor}); tensors/arrays become references."""

    def __init__(self):
        self.tensors: dict[str, Tensor] = {}
        self._ptrs: set[int] = set()

    def _add(self, t: Tensor, kind: str) -> dict:
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in self._ptrs:
            t = t.clone()  # safetensors refuses tensors that share memory (tied weights, views)
        elif ptr is not None:
            self._ptrs.add(ptr)
        key = str(len(self.tensors))
        self.tensors[key] = t
        return {kind: key}

    def encode(self, obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return self._add(obj, "__tensor__")
        if isinstance(obj, np.ndarray):
            return self._add(torch.from_numpy(np.ascontiguousarray(obj)), "__ndarray__")
        if isinstance(obj, (np.integer, np.floating, np.bool_)):
            return obj.item()
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
                return {k: self.encode(v) for k, v in obj.items()}
            return {"__items__": [[self.encode(k), self.encode(v)] for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v) for v in obj]}
        if isinstance(obj, list):
            return [self.encode(v) for v in obj]
        if isinstance(obj, Path):
            return str(obj)
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"checkpoint state: cannot store {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, Tensor], path: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (k, v), = obj.items()
        if k in ("__tensor__", "__ndarray__"):
            if v not in tensors:
                raise Fit3DError(f"{path}: corrupt checkpoint (tensor {v} is missing)")
            t = tensors[v]
            return t if k == "__tensor__" or t is None else t.numpy()
        if k == "__tuple__":
            return tuple(_decode(x, tensors, path) for x in v)
        if k == "__items__":
            return {_decode(a, tensors, path): _decode(b, tensors, path) for a, b in v}
    return {k: _decode(v, tensors, path) for k, v in obj.items()}


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Any], state: dict) -> None:
    """Write ``tensors`` (any nesting of dicts / lists of tensors, e.g. state dicts) and ``state`` (plain
    data; tensors and numpy arrays allowed anywhere) to ``path`` atomically, as safetensors + JSON."""
    from safetensors.torch import save_file

    enc = _Encoder()
    tree = {"format": FORMAT, "tensors": enc.encode(tensors), "state": enc.encode(state)}
    with atomic_path(path) as tmp:
        save_file(enc.tensors, str(tmp), metadata={_STATE_KEY: json.dumps(tree)})


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """``(tensors, state)`` as given to :func:`save_checkpoint` (tensors on ``device``, numpy arrays as
    numpy). A missing, truncated or foreign file is a ``Fit3DError`` naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise Fit3DError(f"{path}: checkpoint is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
        tree = json.loads(meta[_STATE_KEY])
        if not isinstance(tree, dict) or tree.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
    except Fit3DError:
        raise
    except Exception as e:  # safetensors / json raise several types for a truncated or foreign file
        raise Fit3DError(f"{path}: checkpoint is unreadable or corrupt ({type(e).__name__}: {e}); delete it "
                         f"to start over") from None
    out = _decode(tree.get("tensors", {}), raw, path)
    if str(device) != "cpu":
        out = _to_device(out, device)
    return out, _decode(tree.get("state", {}), raw, path)


def checkpoint_state(path: str | os.PathLike) -> dict:
    """The plain ``state`` of a checkpoint, read from its header only (tensor references become None)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tree = json.loads((f.metadata() or {})[_STATE_KEY])
    except Exception as e:  # as in load_checkpoint
        raise Fit3DError(f"{path}: checkpoint is unreadable or corrupt ({type(e).__name__}: {e})") from None
    return _decode(tree.get("state", {}), _NoTensors(), path)


class _NoTensors(dict):
    def __contains__(self, key) -> bool:
        return True

    def __getitem__(self, key):
        return None


def _to_device(obj: Any, device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


# ----------------------------------------------------------------------------------------- RNG state
def capture_rng() -> dict:
    """The global RNG states: torch CPU (and every CUDA device), numpy's legacy generator, python's."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(legacy=False),
          "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def restore_rng(st: dict) -> None:
    """Restore what :func:`capture_rng` returned (after a checkpoint round trip)."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(st["cuda"]))


# ----------------------------------------------------------------------------------------- resume rule
def result_settings(cfg: Any) -> dict:
    """``{field: value}`` of every field of dataclass ``cfg`` that determines its result (all but those
    declared ``metadata={"volatile": True}``: progress bars, checkpoint periods, devices, ...); a nested
    config is a dict by the same rule."""
    return {f.name: result_settings(v) if dataclasses.is_dataclass(v := getattr(cfg, f.name)) else as_recorded(v)
            for f in dataclasses.fields(cfg) if not f.metadata.get("volatile", False)}


def as_recorded(v: Any) -> Any:
    """JSON's view of ``v`` (tuples -> lists), so recorded and current settings compare equal."""
    return json.loads(json.dumps(v, default=str))


class SettingsMismatch(Fit3DError):
    """An output on disk was made with other settings than this run's."""


def check_resume(recorded: dict | None, current: dict, what: str, path, how: str | None = None) -> None:
    """Raise :class:`SettingsMismatch` unless ``recorded == current``, naming every differing field with
    its old and new value. ``what``: e.g. "finished lift", "checkpoint"; ``how``: how to proceed
    (default: rerun with ``--overwrite`` or another ``--out``)."""
    how = how or "rerun with --overwrite to replace it, or choose another --out"
    if recorded is None:
        raise SettingsMismatch(f"{path}: {what} records no settings (written by an older fit3d), so it cannot "
                               f"be reused safely; {how}")
    diff = [f"{k}: {_short(old)} -> {_short(new)}" for k, old, new in _differences(as_recorded(recorded),
                                                                                    as_recorded(current))]
    if diff:
        more = f"; and {len(diff) - 8} more" if len(diff) > 8 else ""
        raise SettingsMismatch(f"{path}: {what} was made with other settings ({'; '.join(diff[:8])}{more}); {how}")


def check_rerun(record: str | os.PathLike, settings: dict, what: str, overwrite: bool = False,
                key: str = "settings") -> None:
    """Before a command that replaces its earlier result (``fit3d probe``, ``fit3d compare``) starts: when
    ``record`` (that result's JSON, holding the settings under ``key``) was written with other ``settings``,
    :class:`SettingsMismatch` naming them, unless ``overwrite``. A rerun with the same settings, or into a
    folder without the record, proceeds."""
    record = Path(record)
    if overwrite or not record.is_file():
        return
    try:
        d = read_json(record, "earlier result's record")
    except Fit3DError:
        d = None  # unreadable: it is not known what made it
    recorded = d.get(key) if isinstance(d, dict) else None
    check_resume(recorded, settings, what, record.parent,
                 "rerun with --overwrite to replace it, or choose another --out")


_MISSING = object()


def _differences(old: Any, new: Any, where: str = ""):
    """(field path, old, new) of every leaf where ``old`` and ``new`` differ (dicts by key, equal-length
    lists by index: ``scenes[0].lift.feature_dim``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            yield from _differences(old.get(k, _MISSING), new.get(k, _MISSING), f"{where}.{k}" if where else str(k))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old != new:
        for i, (a, b) in enumerate(zip(old, new)):
            yield from _differences(a, b, f"{where}[{i}]")
    elif old != new:
        yield where, old, new


def _short(v: Any, n: int = 80) -> str:
    s = "(not recorded)" if v is _MISSING else json.dumps(v)
    return s if len(s) <= n else s[: n // 2 - 2] + "..." + s[-(n // 2 - 1):]  # both ends: paths differ at the end


# ----------------------------------------------------------------------------------------- interrupts
class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM / SIGINT after writing its checkpoint; the message says how to resume."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "interrupted"


class Interrupt:
    """Context manager turning SIGTERM and SIGINT into ``self.requested`` (the loop checkpoints and calls
    :meth:`stop`). A second signal raises ``KeyboardInterrupt`` at once. Outside the main thread (where
    handlers cannot be installed) it never triggers."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "Interrupt":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.requested:  # a second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def stop(self, what: str, checkpoint) -> None:
        """Raise :class:`Interrupted` saying ``what`` stopped and where its checkpoint is."""
        raise Interrupted(f"{what}: stopped by {self.requested}; checkpoint saved to {checkpoint}; rerun the "
                          f"same command to resume")

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


# ----------------------------------------------------------------------------------------- overwrite
def staged_dir(out: str | os.PathLike) -> Path:
    """The sibling folder an ``--overwrite`` run builds into (fixed name, so an interrupted overwrite
    resumes there)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".{out.name}.new")


def commit_staged(staged: str | os.PathLike, out: str | os.PathLike) -> None:
    """Swap the complete ``staged`` folder in as ``out``; the old ``out`` is removed only afterwards."""
    staged, out = Path(staged), Path(out)
    old = out.with_name(f".{out.name}.old")
    try:
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            os.replace(out, old)
        os.replace(staged, out)
    except OSError as e:
        if old.exists() and not out.exists():
            os.replace(old, out)  # the previous result goes back
        from fit3d.io import write_error

        raise write_error(out, e) from None
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def recover_staged(out: str | os.PathLike) -> None:
    """Finish a swap a kill interrupted between its two renames (``out`` gone, ``.out.old`` present)."""
    out = Path(out)
    old = out.with_name(f".{out.name}.old")
    if old.exists() and not out.exists():
        os.replace(old, out)


# ----------------------------------------------------------------------------------------- workers
def workers_can_spawn(start_method: str) -> tuple[bool, str]:
    """(can worker processes started with ``start_method`` run here, why not). ``spawn`` / ``forkserver``
    children re-import the main module as ``__mp_main__``: a script whose top level does the work without an
    ``if __name__ == "__main__":`` guard (the README's snippet saved as a file) would run again in every child
    and die there. Safe: ``fork``; an interactive session; ``python -m pkg`` (a package's ``__main__`` is not
    re-imported); a main module with the guard (the ``fit3d`` command, pytest, torchrun)."""
    import ast
    import sys

    if start_method == "fork":
        return True, ""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return True, ""
    path = getattr(spec, "origin", None) if spec is not None else getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not os.path.isfile(path):
        return True, ""  # interactive, or nothing spawn would re-run
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return False, f"{path} could not be read to look for its main guard"

    def is_guard(node) -> bool:
        if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
            return False
        parts = [node.test.left, *node.test.comparators]
        return (any(isinstance(p, ast.Name) and p.id == "__name__" for p in parts)
                and any(isinstance(p, ast.Constant) and p.value == "__main__" for p in parts))

    if any(is_guard(n) for n in tree.body):
        return True, ""
    return False, (f"the main script {path} has no `if __name__ == \"__main__\":` guard, and {start_method}ed "
                   f"workers re-import it (they would run the script again)")
