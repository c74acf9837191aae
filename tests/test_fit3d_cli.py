import subprocess
import sys

from fit3d.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("lift", "finetune", "probe", "demo", "compare"):
        assert name in out
    assert set(COMMANDS) >= {"lift", "finetune", "probe", "demo", "compare", "pipeline"}


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "fit3d", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "lift" in r.stdout
