"""Wall and CPU seconds per stage of a command.

CPU seconds are user + system time of this process and of its waited-for children (DataLoader workers,
``torchrun`` ranks), over all threads: a cost that other jobs on the same cores do not change, beside
the wall seconds that they do. ``Clock`` keeps both per named stage::

    clock = Clock()
    with clock.stage("lift"):
        ...
    clock.start("probe")     # or: until the next start() / stop()
    ...
    clock.stop()
    clock.wall, clock.cpu  # {"lift": seconds, "probe": seconds}
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from pathlib import Path


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its terminated, waited-for children so far."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def peak_rss_mib() -> float:
    """This process's peak resident set so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Wall and CPU seconds of named stages (a stage entered twice adds up)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t0, self._c0 = time.perf_counter(), cpu_seconds()
        self._open: tuple[str, float, float] | None = None

    @contextlib.contextmanager
    def stage(self, name: str):
        t, c = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t, cpu_seconds() - c)

    def start(self, name: str) -> None:
        """Begin stage ``name`` (ending the one begun by the last ``start``)."""
        self.stop()
        self._open = (name, time.perf_counter(), cpu_seconds())

    def stop(self) -> None:
        """End the stage begun by ``start`` (nothing when none is open)."""
        if self._open is not None:
            name, t, c = self._open
            self._open = None
            self.add(name, time.perf_counter() - t, cpu_seconds() - c)

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.wall[name] = self.wall.get(name, 0.0) + wall
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    def total(self) -> tuple[float, float]:
        """(wall, CPU) seconds since the clock was made."""
        return time.perf_counter() - self._t0, cpu_seconds() - self._c0

    def rounded(self, total: bool = False) -> tuple[dict, dict]:
        """({stage: wall s}, {stage: CPU s}) rounded to 0.1 s, with a ``total`` row when asked."""
        wall, cpu = dict(self.wall), dict(self.cpu)
        if total:
            wall["total"], cpu["total"] = self.total()
        return {k: round(v, 1) for k, v in wall.items()}, {k: round(v, 1) for k, v in cpu.items()}


def machine() -> dict:
    """Cores, the CPU's model name (machines differ between sittings: compare seconds only within one) and the
    1-minute load average now (what else was running shows in wall, not CPU, seconds)."""
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "load": round(os.getloadavg()[0], 2)}


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), None when unknown."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def stage_table(wall: dict, cpu: dict) -> list[str]:
    """Markdown rows: stage, wall seconds, CPU seconds (over all threads and child processes)."""
    rows = ["| stage | wall s | CPU s |", "|---|---|---|"]
    rows += [f"| {k} | {v:.0f} | {cpu[k]:.0f} |" if k in cpu else f"| {k} | {v:.0f} | - |" for k, v in wall.items()]
    return rows
