"""The run layer: checkpoint round trips (optimiser, RNG), corrupt files, the resume rule, interrupts, staging."""

from __future__ import annotations

import os
import random
import signal
import stat
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from fit3d.errors import Fit3DError
from fit3d.io import atomic_path, clean_stale_temps, write_json
from fit3d.run import (Interrupt, Interrupted, SettingsMismatch, capture_rng, check_resume, commit_staged,
                       load_checkpoint, restore_rng, result_settings, save_checkpoint, staged_dir)


def _trained_adam():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
    return model, opt


def test_checkpoint_round_trips_model_optimizer_and_plain_state(tmp_path):
    model, opt = _trained_adam()
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(5)
    state = {"step": 3, "losses": [0.5, float("inf")], "names": ("a", "b"), "np_rng": rng.bit_generator.state,
             "generator": gen.get_state(), "perm": [2, 0, 1], "nested": {"__odd": 1, 2: np.arange(3)}}
    save_checkpoint(tmp_path / "ck.safetensors", {"model": model.state_dict(), "optimizer": opt.state_dict()},
                    state)
    tensors, st = load_checkpoint(tmp_path / "ck.safetensors")
    model2, opt2 = _trained_adam()
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    model2.load_state_dict(tensors["model"])
    opt2.load_state_dict(tensors["optimizer"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for k, v in opt.state_dict()["state"].items():
        for name, t in v.items():
            torch.testing.assert_close(opt2.state_dict()["state"][k][name], t, rtol=0, atol=0)
    assert st["step"] == 3 and st["losses"] == [0.5, float("inf")] and st["names"] == ("a", "b")
    assert st["nested"]["__odd"] == 1 and st["nested"][2].tolist() == [0, 1, 2]
    rng2 = np.random.default_rng(0)
    rng2.bit_generator.state = st["np_rng"]
    gen2 = torch.Generator().set_state(st["generator"])
    assert rng2.random() == rng.random() and torch.equal(torch.rand(3, generator=gen2), torch.rand(3, generator=gen))


def test_global_rng_states_survive_the_file(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    save_checkpoint(tmp_path / "ck", {}, {"rng": capture_rng()})
    want = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng(load_checkpoint(tmp_path / "ck")[1]["rng"])
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "pickle", "missing"])
def test_damaged_checkpoint_is_an_error_naming_the_file(tmp_path, damage):
    p = tmp_path / "checkpoint.safetensors"
    save_checkpoint(p, {"w": torch.ones(100)}, {"step": 1})
    data = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        p.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        p.write_bytes(b"")
    elif damage == "pickle":
        torch.save({"step": 1}, p)  # a pickle is never unpickled
    else:
        p.unlink()
    with pytest.raises(Fit3DError, match="checkpoint.safetensors"):
        load_checkpoint(p)


@dataclass
class _Cfg:
    lr: float = 1e-3
    width: int = 96
    size: list[int] = field(default_factory=lambda: [4, 3])
    progress: bool = field(default=True, metadata={"volatile": True})


def test_result_settings_drop_volatile_fields_and_mismatch_names_each_field(tmp_path):
    rec = result_settings(_Cfg())
    assert rec == {"lr": 1e-3, "width": 96, "size": [4, 3]}
    check_resume(rec, result_settings(_Cfg(progress=False)), "finished lift", tmp_path)  # volatile: no error
    check_resume(rec, {**result_settings(_Cfg()), "size": (4, 3)}, "x", tmp_path)  # tuple == list once stored
    with pytest.raises(SettingsMismatch) as e:
        check_resume(rec, {**result_settings(_Cfg(lr=2e-3, width=64)), "scene": "s"}, "checkpoint", tmp_path / "ck")
    msg = str(e.value)
    assert "lr: 0.001 -> 0.002" in msg and "width: 96 -> 64" in msg and "scene: (not recorded)" in msg
    assert "--overwrite" in msg and "--out" in msg and str(tmp_path / "ck") in msg
    with pytest.raises(SettingsMismatch, match="records no settings"):
        check_resume(None, rec, "finished run", tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_turns_signals_into_a_flag_then_a_resume_message(sig):
    old = signal.getsignal(sig)
    with pytest.raises(Interrupted, match="rerun the same command to resume"):
        with Interrupt() as stop:
            os.kill(os.getpid(), sig)
            assert stop.requested == signal.Signals(sig).name
            stop.stop("lift x", "out/checkpoint")
    assert signal.getsignal(sig) == old
    assert isinstance(Interrupted("m"), KeyboardInterrupt)  # the CLI's exit status 130 path


def test_atomic_outputs_use_the_umask_and_stale_temps_are_cleaned(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    dead = tmp_path / ".a.json.999999999.abc.tmp"  # no such pid
    dead.write_text("half")
    live = tmp_path / f".b.json.{os.getpid()}.abc.tmp"
    live.write_text("being written")
    assert clean_stale_temps(tmp_path) == [dead]
    assert live.exists() and not dead.exists()
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "c.json") as tmp:
            tmp.write_text("x")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.json", live.name])


def test_staged_overwrite_keeps_the_old_result_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "result.txt").write_text("old")
    work = staged_dir(out)
    work.mkdir()
    (work / "result.txt").write_text("new")
    assert (out / "result.txt").read_text() == "old"  # a failure before the commit leaves the old result
    commit_staged(work, out)
    assert (out / "result.txt").read_text() == "new" and not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]
