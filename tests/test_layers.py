"""The package reads as the method: data -> models -> splat -> lift -> finetune -> probe, with viz (pictures,
above data only) below them and cli / pipeline / demo / compare / view on top. No import runs upward (function-local
imports included) and no imports form a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import fit3d

ROOT = Path(fit3d.__file__).parent
# Lower layers never import higher ones; a package may import itself.
LAYERS = {
    "errors": 0, "paths": 0, "io": 1, "resize": 1, "config": 1, "device": 1, "clock": 2, "run": 2, "guard": 2,
    "data": 3, "viz": 4, "prepare": 4,
    "models": 5,
    "splat": 6,
    "lift": 7,
    "finetune": 8,
    "probe": 9,
    "pipeline": 10, "compare": 10, "demo": 11, "view": 11, "__init__": 12, "cli": 13, "__main__": 14,
}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> str:
    """The layer key of a module: its first component below ``fit3d`` (``fit3d`` itself: ``__init__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported fit3d module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        out += [(n, id(node) in top) for n in names if n == "fit3d" or n.startswith("fit3d.")]
    return out


def _graph():
    mods = {_module(p): p for p in ROOT.rglob("*.py")}
    return mods, {m: _imports(p) for m, p in mods.items()}


def test_every_unit_has_a_layer():
    mods, _ = _graph()
    assert {_unit(m) for m in mods} <= set(LAYERS), {_unit(m) for m in mods} - set(LAYERS)


def test_no_import_runs_upward():
    _, graph = _graph()
    upward = [f"{m} -> {dep}" for m, deps in graph.items() for dep, _ in deps
              if _unit(dep) != _unit(m) and LAYERS[_unit(dep)] >= LAYERS[_unit(m)]]
    assert not upward, "\n".join(upward)


def test_module_level_imports_have_no_cycle():
    mods, graph = _graph()

    def resolve(dep: str) -> str | None:  # "fit3d.lift.config" or a package; "from fit3d.x import name"
        while dep and dep not in mods:
            dep = dep.rpartition(".")[0]
        return dep or None

    edges = {m: {resolve(d) for d, top in deps if top} - {None, m} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in edges[m]:
            if state.get(d) == 1:
                cycle.extend(stack[stack.index(d):] + [m, d] if d in stack else [m, d])
                return True
            if d not in state and visit(d, stack + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(mods):
        if m not in state and visit(m, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_two_files_import_each_other_in_any_way():
    """No circle of imports at all, function-local and ``TYPE_CHECKING`` ones included: a module that needs
    one it is imported by takes a protocol, a registry entry or a shared lower module instead."""
    mods, graph = _graph()

    def resolve(dep: str) -> str | None:
        while dep and dep not in mods:
            dep = dep.rpartition(".")[0]
        return dep or None

    edges = {m: {resolve(d) for d, _ in deps} - {None, m} for m, deps in graph.items()}
    done: set[str] = set()

    def cycle_from(m: str, stack: list[str]) -> list[str] | None:
        if m in stack:
            return stack[stack.index(m):] + [m]
        if m in done:
            return None
        for d in sorted(edges[m]):
            found = cycle_from(d, stack + [m])
            if found:
                return found
        done.add(m)
        return None

    for m in sorted(mods):
        found = cycle_from(m, [])
        assert not found, " -> ".join(found)

