"""README.md and docs/dev-notes.md name only what exists: every module path and file, every dotted module
name, every ``fit3d`` command line's options and every option named in their text."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/dev-notes.md")


def _text(doc: str) -> str:
    return (ROOT / doc).read_text()


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _options() -> dict[str, set[str]]:
    """{command: every option string its parser takes (hidden aliases included)}."""
    from fit3d.cli import build_parser

    parser = build_parser()[0]
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in action.choices.items()}


@pytest.mark.parametrize("doc", DOCS)
def test_named_paths_exist(doc):
    missing = []
    for line in _text(doc).splitlines():
        ticked = _ticked(line)
        base = next((t for t in ticked[:1] if re.fullmatch(r"fit3d/[\w/]+/", t)), None)
        for t in ticked:
            if re.fullmatch(r"(fit3d|bench|docs|tests)/[\w./-]*", t) and "*" not in t:
                if not (ROOT / t).exists():
                    missing.append(t)
            elif base and re.fullmatch(r"\w+(\.py|/)", t) and not (ROOT / base / t).exists():
                missing.append(base + t)  # a file named in its package's row of the layout table
    assert not missing, missing


@pytest.mark.parametrize("doc", DOCS)
def test_named_modules_and_attributes_exist(doc):
    missing = []
    for t in _ticked(_text(doc)):
        m = re.fullmatch(r"(fit3d(?:\.\w+)+)", t.split("(")[0])
        if not m:
            continue
        parts = m.group(1).split(".")
        for i in range(len(parts), 0, -1):  # the longest importable prefix, the rest attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(t)
            break
        else:
            missing.append(t)
    assert not missing, missing


@pytest.mark.parametrize("doc", DOCS)
def test_command_lines_and_named_options_exist(doc):
    options = _options()
    every = set().union(*options.values())
    bench = " ".join(p.read_text() for p in (ROOT / "bench").glob("*.py"))
    text = _text(doc)
    bad = []
    for line in text.splitlines():  # command lines: every option belongs to that command
        m = re.match(r"\s*(?:\$ )?fit3d (\w+)(.*)", line)
        if m and m.group(1) in options:
            cmd = m.group(2).split("#")[0]
            bad += [f"fit3d {m.group(1)} {o}" for o in re.findall(r"(?<![\w-])(--[\w.-]+)", cmd)
                    if o not in options[m.group(1)]]
    for t in _ticked(text):  # options named in the text: some command's, or a bench script's
        if "torchrun" in t:
            t = t.split(" -m ", 1)[-1]  # torchrun's own options are not ours
        for o in re.findall(r"(?<![\w-])(--[a-z][\w.-]*)", t):
            o = o.rstrip(".")
            name = o[2:].removeprefix("no-")  # a bench config's boolean field: --x and --no-x
            field = re.search(rf"^\s+{name.replace('-', '_')}: ", bench, re.M)  # a bench config's field
            if o not in every and f'"{o}"' not in bench and not field and not o.endswith((".FIELD", "-FIELD")):
                bad.append(o)
    assert not bad, bad
