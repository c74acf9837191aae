"""Lifted scenes memory-mapped for Stage 2 (fit3d.finetune.store) and the sampler's scene shards."""

import os
import shutil

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from fit3d.errors import SceneError
from fit3d.finetune.data import RenderedViews, ResumableSampler, load_scenes, shard_by_group, visible_subset
from fit3d.finetune.store import MappedColumns, SceneRef, morton_order, ply_header
from fit3d.lift.lifted import load_lifted


def test_columns_hold_the_ply_gaussians_in_morton_order_and_read_back_in_the_plys(lifted_dir, tmp_path):
    ref = SceneRef(lifted_dir, tmp_path)
    full = load_lifted(lifted_dir).gaussians
    h = ply_header(lifted_dir / "gaussians.ply")
    assert (h["count"], h["feature_dim"], h["sh_bases"]) == (len(full), full.feature_dim, full.sh.shape[1])
    order = morton_order(full.means.numpy())
    with MappedColumns(ref.ensure_columns()) as m:  # on disk: Morton order
        assert_close(torch.from_numpy(np.array(m["means"])), full.means[torch.from_numpy(order)], atol=0, rtol=0)
    g = ref.gaussians  # read back: the PLY's order (renders composite ties in input order)
    for k in ("means", "quats", "log_scales", "opacity_logits", "sh", "features"):
        assert_close(getattr(g, k), getattr(full, k), atol=0, rtol=0)
    assert g.sh_degree == full.sh_degree and ref.nbytes() == full.nbytes()


def test_a_views_gaussians_read_from_the_map_are_the_culled_ones(lifted_dir, tmp_path):
    ref = SceneRef(lifted_dir, tmp_path)
    views = RenderedViews([ref], 8)
    v = views.read_view(5)
    K = v.K.copy()
    K[0, 2] += 20  # part of the scene outside the view
    got = ref.visible(K, v.c2w, 64, 48)
    want = visible_subset(ref.gaussians, K, v.c2w, 64, 48)
    assert 0 < len(got) < len(ref)
    for k in ("means", "sh", "features"):
        assert_close(getattr(got, k), getattr(want, k), atol=0, rtol=0)


def test_mapping_closes_after_use(lifted_dir, tmp_path):
    ref = SceneRef(lifted_dir, tmp_path)
    path = str(ref.ensure_columns())

    def mapped():
        with open(f"/proc/{os.getpid()}/maps") as f:
            return path in f.read()

    with MappedColumns(ref.columns_file) as m:
        np.asarray(m["means"]).sum()
        assert mapped()
    assert not mapped()


def test_a_truncated_ply_or_cache_names_the_file(lifted_dir, tmp_path):
    d = tmp_path / "scene"
    shutil.copytree(lifted_dir, d)
    ref = SceneRef(d, tmp_path / "cache")
    ref.ensure_columns().write_bytes(b"garbage")  # a broken cache is made again
    assert len(ref.gaussians) == len(ref)
    ply = d / "gaussians.ply"
    ply.write_bytes(ply.read_bytes()[:-100])
    with pytest.raises(SceneError, match="gaussians.ply"):
        SceneRef(d, tmp_path / "cache2").gaussians


def test_scenes_shard_whole_and_balanced_across_ranks():
    groups = [0] * 10 + [1] * 10 + [2] * 9 + [3] * 11
    shards = shard_by_group(groups, 2)
    assert sorted(sum(shards, [])) == list(range(40))
    scenes = [{groups[i] for i in s} for s in shards]
    assert scenes[0].isdisjoint(scenes[1]) and all(len(x) == 2 for x in scenes)
    assert shard_by_group([0] * 8, 2) is None  # one scene: views are sharded instead
    assert shard_by_group([0] * 30 + [1] * 5, 2) is None  # too uneven


def test_sampler_with_scene_shards_steps_equally_and_resumes():
    groups = [0] * 6 + [1] * 5 + [2] * 5 + [3] * 6
    data = list(range(len(groups)))
    s = [ResumableSampler(data, num_replicas=2, rank=r, seed=3, groups=groups) for r in (0, 1)]
    for x in s:
        x.set_epoch(1)
    full = [list(x) for x in s]
    assert len(full[0]) == len(full[1]) == 11
    seen = [{groups[i] for i, _ in f} for f in full]
    assert seen[0].isdisjoint(seen[1])
    s[0].set_start(4)
    assert list(s[0]) == full[0][4:]
    one = ResumableSampler(data, seed=3, groups=groups)  # one rank: exactly DistributedSampler's order
    plain = ResumableSampler(data, seed=3)
    assert list(one) == list(plain)


def test_load_scenes_checks_widths_without_loading_gaussians(lifted_dir, tmp_path):
    scenes = load_scenes([lifted_dir], embed_dim=32, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing converted yet
    with pytest.raises(SceneError, match="decoder outputs"):
        load_scenes([lifted_dir], embed_dim=384, cache_dir=tmp_path)
    assert len(scenes[0]) > 0
