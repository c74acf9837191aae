"""Typed dataclass configs and their bridge to argparse.

Each stage owns a dataclass (``LiftConfig``, ``FinetuneConfig``, ``ProbeConfig``); the pipeline and the
demo nest them (``PipelineConfig.lift: LiftConfig``). The CLI exposes every field as ``--field-name``
and every field of a nested config as ``--<name>.field-name`` (``--lift.iterations 500``), with the
field's type, default, help (``metadata['help']``) and allowed values (``metadata['choices']``). A nested
field may list in ``metadata['inherit']`` the child fields its parent sets itself (backbone, device,
seed, ...): those are not exposed twice and :func:`inherit` copies them down. Configs round-trip through
JSON (:func:`to_dict` / :func:`from_dict`).

Hand-written rather than ``tyro``: the stages' configs are flat dataclasses with argparse-compatible
types, the CLI already uses argparse subcommands, and ~30 lines of recursion keep every existing option
spelling; tyro would add a dependency and change every flag and help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

from fit3d.errors import Fit3DError

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is_list) for annotations like ``int``, ``float | None``, ``list[int]``."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (list, tuple):
        return (args[0] if args else str), True
    if args and origin is not None:  # Optional / Union
        return _base_type(args[0])
    return tp, False


def is_config(tp: Any) -> bool:
    """True for a dataclass *type* (a nested config field)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """Add ``--[prefix]name`` options for every field of dataclass ``cls``, recursing into nested configs."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options" + (f" (--{prefix}...)" if prefix else ""))
    nested = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if is_config(hints[f.name]):
            nested.append(f)
            continue
        tp, is_list = _base_type(hints[f.name])
        flag, dest = "--" + prefix + f.name.replace("_", "-"), prefix + f.name
        help_ = f.metadata.get("help", "") + f" (default: {_default(f)})"
        if tp is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_)
        else:
            group.add_argument(flag, dest=dest, type=tp, nargs="+" if is_list else None,
                               choices=f.metadata.get("choices"), default=argparse.SUPPRESS, help=help_)
    for f in nested:
        add_arguments(parser, hints[f.name], skip=tuple(f.metadata.get("inherit", ())), prefix=f"{prefix}{f.name}.")


def from_args(cls: type[T], ns: argparse.Namespace, *, prefix: str = "", base: T | None = None,
              **overrides: Any) -> T:
    """Build ``cls`` from parsed args: only options the user gave override the defaults (``base``'s values,
    or the class defaults). A nested config starts from its field's default instance."""
    given = vars(ns)
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = prefix + f.name
        if is_config(hints[f.name]):
            start = getattr(base, f.name) if base is not None else _default(f)
            kw[f.name] = from_args(hints[f.name], ns, prefix=key + ".", base=start)
        elif key in given:
            kw[f.name] = given[key]
    kw.update(overrides)
    return dataclasses.replace(base, **kw) if base is not None else cls(**kw)


def inherit(parent: Any, child: T, names: tuple[str, ...]) -> T:
    """``child`` with the fields ``names`` copied from ``parent`` (those ``child`` has)."""
    child_names = {f.name for f in dataclasses.fields(child)}
    return dataclasses.replace(child, **{n: getattr(parent, n) for n in names if n in child_names})


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict) -> T:
    """Inverse of :func:`to_dict` (unknown keys ignored, nested configs rebuilt)."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.init and f.name in d:
            kw[f.name] = from_dict(hints[f.name], d[f.name]) if is_config(hints[f.name]) else d[f.name]
    return cls(**kw)


def check_choices(cfg: Any, prefix: str = "") -> None:
    """Raise ``Fit3DError`` naming the field when a value is not among its ``metadata['choices']``
    (nested configs included)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_choices(value, f"{prefix}{f.name}.")
            continue
        choices = f.metadata.get("choices")
        bad = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v not in (choices or [v])]
        if bad:
            value = bad[0]
            raise Fit3DError(f"--{f.name.replace('_', '-')} ({type(cfg).__name__}.{f.name}) = {value!r}: "
                             f"expected one of {', '.join(map(str, choices))}")
