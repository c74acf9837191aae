"""Typed dataclass configs and their bridge to argparse.

Each stage owns a dataclass (``LiftConfig``, ``FinetuneConfig``, ``ProbeConfig``...). The CLI exposes
every field as ``--field-name`` with the field's type and default; configs round-trip through JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

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


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add ``--name`` options for every field of dataclass ``cls`` (help from ``metadata['help']``,
    allowed values from ``metadata['choices']``)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + f" (default: {default})"
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_)
        else:
            group.add_argument(flag, dest=f.name, type=tp, nargs="+" if is_list else None,
                               choices=f.metadata.get("choices"), default=argparse.SUPPRESS, help=help_)


def from_args(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed args (only options the user gave override the defaults)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    given = {k: v for k, v in vars(ns).items() if k in names}
    given.update(overrides)
    return cls(**given)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict) -> T:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in d.items() if k in names})


def check_choices(cfg: Any) -> None:
    """Raise ``Fit3DError`` naming the field when a value is not among its ``metadata['choices']``."""
    from fit3d.errors import Fit3DError

    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(cfg, f.name) not in choices:
            raise Fit3DError(f"{type(cfg).__name__}.{f.name} = {getattr(cfg, f.name)!r}: "
                             f"expected one of {', '.join(map(str, choices))}")
