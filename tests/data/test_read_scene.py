"""The read_scene dispatcher: layout detection, unknown layouts, empty scenes, options."""

import json

import numpy as np
import pycolmap
import pytest
from scene_testkit import K, write_matrix

from fit3d.data import read_scene
from fit3d.data.readers import LAYOUTS, detect_layout
from fit3d.errors import SceneError
from test_read_colmap import build_model
from test_read_nerfstudio import write_nerfstudio
from test_read_scannet import write_scannet
from test_read_sevenscenes import write_7scenes

WRITERS = {"7scenes": write_7scenes, "nerfstudio": write_nerfstudio, "colmap": build_model, "scannet": write_scannet}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_auto_detects_each_layout(tmp_path, layout):
    WRITERS[layout](tmp_path)
    assert detect_layout(tmp_path) == layout
    s = read_scene(tmp_path, resolution=(16, 12))
    assert s.meta["layout"] == layout and len(s) == 3
    assert all(v.image.shape == (12, 16, 3) for v in s.views)


def test_unknown_layout_names_folder_and_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SceneError, match="unknown layout") as e:
        read_scene(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg
    for layout in LAYOUTS[1:]:
        assert layout in msg
    with pytest.raises(SceneError, match="unknown layout 'tum'"):
        read_scene(tmp_path, layout="tum")
    with pytest.raises(SceneError, match="does not exist"):
        read_scene(tmp_path / "nope")
    with pytest.raises(SceneError, match="does not exist"):
        read_scene(tmp_path / "nope", layout="scannet")
    with pytest.raises(SceneError, match="resolution must be"):
        read_scene(tmp_path, resolution=(0, 10))


def _empty(root, layout):
    if layout == "7scenes":
        write_matrix(root / "camera-intrinsics.txt", K)
    elif layout == "nerfstudio":
        (root / "transforms.json").write_text(json.dumps({"fl_x": 1, "cx": 1, "cy": 1, "frames": []}))
    elif layout == "colmap":
        rec = pycolmap.Reconstruction()
        rec.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(1, "PINHOLE", 10.0, 8, 6))
        (root / "sparse/0").mkdir(parents=True)
        rec.write_text(str(root / "sparse/0"))
        (root / "images").mkdir()
    else:
        for d in ("color", "pose", "intrinsic"):
            (root / d).mkdir()
        write_matrix(root / "intrinsic/intrinsic_color.txt", np.eye(4))


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_empty_scene(tmp_path, layout):
    _empty(tmp_path, layout)
    with pytest.raises(SceneError, match="scene has no views") as e:
        read_scene(tmp_path, layout=layout)
    assert str(tmp_path) in str(e.value)
