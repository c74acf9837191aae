"""fit3d.models.tokens: one entry per (model, layers, device, image); images by their pixels or file stat."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fit3d.models.tokens import TokenCache, entry_key, extract_features, file_id, image_id, token_key


class _Pool:
    patch_size = 4

    def __init__(self, scale=1.0):
        self.scale, self.images = scale, 0

    def features(self, x):
        self.images += len(x)
        f = torch.nn.functional.avg_pool2d(x, 4) * self.scale
        return f, f.mean((2, 3))


def _images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((8, 12, 3), dtype=np.float32) for _ in range(n)]


def _get(cache, model, images, what):
    return cache.get(what, [image_id(im) for im in images],
                     lambda idx: extract_features(model, [images[i] for i in idx], 2))


def test_each_image_is_computed_once_and_read_back_equal(tmp_path):
    cache, model, ims = TokenCache(tmp_path), _Pool(), _images()
    what = token_key({"backbone": "pool"})
    a = _get(cache, model, ims, what)
    assert a.computed == 4 and model.images == 4 and a.patch.shape == (4, 3, 2, 3) and a.cls.shape == (4, 3)
    b = _get(cache, model, [ims[2], ims[0], ims[2]], what)  # a subset, reordered, one image twice
    assert b.from_cache and model.images == 4
    torch.testing.assert_close(b.patch, a.patch[[2, 0, 2]], rtol=0, atol=0)
    c = _get(cache, model, [ims[1], _images(1, seed=1)[0], _images(1, seed=1)[0]], what)
    assert c.computed == 1 and model.images == 5  # only the new image, once
    torch.testing.assert_close(c.patch[0], a.patch[1], rtol=0, atol=0)
    assert len(list(tmp_path.glob("*.safetensors"))) == 5


def test_the_key_separates_models_layers_devices_and_pixels(tmp_path):
    ims = _images(2)
    base = token_key({"backbone": "pool", "fingerprint": "a"})
    others = [token_key({"backbone": "pool", "fingerprint": "b"}), token_key({"backbone": "pool", "fingerprint": "a"}, [3]),
              token_key({"backbone": "pool", "fingerprint": "a"}, device="cuda"),
              token_key({"backbone": "pool", "fingerprint": "a"}, variant="mean")]
    keys = {entry_key(w, image_id(ims[0])) for w in [base, *others]}
    assert len(keys) == 5
    assert image_id(ims[0]) != image_id(ims[1])
    assert image_id(ims[0]) == image_id(ims[0].astype(np.float64))  # the float32 pixels the backbone gets
    assert image_id(ims[0]) != image_id(ims[0].reshape(12, 8, 3))  # same bytes, another shape
    nudged = ims[0].copy()
    nudged[0, 0, 0] += 1e-3
    assert image_id(nudged) != image_id(ims[0])
    cache, model = TokenCache(tmp_path), _Pool()
    _get(cache, model, ims, base)
    _get(cache, _Pool(2.0), ims, others[0])  # another model: its own entries
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_no_root_computes_every_time(tmp_path):
    cache, model, ims = TokenCache(None), _Pool(), _images(3)
    _get(cache, model, ims, token_key("pool"))
    _get(cache, model, ims, token_key("pool"))
    assert model.images == 6 and not list(tmp_path.iterdir())


def test_a_file_identity_follows_its_content(tmp_path):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"one")
    first = file_id(f, "cls 224")
    assert file_id(f, "cls 224") == first and file_id(f, "cls 96") != first
    f.write_bytes(b"thr")  # re-saved with other bytes of the same size and the same mtime
    os.utime(f, ns=(1, 1))
    changed = file_id(f, "cls 224")
    assert changed != first
    copy = tmp_path / "elsewhere" / "b.jpg"  # the dataset copied: another path, another mtime, the same bytes
    copy.parent.mkdir()
    copy.write_bytes(b"thr")
    assert file_id(copy, "cls 224") == changed


def test_a_foreign_file_under_an_entry_name_is_recomputed(tmp_path):
    cache, model, ims = TokenCache(tmp_path), _Pool(), _images(2)
    what = token_key("pool")
    _get(cache, model, ims, what)
    (e0, e1) = sorted(tmp_path.glob("*.safetensors"))
    e0.write_bytes(e1.read_bytes())
    with pytest.warns(UserWarning, match="unreadable token cache entry"):
        again = _get(cache, model, ims, what)
    assert again.computed == 1


@pytest.mark.parametrize("long_side", [224, 448])
def test_a_lift_and_a_probe_give_the_backbone_the_same_pixels(sevenscenes_path, long_side):
    """Sharing needs equal inputs: Stage 1 resizes a 640x480 frame to its backbone input as the probes' readers do
    (the pipeline's 448 px lift and 448x336 probes; bench/generalize.py's 224 px RedKitchen lift and probes)."""
    from fit3d.data import read_scene
    from fit3d.lift.targets import backbone_images
    from fit3d.probe.datasets import load_probe_data

    names = {"frame-000000", "frame-000002"}
    views = read_scene(sevenscenes_path, names=lambda n: n in names).views
    lift = backbone_images(views, long_side, 14)
    size = (lift[0].shape[1], lift[0].shape[0])
    probe = load_probe_data(sevenscenes_path, "train", size, train_frames=(0, 2))
    got = [probe.view(probe.names.index(v.name)).image for v in views]
    assert [image_id(a) for a in lift] == [image_id(b) for b in got]


def test_tokens_keep_the_backbones_memory_layout(tmp_path):
    """DINOv2's patch grids are [N, D, h, w] views of [N, h, w, D] (channels last); read entries are laid out the
    same, so a head sees the same strides (and sums in the same order) whether the tokens were computed or read."""
    cache, ims = TokenCache(tmp_path), _images(3)

    def compute(idx):
        p = torch.randn(len(idx), 2, 3, 5).permute(0, 3, 1, 2)  # [M, D=5, 2, 3], channels last as DINOv2's
        return p, torch.randn(len(idx), 5)

    what = token_key("pool")
    a = cache.get(what, [image_id(im) for im in ims], compute)
    b = cache.get(what, [image_id(im) for im in ims], compute)
    assert b.from_cache and a.patch.stride() == b.patch.stride()
    assert b.patch.is_contiguous(memory_format=torch.channels_last)
