"""CamVid (SegNet layout) probe reader on the real shared folder: a few images of each split."""

import numpy as np
import pytest

from fit3d.paths import shared_dir
from fit3d.probe.datasets import CAMVID_CLASSES, IGNORE, detect, load_probe_data


@pytest.fixture(scope="module")
def camvid_path():
    p = shared_dir() / "data" / "camvid"
    if not (p / "trainannot").is_dir():
        import os

        msg = f"CamVid not found at {p}: set FIT3D_SHARED"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def test_camvid_detected_and_both_splits_read(camvid_path):
    assert detect(camvid_path) == "camvid"
    train = load_probe_data(camvid_path, "train", (224, 168))
    test = load_probe_data(camvid_path, "test", (224, 168), max_items=3)
    assert len(train) == 367 and len(test) == 3
    assert train.num_classes == 11 and train.class_names == list(CAMVID_CLASSES) and train.ignore_index == IGNORE
    assert train.meta["dataset"] == "camvid" and not set(train.names) & set(load_probe_data(camvid_path, "test").names)
    v = test.view(0)
    assert v.image.shape == (168, 224, 3) and v.image.dtype == np.float32 and 0 <= v.image.min() <= v.image.max() <= 1
    assert v.labels.shape == (168, 224) and v.depth is None
    vals = set(np.unique(v.labels).tolist())
    assert vals <= set(range(11)) | {IGNORE} and len(vals - {IGNORE}) >= 3  # several classes, 11 -> ignore


def test_camvid_unlabelled_becomes_ignore(camvid_path):
    from PIL import Image

    d = load_probe_data(camvid_path, "train", None, dataset="camvid", max_items=2)
    raw = np.array(Image.open(camvid_path / "trainannot" / f"{d.names[0]}.png"))
    lab = d.view(0).labels
    assert lab.shape == raw.shape
    assert np.array_equal(lab == IGNORE, raw >= 11) and np.array_equal(lab[raw < 11], raw[raw < 11])
