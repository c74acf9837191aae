"""Feature precision: ``fit3d.device.resolve_precision`` / ``numerics`` and bf16 features on the CPU (close to the
float32 ones, cached apart from them, recorded in the lift and probe settings)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fit3d.device as D
from fit3d.errors import Fit3DError
from fit3d.models import load_backbone
from fit3d.models.tokens import TokenCache, extract_features, image_id, token_key


def test_precision_resolves_by_device_and_hardware(monkeypatch):
    monkeypatch.setattr(D, "cpu_has_fast_bf16", lambda: True)
    assert D.resolve_precision("auto", "cpu") == "bf16" and D.numerics("cpu", "auto") == "cpu-bf16"
    monkeypatch.setattr(D, "cpu_has_fast_bf16", lambda: False)  # bf16 emulated: auto keeps float32
    assert D.resolve_precision("auto", "cpu") == "fp32" and D.numerics("cpu", "auto") == "cpu"
    assert D.resolve_precision(None, "cpu") == "fp32" and D.resolve_precision("bf16", "cpu") == "bf16"
    assert D.resolve_precision(None, "cuda") == D.resolve_precision("auto", "cuda") == "bf16"
    assert D.numerics("cuda", None) == "cuda" and D.numerics("cuda", "fp32") == "cuda-fp32"
    assert D.resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(Fit3DError, match="choose from"):
        D.resolve_precision("fp16", "cpu")
    with pytest.raises(Fit3DError, match="mps"):
        D.resolve_precision("bf16", "mps")


def test_bf16_features_are_close_to_float32_and_cached_apart(tmp_path, dinov2_path):
    bb = load_backbone("dinov2_small", model_path=str(dinov2_path))
    rng = np.random.default_rng(0)
    ims = [rng.random((56, 70, 3), dtype=np.float32) for _ in range(3)]
    ids = [image_id(im) for im in ims]
    cache, model = TokenCache(tmp_path), {"backbone": "dinov2_small"}
    got = {}
    for p in ("fp32", "bf16"):
        got[p] = cache.get(token_key(model, precision=p), ids,
                           lambda idx, p=p: extract_features(bb, [ims[i] for i in idx], 2, precision=p))
        assert got[p].computed == 3  # the float32 entries are not bf16's
    assert bb.precision is None  # set for the extraction only
    ref = bb.features(torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2), batch_size=2)
    assert torch.equal(got["fp32"].patch, ref.patch)  # fp32 is the backbone's own CPU default
    a, b = got["fp32"].patch, got["bf16"].patch
    rel = float((b - a).abs().max() / a.abs().max())
    cos = float(F.cosine_similarity(a, b, dim=1).mean())
    assert 0 < rel < 0.05 and cos > 0.99
    again = cache.get(token_key(model, precision="bf16"), ids, lambda idx: pytest.fail("bf16 entries are cached"))
    assert torch.equal(again.patch, b)


def test_lift_and_probe_records_hold_the_resolved_precision(monkeypatch):
    from fit3d.lift.config import LiftConfig
    from fit3d.lift.lifted import lift_settings
    from fit3d.probe.config import ProbeConfig, probe_settings

    monkeypatch.setattr(D, "cpu_has_fast_bf16", lambda: True)
    assert lift_settings(LiftConfig(device="cpu"), "scene")["precision"] == "bf16"
    assert lift_settings(LiftConfig(device="cpu", precision="fp32"), "scene")["precision"] == "fp32"
    assert probe_settings(ProbeConfig(device="cpu"))["precision"] == "bf16"
    monkeypatch.setattr(D, "cpu_has_fast_bf16", lambda: False)
    assert probe_settings(ProbeConfig(device="cpu"))["precision"] == "fp32"
