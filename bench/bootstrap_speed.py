"""The paired bootstrap intervals of a summary: CPU seconds per eval at the demo's and generalize's sizes.

    .venv/bin/python bench/bootstrap_speed.py

``fit3d.probe.summary.summarise`` on random per-image statistics of the shapes the demo and
``bench/generalize.py`` produce (3 seeds; seg: per-image confusion matrices, depth: 6 per-image metrics),
2000 resamples, original / fine-tuned / concat + the width control: three intervals per metric. The
resampling is one matrix product of multinomial counts [n_boot, N] with the per-image statistics
(``fit3d.probe.stats``), so the cost is a few matrix products per interval.
"""

from __future__ import annotations

import sys
import types

import numpy as np

from fit3d.clock import cpu_seconds
from fit3d.probe.summary import CONTROL, SOURCES, summarise


def main() -> int:
    rng = np.random.default_rng(0)
    cfg = types.SimpleNamespace(bootstrap=2000)
    cases = [("demo rooms_seg", "seg", (3, 96, 13, 13)), ("demo rooms_depth", "depth", (3, 96, 6)),
             ("generalize camvid_seg", "seg", (3, 101, 11, 11)), ("generalize sun3d depth", "depth", (3, 100, 6))]
    print("| eval | statistics | CPU s for its intervals |")
    print("|---|---|---|")
    for name, kind, shape in cases:
        st = {s: (rng.integers(0, 500, shape).astype(np.float64) if kind == "seg" else rng.random(shape))
              for s in SOURCES + (CONTROL,)}
        c = cpu_seconds()
        summarise(kind, st, cfg)
        print(f"| {name} | {kind} {list(shape)} | {cpu_seconds() - c:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
