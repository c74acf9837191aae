"""fit3d.clock: wall and CPU seconds per stage, children's CPU included once they are waited for; reused parts
at the seconds recorded when they were computed."""

import json
import subprocess
import sys

import pytest

from fit3d.clock import Clock, cpu_seconds, stage_table


def test_stages_count_this_process_and_waited_children(spin):
    clock = Clock()
    with clock.stage("child"):
        # busy until 0.2 CPU s are spent (a count of iterations is too short on a fast machine)
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                        "while time.process_time() - t < 0.2: pass"], check=True)
    clock.start("spin")
    spin(0.2)
    clock.stop()
    with clock.stage("spin"):  # a stage entered again adds up
        pass
    wall, cpu = clock.rounded(total=True)
    assert set(wall) == set(cpu) == {"child", "spin", "total"}
    assert cpu["child"] > 0.05 and cpu["spin"] > 0.05  # the child's loop is counted once it exited
    assert cpu["total"] >= cpu["child"] + cpu["spin"] - 0.2
    assert cpu_seconds() > 0
    rows = stage_table({"seconds": wall, "cpu_seconds": cpu})
    assert rows[0] == "| stage | wall s | CPU s |" and len(rows) == 5


def test_reused_parts_count_the_seconds_recorded_when_they_were_computed(tmp_path, spin):
    record = tmp_path / "seconds.json"
    first = Clock(record=record)
    with first.unit("lift", "lift/a", reused=False):
        spin(0.2)
    with pytest.raises(RuntimeError), first.unit("lift", "lift/b", reused=False):
        raise RuntimeError  # a part that failed is not recorded: a rerun computes it again
    rec = json.loads(record.read_text())["units"]
    assert set(rec) == {"lift/a"} and rec["lift/a"]["cpu"] >= 0.2

    again = Clock(record=record)
    with again.unit("lift", "lift/a", reused=True):  # reused: takes next to no time here
        pass
    with again.unit("lift", "lift/b", reused=False):
        spin(0.1)
    with again.stage("probe"):
        pass
    res = again.results(total=True)
    assert res["cpu_seconds"]["lift"] == pytest.approx(rec["lift/a"]["cpu"] + again.cpu["lift"], abs=0.051)
    assert res["cpu_seconds"]["lift"] >= 0.3 and again.cpu["lift"] < 0.25  # clock.cpu stays this run's own
    assert res["reused"] == {"lift": {"recorded": 1, "unrecorded": 0, "of": 2}}
    assert res["cpu_seconds"]["total"] >= 0.3 and res["this_run"]["cpu_seconds"] < res["cpu_seconds"]["total"] - 0.15
    assert set(json.loads(record.read_text())["units"]) == {"lift/a", "lift/b"}  # b recorded now, a kept
    rows = stage_table(res)
    assert rows[:2] == ["| stage | wall s | CPU s | computed by |", "|---|---|---|---|"]
    assert rows[2].endswith("| earlier run (1 of 2); this run (1 of 2) |") and rows[3].endswith("| this run |")
    assert rows[4].startswith("| total |") and "This run itself took" in rows[-1]


def test_without_a_record_reused_parts_keep_this_runs_seconds_marked(tmp_path):
    record = tmp_path / "seconds.json"
    record.write_text("{not json")  # damaged (or absent: a folder from before the seconds were recorded)
    clock = Clock(record=record)
    with clock.unit("finetune", "finetune", reused=True):
        pass
    res = clock.results()
    assert res["reused"] == {"finetune": {"recorded": 0, "unrecorded": 1, "of": 1}}
    assert res["cpu_seconds"]["finetune"] == round(clock.cpu["finetune"], 1)
    rows = stage_table(res)
    assert rows[2].endswith("| earlier run, not recorded |") and "understate" in rows[-1]
    assert stage_table(Clock().results()) == ["| stage | wall s | CPU s |", "|---|---|---|"]  # nothing reused
