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
import os
import typing
from typing import Any, TypeVar

import numpy as np

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


def flag(name: str, prefix: str = "") -> str:
    """The command-line option of field ``name`` of a config nested at ``prefix`` ("lift.solve."):
    ``--lift.solve.cg-ridge``."""
    return "--" + prefix + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (), prefix: str = "",
                  base: Any = None) -> None:
    """Add ``--[prefix]name`` options for every field of dataclass ``cls``, recursing into nested configs.
    The help shows ``base``'s values (the instance the command starts from: a recipe, the demo's lift) where
    given, else the field defaults. A nested field with ``metadata["flat_alias"]`` also accepts its fields'
    old flat spellings as hidden options (``--solve-cg-ridge`` for ``--solve.cg-ridge``); a field with
    ``metadata["set_by"]`` is not an option: giving it is an error naming the option that sets it."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options" + (f" (--{prefix}...)" if prefix else ""))
    nested = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if is_config(hints[f.name]):
            nested.append(f)
            continue
        if f.metadata.get("set_by"):
            group.add_argument(flag(f.name, prefix), action=_SetElsewhere, nargs="?", default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS, set_by=f.metadata["set_by"])
            continue
        value = getattr(base, f.name) if base is not None else _default(f)
        _add_option(group, hints[f.name], f, [flag(f.name, prefix)], prefix + f.name,
                    f.metadata.get("help", "") + f" (default: {value})")
    for f in nested:
        child = getattr(base, f.name) if base is not None else _default(f)
        add_arguments(parser, hints[f.name], skip=tuple(f.metadata.get("inherit", ())), prefix=f"{prefix}{f.name}.",
                      base=child)
        if f.metadata.get("flat_alias"):
            for g in dataclasses.fields(hints[f.name]):
                if g.init and not is_config(typing.get_type_hints(hints[f.name])[g.name]):
                    _add_option(parser, typing.get_type_hints(hints[f.name])[g.name], g,
                                [flag(f"{f.name}_{g.name}", prefix)], f"{prefix}{f.name}.{g.name}", argparse.SUPPRESS)


def _add_option(group, annotation, f: dataclasses.Field, flags: list[str], dest: str, help_: str) -> None:
    tp, is_list = _base_type(annotation)
    if tp is bool:
        group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_)
    else:
        group.add_argument(*flags, dest=dest, type=tp, nargs="+" if is_list else None,
                           choices=f.metadata.get("choices"), default=argparse.SUPPRESS, help=help_)


class _SetElsewhere(argparse.Action):
    """A field another option sets (``FinetuneConfig.recipe``: ``--recipe``): giving it is a usage error."""

    def __init__(self, *args, set_by: str, **kwargs):
        self.set_by = set_by
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: not an option here; use {self.set_by} (e.g. {self.set_by} "
                     f"{values or 'NAME'})")


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


# ----------------------------------------------------------------------------------------- value overrides
def set_fields(cfg: T, items: list[str] | tuple[str, ...], what: str = "--set") -> T:
    """``cfg`` with ``FIELD=VALUE`` items applied, each value parsed as its field's type (bool: 1 / true / yes
    or 0 / false / no; ``none`` for an optional field; lists comma-separated). FIELD may be dotted into nested
    configs (``solve.cg_ridge``) or a nested field's old flat spelling (``solve_cg_ridge``, see
    ``metadata["flat_alias"]``). An unknown field or a bad value is a ``Fit3DError`` naming the item."""
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep:
            raise Fit3DError(f"{what} {item}: expected FIELD=VALUE")
        path = _field_path(type(cfg), name.strip().replace("-", "_"))
        if path is None:
            raise Fit3DError(f"{what} {item}: {type(cfg).__name__} has no field {name!r}")
        cfg = _replace_path(cfg, path, raw, item, what)
    return cfg


def _field_path(cls: type, name: str) -> list[str] | None:
    """[field, (nested field, ...)] for a dotted or flat-alias name of ``cls``; None when there is none."""
    hints = typing.get_type_hints(cls)
    head, _, rest = name.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if head in fields:
        if not rest:
            return None if is_config(hints[head]) else [head]
        sub = _field_path(hints[head], rest) if is_config(hints[head]) else None
        return [head, *sub] if sub else None
    for f in fields.values():  # an old flat spelling: solve_cg_ridge -> solve.cg_ridge
        if not rest and f.metadata.get("flat_alias") and head.startswith(f.name + "_"):
            sub = _field_path(hints[f.name], head[len(f.name) + 1:])
            return [f.name, *sub] if sub else None
    return None


def _replace_path(cfg, path: list[str], raw: str, item: str, what: str):
    name = path[0]
    if len(path) > 1:
        return dataclasses.replace(cfg, **{name: _replace_path(getattr(cfg, name), path[1:], raw, item, what)})
    f = next(f for f in dataclasses.fields(cfg) if f.name == name)
    tp, is_list = _base_type(typing.get_type_hints(type(cfg))[name])

    def parse(v: str):
        v = v.strip()
        if tp is bool:
            if v.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError("expected true / false")
            return v.lower() in ("1", "true", "yes")
        return tp(v)
    try:
        if raw.strip().lower() == "none" and "None" in str(f.type):
            value = None
        else:
            items = raw.strip().strip("[]").replace(",", " ").split()  # "4,5", "4 5" or JSON's "[4, 5]"
            value = [parse(v) for v in items] if is_list else parse(raw)
    except ValueError as e:
        raise Fit3DError(f"{what} {item}: not a valid {getattr(tp, '__name__', tp)} ({e})") from None
    return dataclasses.replace(cfg, **{name: value})


# ----------------------------------------------------------------------------------------- option checks
def option_error(cfg: Any, name: str, expected: str, prefix: str = "") -> Fit3DError:
    """The error for field ``name`` of config ``cfg`` (nested at ``prefix``), naming the field and its option."""
    return Fit3DError(f"{flag(name, prefix)} ({type(cfg).__name__}.{name}) = {getattr(cfg, name)!r}: {expected}")


def check_choices(cfg: Any, prefix: str = "") -> None:
    """Raise ``Fit3DError`` naming the option when a value is not among its field's ``metadata['choices']``
    (nested configs included, each named with its prefix: ``--lift.method``)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_choices(value, f"{prefix}{f.name}.")
            continue
        choices = f.metadata.get("choices")
        bad = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v not in (choices or [v])]
        if bad:
            raise Fit3DError(f"{flag(f.name, prefix)} ({type(cfg).__name__}.{f.name}) = {bad[0]!r}: "
                             f"expected one of {', '.join(map(str, choices))}")


