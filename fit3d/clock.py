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

A resumed command reuses what an earlier run in its folder finished. With a ``record`` file, each resumable
part of a stage (:meth:`Clock.unit`: one lifted scene, the fine-tuning) records its seconds when it is
computed, and a later run that reuses the part counts those instead of the near-zero it took to reuse it:
:meth:`Clock.results` gives each stage the seconds of the runs that computed it, and this run's own apart.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from pathlib import Path

from fit3d.errors import Fit3DError
from fit3d.io import read_json_dict, write_json


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its terminated, waited-for children so far."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def peak_rss_mib() -> float:
    """This process's peak resident set so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Wall and CPU seconds of named stages (a stage entered twice adds up): ``wall`` / ``cpu`` hold this run's.
    ``record``: the JSON file where :meth:`unit` keeps the seconds of each part computed (None: none kept)."""

    def __init__(self, record: str | os.PathLike | None = None):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.record = None if record is None else Path(record)
        self.units: dict[str, dict[str, int]] = {}  # stage -> parts {"computed", "recorded", "unrecorded"}
        self._earlier: dict[str, list[float]] = {}  # stage -> [wall, CPU] reused parts took then minus now
        self._recorded: dict | None = None
        self._t0, self._c0 = time.perf_counter(), cpu_seconds()
        self._open: tuple[str, float, float] | None = None

    @contextlib.contextmanager
    def stage(self, name: str):
        t, c = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t, cpu_seconds() - c)

    @contextlib.contextmanager
    def unit(self, name: str, key: str, reused: bool):
        """A resumable part of stage ``name``, ``key`` naming it in the record. Computed here (not ``reused``):
        its seconds are recorded once it finished. Reused: the recorded seconds of the run that computed it
        count instead of this run's; a part the record lacks (written by a fit3d that recorded none) keeps
        this run's and is counted ``unrecorded``."""
        w, c = self.wall.get(name, 0.0), self.cpu.get(name, 0.0)
        with self.stage(name):
            yield
        w, c = self.wall[name] - w, self.cpu[name] - c
        records = self._records()
        if not reused:
            how = "computed"
            records[key] = {"wall": round(w, 3), "cpu": round(c, 3)}
            if self.record is not None:
                write_json(self.record, {"units": records})
        elif _is_seconds(records.get(key)):
            how = "recorded"
            e = self._earlier.setdefault(name, [0.0, 0.0])
            e[0] += records[key]["wall"] - w
            e[1] += records[key]["cpu"] - c
        else:
            how = "unrecorded"
        n = self.units.setdefault(name, {"computed": 0, "recorded": 0, "unrecorded": 0})
        n[how] += 1

    def _records(self) -> dict:
        """{part key: {"wall", "cpu"}} of the record file (read once; a missing or unreadable one: empty)."""
        if self._recorded is None:
            try:
                d = read_json_dict(self.record, "stage seconds") if self.record and self.record.exists() else {}
            except Fit3DError:  # a damaged record loses its seconds, never the resume
                d = {}
            self._recorded = d.get("units") if isinstance(d.get("units"), dict) else {}
        return self._recorded

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
        """({stage: wall s}, {stage: CPU s}) rounded to 0.1 s, with a ``total`` row when asked: the seconds of
        the runs that computed each stage (reused parts at their recorded seconds; the total is this run's
        plus what the reused parts took then over now)."""
        wall, cpu = dict(self.wall), dict(self.cpu)
        if total:
            wall["total"], cpu["total"] = self.total()
        for name, (w, c) in self._earlier.items():
            for row in (name, "total") if total else (name,):
                wall[row] += w
                cpu[row] += c
        return {k: round(v, 1) for k, v in wall.items()}, {k: round(v, 1) for k, v in cpu.items()}

    def results(self, total: bool = False) -> dict:
        """``{"seconds", "cpu_seconds"}`` per stage of :meth:`rounded`; when parts were reused also ``"reused"``
        ({stage: {"recorded": n, "unrecorded": n, "of": parts}}) and ``"this_run"`` ({"seconds", "cpu_seconds"}:
        this run's own total, since the clock was made)."""
        wall, cpu = self.rounded(total)
        out = {"seconds": wall, "cpu_seconds": cpu}
        reused = {k: {"recorded": n["recorded"], "unrecorded": n["unrecorded"], "of": sum(n.values())}
                  for k, n in self.units.items() if n["recorded"] or n["unrecorded"]}
        if reused:
            w, c = self.total()
            out.update(reused=reused, this_run={"seconds": round(w, 1), "cpu_seconds": round(c, 1)})
        return out


def _is_seconds(rec) -> bool:
    return isinstance(rec, dict) and all(isinstance(rec.get(k), (int, float)) for k in ("wall", "cpu"))


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


def stage_table(results: dict) -> list[str]:
    """Markdown rows of ``results`` (:meth:`Clock.results`' keys): stage, wall seconds, CPU seconds (over all threads
    and child processes); when stages were reused, which run computed each and a note with this run's own."""
    wall, cpu, reused, this_run = (results["seconds"], results.get("cpu_seconds", {}), results.get("reused"),
                                   results.get("this_run"))
    if not reused:
        rows = ["| stage | wall s | CPU s |", "|---|---|---|"]
        return rows + [f"| {k} | {v:.0f} | {_cell(cpu, k)} |" for k, v in wall.items()]
    rows = ["| stage | wall s | CPU s | computed by |", "|---|---|---|---|"]
    rows += [f"| {k} | {v:.0f} | {_cell(cpu, k)} | {'' if k == 'total' else _computed_by(reused.get(k))} |"
             for k, v in wall.items()]
    notes = ["*earlier run*: reused from an earlier run in this folder, with the seconds of the run that computed it"
             + (" (the total counts them: what the whole run cost)" if "total" in wall else "")]
    if any(r["unrecorded"] for r in reused.values()):
        notes.append("*not recorded*: that run (an older fit3d) kept no seconds, so the row holds only this run's "
                     "seconds of reusing it, which understate what it cost")
    if this_run:
        notes.append(f"This run itself took {this_run['seconds']:.0f} s wall, {this_run['cpu_seconds']:.0f} CPU s")
    return rows + ["", ". ".join(notes) + "."]


def _computed_by(reused: dict | None) -> str:
    """Which run computed a stage, from its ``reused`` entry ({"recorded", "unrecorded", "of"}; None: this one)."""
    if not reused:
        return "this run"
    n = reused["of"]
    parts = {"earlier run": reused["recorded"], "earlier run, not recorded": reused["unrecorded"],
             "this run": n - reused["recorded"] - reused["unrecorded"]}
    return "; ".join(who + ("" if k == n else f" ({k} of {n})") for who, k in parts.items() if k)


def _cell(cpu: dict, k: str) -> str:
    return f"{cpu[k]:.0f}" if k in cpu else "-"
