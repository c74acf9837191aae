"""Run by test_distributed.py under ``python -m torch.distributed.run --nproc_per_node 2``: fine-tunes and
dumps this rank's weights and the views it saw to OUT/rank{RANK}.pt."""

import os
import sys

import torch

import fit3d.finetune.trainer as trainer
from fit3d.finetune import FinetuneConfig, finetune

loaded = []
_load = trainer.load_backbone


def recording_load(*a, **k):
    bb = _load(*a, **k)
    loaded.append(bb)
    return bb


def main():
    lifted, model_path, out = sys.argv[1:4]
    trainer.load_backbone = recording_load
    cfg = FinetuneConfig(lr=1e-3, workers=0, max_steps=3, checkpoint_every=2, evaluate=False, progress=False)
    result = finetune([lifted], "dinov2_small", out, cfg, model_path=model_path)
    torch.save({"state": {k: v.detach().clone() for k, v in loaded[0].model.state_dict().items()},
                "seen": result["seen"], "ranks_in_sync": result["ranks_in_sync"],
                "threads": torch.get_num_threads()}, os.path.join(out, f"rank{os.environ['RANK']}.pt"))


if __name__ == "__main__":
    main()
