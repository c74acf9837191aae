"""SIGTERM / SIGINT: the run checkpoints, exits 130 saying "rerun to resume", and the rerun resumes to the
result of an uninterrupted run; resuming under other settings is an error naming them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from reliability_kit import assert_clean_error, digest, run_cli


def _signal_at(monkeypatch, optimizer_cls, call: int, sig) -> None:
    """Send ``sig`` to this process during the ``call``-th ``optimizer_cls.step``."""
    real = optimizer_cls.step
    n = {"calls": 0}

    def step(self, *a, **k):
        n["calls"] += 1
        if n["calls"] == call:
            os.kill(os.getpid(), sig)
        return real(self, *a, **k)

    monkeypatch.setattr(optimizer_cls, "step", step)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_lift_interrupt_checkpoints_and_resumes(sig, lifted, scene_dir, tmp_path, capsys, monkeypatch):
    from fit3d.lift import load_lifted

    out = tmp_path / "lifted"
    _signal_at(monkeypatch, torch.optim.Adam, 5, sig)  # 2 Adam steps per iteration: during iteration 3
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", out, *lifted[1])
    ck = out / "room" / "checkpoint.safetensors"
    assert rc == 130 and "Traceback" not in err, err
    assert "rerun the same command to resume" in err and str(ck) in err and signal.Signals(sig).name in err
    assert ck.exists() and not (out / "room" / "lift.json").exists()
    monkeypatch.undo()

    changed = list(lifted[1])
    changed[changed.index("--feature-dim") + 1] = "8"
    before = digest(out)
    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", out, *changed)  # resume under other settings
    assert_clean_error(rc, err, ck, "feature_dim: 4 -> 8")
    assert digest(out) == before

    rc, _, err = run_cli(capsys, "lift", scene_dir, "--out", out, *lifted[1])
    assert rc == 0, err
    a, b = load_lifted(out / "room"), load_lifted(lifted[0] / "room")
    assert a.meta["resumed_from"] == 3 and not ck.exists()
    torch.testing.assert_close(a.gaussians.features, b.gaussians.features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.decoder.conv.weight, b.decoder.conv.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_finetune_interrupt_checkpoints_and_resumes(sig, finetuned, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    out = tmp_path / "ft"
    _signal_at(monkeypatch, torch.optim.AdamW, 1, sig)
    rc, _, err = run_cli(capsys, "finetune", "--out", out, *finetuned[1])
    ck = out / "checkpoint.safetensors"
    assert rc == 130 and "Traceback" not in err and "rerun the same command to resume" in err, err
    assert ck.exists() and not (out / "fit3d.json").exists()
    monkeypatch.undo()

    rc, _, err = run_cli(capsys, "finetune", "--out", out, *finetuned[1])
    assert rc == 0, err
    assert not ck.exists()
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(finetuned[0] / "model" / "model.safetensors"))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_real_process_sigterm_exits_130_with_the_resume_message(scene_dir, tiny_dino, tmp_path):
    """A real ``python -m fit3d`` process (one case: a fresh process pays its imports and JIT, ~15 s)."""
    sig = signal.SIGTERM
    out = tmp_path / "lifted"
    argv = [sys.executable, "-m", "fit3d", "lift", str(scene_dir), "--out", str(out), "--method", "optimize",
            "--iterations", "100000",
            "--width", "16", "--feature-size", "32", "--feature-dim", "4", "--init-points", "200",
            "--max-gaussians", "400", "--no-progress", "--device", "cpu", "--checkpoint-every", "2",
            "--model-path", str(tiny_dino)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ck = out / "room" / "checkpoint.safetensors"
    t0 = time.monotonic()
    while not ck.exists() and p.poll() is None and time.monotonic() - t0 < 240:
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "rerun the same command to resume" in err and str(ck) in err
    assert ck.exists()
