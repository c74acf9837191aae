"""The concat source's features, composed from the cached original and fine-tuned ones, equal
``ConcatFeatures``' (per layer original then fine-tuned channels, [CLS] of the original)."""

import numpy as np
import torch

from fit3d.models import ConcatFeatures
from fit3d.models.backbone import Tokens
from fit3d.probe.features import CachedFeatures, concat_features, extract_features


class Layered:
    """A stand-in backbone with per-layer tokens (as a ViT: every layer 5 wide): patch [B, 5, h, w], cls [B, 5]."""

    patch_size, embed_dim, cls_dim, name, family = 4, 5, 5, "layered", "test"

    def __init__(self, seed):
        self.w = torch.randn(3, 5, generator=torch.Generator().manual_seed(seed))

    def prepare(self, images, size=None):
        return images

    def features(self, images, layers=None, batch_size=16):
        p = torch.nn.functional.avg_pool2d(images.float(), 4)
        out = [Tokens(torch.einsum("cd,bchw->bdhw", self.w, p) ** (k + 1), p.mean((2, 3)).repeat(1, 2)[:, :5] + k)
               for k in (layers or [0])]
        return out if layers else out[0]


def test_concat_from_cached_sources_equals_concat_features():
    images = [np.random.default_rng(i).random((16, 24, 3)).astype(np.float32) for i in range(5)]
    o, f = Layered(0), Layered(1)
    cat = ConcatFeatures(o, f)
    for layers in (None, [0, 1, 2]):
        want = extract_features(cat, images, 2, layers)
        parts = [CachedFeatures(*extract_features(m, images, 2, layers), [str(i) for i in range(5)], 4) for m in (o, f)]
        got = concat_features(*parts, n_layers=len(layers) if layers else 1)
        torch.testing.assert_close(got.patch, want[0], atol=0, rtol=0)
        torch.testing.assert_close(got.cls, want[1], atol=0, rtol=0)