def check_counts(cfg: Any, at_least: dict[str, int], prefix: str = "") -> None:
    """Every field in ``at_least`` is an int (or None where the field allows it) >= its bound."""
    for name, low in at_least.items():
        v = getattr(cfg, name)
        if v is None and _allows_none(cfg, name):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise option_error(cfg, name, f"must be an integer >= {low}", prefix)


def check_reals(cfg: Any, ranges: dict[str, tuple[float, float]], prefix: str = "") -> None:
    """Every field in ``ranges`` is a finite number within ``[low, high]`` (None allowed where the field allows it)."""
    for name, (low, high) in ranges.items():
        v = getattr(cfg, name)
        if v is None and _allows_none(cfg, name):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v) \
                or not low <= v <= high:
            raise option_error(cfg, name, f"must be a finite number in [{low:g}, {high:g}]", prefix)


def _allows_none(cfg: Any, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cfg) if f.name == name)
    return f.default is None or "None" in str(f.type)


def check_size(cfg: Any, name: str, prefix: str = "") -> None:
    """Field ``name`` is None or two positive integers (W H)."""
    v = getattr(cfg, name)
    if v is None:
        return
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0 for x in v):
        raise option_error(cfg, name, "must be two positive integers W H", prefix)


def machine_memory() -> int:
    """Bytes of physical memory of this machine (what no single run can exceed)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound
        return 1 << 62


def vit_bytes(width: float, height: float, patch: int = 16, dim: int = 384) -> float:
    """A lower bound on a ViT forward's memory for one ``width`` x ``height`` image: one attention matrix
    (tokens^2 float32) plus the token activations of a block (the largest registered patch, 16 px, and the
    smallest width, 384, so real models need more)."""
    tokens = max(1.0, width / patch) * max(1.0, height / patch)
    return tokens * tokens * 4 + tokens * dim * 4 * 8


def check_memory(cfg: Any, name: str, need: float, what: str, prefix: str = "") -> None:
    """``Fit3DError`` naming option ``name`` when ``need`` bytes (a lower bound of what its value asks for)
    exceed this machine's memory: refused at once instead of an allocation failure deep in the run."""
    have = machine_memory()
    if need > have:
        raise option_error(cfg, name, f"would need at least {need / 2**30:,.0f} GiB ({what}), more than this "
                                      f"machine's {have / 2**30:,.0f} GiB of memory", prefix)
