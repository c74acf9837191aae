"""bench/gpu_check.py without CUDA: it says so, checks that everything it would run exists, and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench_kit import load_bench

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the GPU check itself")


def load_script():
    return load_bench("gpu_check")


def test_without_cuda_checks_and_exits_0(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "run", "--assets", str(tmp_path / "none"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no CUDA device" in r.stdout and "checks passed" in r.stdout and "failed" not in r.stdout
    assert "not prepared" in r.stdout  # says how to make the assets
    assert not (tmp_path / "out").exists()  # nothing run, nothing written


def test_names_what_is_missing(tmp_path, capsys):
    gc = load_script()
    assets = tmp_path / "assets"
    (assets / "wheels").mkdir(parents=True)
    (assets / "manifest.json").write_text(json.dumps({"wheels": ["gsplat-1.5.3-py3-none-any.whl"],
                                                      "rooms": ["room_000"], "bytes": 1}))
    gc.OPTIONS = {**gc.OPTIONS, "finetune": [*gc.OPTIONS["finetune"], "--no-such-option"]}
    assert gc.check_only(assets) == 1
    out = capsys.readouterr().out
    assert "gsplat-1.5.3-py3-none-any.whl" in out and "room_000" in out and "redkitchen" in out
    assert "--no-such-option" in out and "--max-steps" not in out.split("failed:")[1]
