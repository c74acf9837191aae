"""fit3d.clock: wall and CPU seconds per stage, children's CPU included once they are waited for."""

import subprocess
import sys

from fit3d.clock import Clock, cpu_seconds, stage_table


def test_stages_count_this_process_and_waited_children():
    clock = Clock()
    with clock.stage("child"):
        # busy until 0.2 CPU s are spent (a count of iterations is too short on a fast machine)
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                        "while time.process_time() - t < 0.2: pass"], check=True)
    clock.start("spin")
    t = cpu_seconds()
    while cpu_seconds() - t < 0.2:
        pass
    clock.stop()
    with clock.stage("spin"):  # a stage entered again adds up
        pass
    wall, cpu = clock.rounded(total=True)
    assert set(wall) == set(cpu) == {"child", "spin", "total"}
    assert cpu["child"] > 0.05 and cpu["spin"] > 0.05  # the child's loop is counted once it exited
    assert cpu["total"] >= cpu["child"] + cpu["spin"] - 0.2
    assert cpu_seconds() > 0
    rows = stage_table(wall, cpu)
    assert rows[0] == "| stage | wall s | CPU s |" and len(rows) == 5
