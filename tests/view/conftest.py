"""A small lifted scene for the viewer's tests, made in seconds without shared assets: a generated room
(8 views, 64x48) lifted by back-projection with a tiny random DINOv2 (2 blocks, 32 wide, 8-px patches)."""

from __future__ import annotations

import pytest

from view_testkit import make_tiny_dinov2

VIEWS = [str(i) for i in range(8)]


@pytest.fixture(scope="session")
def view_model_dir(tmp_path_factory):
    return make_tiny_dinov2(tmp_path_factory.mktemp("view_tiny_dinov2"))


@pytest.fixture(scope="session")
def view_room(tmp_path_factory):
    from fit3d.data.synthetic import SyntheticSceneConfig, generate_scene, write_scene

    cfg = SyntheticSceneConfig(num_views=10, width=64, height=48, seed=3, num_objects=4)
    return write_scene(generate_scene(cfg, name="room"), tmp_path_factory.mktemp("view_scenes") / "room")


@pytest.fixture(scope="session")
def view_lifted(tmp_path_factory, view_room, view_model_dir):
    """A lifted folder (gaussians.ply with 8 feat_* columns, decoder, lift.json) of the generated room."""
    from fit3d.lift.backprojected import backprojected_lift
    from fit3d.models import load_backbone

    backbone = load_backbone("dinov2_small", model_path=str(view_model_dir))
    return backprojected_lift(view_room, backbone, tmp_path_factory.mktemp("view_lifted") / "room",
                              train_views=VIEWS, heldout_views=["8", "9"], resolution=(64, 48),
                              feature_dim=8, stride=2, footprint=1.5, model_path=str(view_model_dir))
