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


@dataclasses.dataclass
class Method:
    ridge: float = 1e-4
    select: bool = True


@dataclasses.dataclass
class Top:
    iterations: int = 10
    solve: Method = dataclasses.field(default_factory=Method, metadata={"flat_alias": True})
    recipe: str | None = dataclasses.field(default=None, metadata={"set_by": "--recipe"})


def test_flat_spellings_of_nested_fields_are_hidden_aliases():
    p = argparse.ArgumentParser()
    add_arguments(p, Top, prefix="")
    assert "--solve.ridge" in p.format_help() and "--solve-ridge" not in p.format_help()
    for argv in (["--solve.ridge", "0.5", "--no-solve.select"], ["--solve-ridge", "0.5", "--no-solve-select"]):
        assert from_args(Top, p.parse_args(argv)).solve == Method(0.5, False)


def test_help_shows_the_values_of_the_base_the_command_starts_from():
    p = argparse.ArgumentParser()
    add_arguments(p, Top, base=Top(iterations=3, solve=Method(ridge=0.25)))
    text = " ".join(p.format_help().split())
    assert "(default: 3)" in text and "(default: 0.25)" in text and "(default: 10)" not in text


def test_a_field_set_by_another_option_is_rejected_naming_it(capsys):
    p = argparse.ArgumentParser()
    add_arguments(p, Top)
    with pytest.raises(SystemExit):
        p.parse_args(["--recipe", "lora"])
    assert "use --recipe" in capsys.readouterr().err


def test_set_fields_takes_dotted_and_flat_names_and_names_bad_items():
    from fit3d.config import set_fields

    cfg = set_fields(Top(), ["iterations=4", "solve.ridge=0.5", "solve_select=false"])
    assert cfg == Top(iterations=4, solve=Method(0.5, False))
    assert set_fields(Top(), ["recipe=none"]).recipe is None
    for bad, msg in (("nope=1", "no field 'nope'"), ("iterations=x", "not a valid int"), ("solve", "FIELD=VALUE"),
                     ("solve=1", "no field 'solve'")):
        with pytest.raises(Fit3DError, match=msg):
            set_fields(Top(), [bad])


def test_checks_name_the_option_with_its_prefix():
    from fit3d.config import check_counts, check_reals, option_error

    with pytest.raises(Fit3DError, match=r"^--lift\.solve\.ridge \(Method\.ridge\) = -1\.0: must be a finite"):
        check_reals(Method(ridge=-1.0), {"ridge": (0, 1)}, "lift.solve.")
    with pytest.raises(Fit3DError, match=r"^--lift\.iterations \(Top\.iterations\) = 0"):
        check_counts(Top(iterations=0), {"iterations": 1}, "lift.")
    assert str(option_error(Top(), "iterations", "no", "x.")).startswith("--x.iterations")
    with pytest.raises(Fit3DError, match=r"^--outer\.inner\.mode \(Inner\.mode\)"):
        check_choices(Outer(inner=Inner(mode="zzz")), "outer.")
