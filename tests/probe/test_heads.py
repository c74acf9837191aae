"""Probe heads saved by ``fit3d probe`` load back into identical modules."""

import pytest
import torch

from fit3d.errors import Fit3DError, ModelNotFoundError
from fit3d.probe.depth import DepthSettings, train_depth
from fit3d.probe.heads import (depth_head_meta, head_path, load_depth_head, load_head, load_seg_head, save_head,
                               seg_head_meta)
from fit3d.probe.seg import SegSettings, train_seg


def test_depth_head_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    patch, cls = torch.randn(4, 6, 3, 4, generator=g), torch.randn(4, 5, generator=g)
    depth = 1 + torch.rand(4, 12, 16, generator=g)
    s = DepthSettings(iterations=5, batch_size=2, lr=1e-2, warmup=1, n_bins=8, min_depth=0.5, max_depth=4.0)
    head, _ = train_depth(patch, cls, depth, s)
    meta = depth_head_meta(head, 6, 5, s.min_depth, s.max_depth, source={"kind": "original", "layers": None},
                           resolution=[16, 12])
    path = save_head(head_path(tmp_path, "original"), head, meta)
    assert path == tmp_path / "heads" / "original.pt"
    loaded, m = load_depth_head(path)
    assert isinstance(loaded, type(head)) and not loaded.training
    assert m["type"] == "depth" and m["n_bins"] == 8 and m["min_depth"] == 0.5 and m["max_depth"] == 4.0
    assert m["patch_dim"] == 6 and m["cls_dim"] == 5 and m["resolution"] == [16, 12]
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(patch, cls, (12, 16)), head(patch, cls, (12, 16)))
    with pytest.raises(Fit3DError, match="expected 'seg'"):
        load_seg_head(path)


def test_seg_head_round_trip_and_errors(tmp_path):
    g = torch.Generator().manual_seed(1)
    patch, labels = torch.randn(4, 6, 3, 4, generator=g), torch.randint(0, 3, (4, 12, 16), generator=g)
    head, _ = train_seg(patch, labels, 3, SegSettings(iterations=5, batch_size=2, warmup=1))
    path = save_head(tmp_path / "h.pt", head, seg_head_meta(head, class_names=["a", "b", "c"]))
    loaded, m = load_head(path)
    assert m["type"] == "seg" and m["num_classes"] == 3 and m["class_names"] == ["a", "b", "c"]
    head.eval()
    with torch.no_grad():  # BatchNorm running statistics travel too
        torch.testing.assert_close(loaded(patch, (12, 16)), head(patch, (12, 16)))
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_depth_head(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Fit3DError, match="bad.pt"):
        load_head(tmp_path / "bad.pt")
