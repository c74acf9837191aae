"""bench/soup.py: the weights' mean of Stage 2 folders of one recipe, the shared [CLS] branch kept, sources unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench_kit import load_bench


def folder(root, name, seed, w, branch=None, settings=None):
    d = root / name
    (d / "model").mkdir(parents=True)
    save_file({"w": w}, str(d / "model" / "model.safetensors"))
    (d / "model" / "config.json").write_text("{}")
    if branch is not None:
        save_file({"b": branch}, str(d / "model" / "cls_branch.safetensors"))
    (d / "fit3d.json").write_text(json.dumps({"backbone": "dinov2_small",
                                              "settings": {"seed": seed, "lr": 1e-5, **(settings or {})},
                                              "metrics": {"heldout": 1, "other": 2}}))
    return d


def test_soup_averages_weights_keeps_the_shared_branch_and_records_its_sources(tmp_path):
    sp = load_bench("soup")
    b = torch.arange(4.0)
    a = folder(tmp_path, "a", 0, torch.tensor([1.0, 2.0]), b)
    c = folder(tmp_path, "c", 1, torch.tensor([3.0, 6.0]), b.clone())
    before = (a / "model" / "model.safetensors").read_bytes()
    m = sp.soup([a, c], tmp_path / "soup", a)
    assert torch.equal(load_file(str(tmp_path / "soup" / "model" / "model.safetensors"))["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(load_file(str(tmp_path / "soup" / "model" / "cls_branch.safetensors"))["b"], b)
    assert m["settings"]["seed"] == 0 and len(m["soup_of"]) == 2 and "heldout" not in m["metrics"]
    assert (a / "model" / "model.safetensors").read_bytes() == before  # a source is never changed


def test_soup_refuses_other_recipes_and_other_branches(tmp_path):
    sp = load_bench("soup")
    a = folder(tmp_path, "a", 0, torch.ones(2), torch.zeros(2))
    other = folder(tmp_path, "o", 1, torch.ones(2), torch.zeros(2), settings={"lr": 2e-5})
    with pytest.raises(SystemExit, match="beyond the seed"):
        sp.soup([a, other], tmp_path / "s1", a)
    moved = folder(tmp_path, "m", 1, torch.ones(2), torch.ones(2))
    with pytest.raises(SystemExit, match="branches differ"):
        sp.soup([a, moved], tmp_path / "s2", a)
