"""fit3d.config: dataclass configs <-> argparse (nested, dotted options) <-> JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from fit3d.config import add_arguments, check_choices, from_args, from_dict, inherit, to_dict
from fit3d.errors import Fit3DError


@dataclasses.dataclass
class Inner:
    seed: int = 0
    steps: int = 5
    mode: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
    sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    flag: bool = False


@dataclasses.dataclass
class Outer:
    seed: int = 7
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(steps=9), metadata={"inherit": ("seed",)})


def parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, Outer)
    return from_args(Outer, p.parse_args(argv))


def test_nested_options_round_trip_through_argv_and_json():
    cfg = parse(["--name", "y", "--inner.steps", "3", "--inner.mode", "b", "--inner.sizes", "4", "5", "--inner.flag"])
    assert cfg == Outer(name="y", inner=Inner(steps=3, mode="b", sizes=[4, 5], flag=True))
    assert from_dict(Outer, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_nested_defaults_come_from_the_fields_default_instance():
    assert parse([]).inner.steps == 9  # Outer's default Inner(steps=9), not Inner's 5
    assert parse(["--inner.mode", "b"]).inner == Inner(steps=9, mode="b")


def test_inherited_fields_are_not_exposed_twice_and_are_copied_down():
    p = argparse.ArgumentParser()
    add_arguments(p, Outer)
    with pytest.raises(SystemExit):
        p.parse_args(["--inner.seed", "1"])
    cfg = parse(["--seed", "11"])
    assert inherit(cfg, cfg.inner, ("seed",)).seed == 11


def test_bad_choice_names_the_field_nested_and_in_lists():
    with pytest.raises(Fit3DError, match="Inner.mode"):
        check_choices(Outer(inner=Inner(mode="zzz")))

    @dataclasses.dataclass
    class Tasks:
        tasks: list[str] = dataclasses.field(default_factory=lambda: ["depth"], metadata={"choices": ("depth", "seg")})

    check_choices(Tasks(["depth", "seg"]))
    with pytest.raises(Fit3DError, match=r"--tasks \(Tasks.tasks\) = 'sge'"):
        check_choices(Tasks(["depth", "sge"]))
