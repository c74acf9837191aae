import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.testing import assert_close

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_process_gloo_keeps_ranks_identical_and_shards_views(tmp_path, lifted_dir, tiny_model_dir):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(WORKER), str(lifted_dir), str(tiny_model_dir), str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert r0["ranks_in_sync"] and r1["ranks_in_sync"]
    for k, v in r0["state"].items():
        assert_close(r1["state"][k], v, rtol=0, atol=0, msg=k)
    from transformers import AutoModel  # the weights moved away from the initial (random) ones

    init = AutoModel.from_pretrained(str(tiny_model_dir)).state_dict()
    assert any(not torch.equal(init[k], r0["state"][k]) for k in init)
    # 8 views, 2 ranks x batch 2: each step covers 4 distinct views; 3 steps run into epoch 2.
    assert len(r0["seen"]) == len(r1["seen"]) == 6
    assert set(r0["seen"][:4]).isdisjoint(r1["seen"][:4])
    assert set(r0["seen"][:4]) | set(r1["seen"][:4]) == set(range(8))
    m = (out / "fit3d.json").read_text()
    assert '"world_size": 2' in m and (out / "model" / "config.json").exists()
