"""``load_bench(name)``: a ``bench/<name>.py`` script imported as a module, once per session (registered in
``sys.modules`` before it runs: its dataclasses look their module up)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from fit3d.paths import REPO_ROOT


def load_bench(name: str) -> ModuleType:
    key = f"{name}_bench"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO_ROOT / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]
