"""Time ``fit3d.data.synthetic.generate_scene`` (and ``write_scene``) at the default 60 views x 320x240.

    .venv/bin/python bench/synthetic_generate.py [--seeds 0 1 2] [--views 60] [--width 320 --height 240]

Prints one row per seed: wall and CPU seconds for generating, seconds for writing, and the label classes
present. Timings are noisy when other jobs share the cores; the CPU column is less affected.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from fit3d.data.synthetic import CLASS_NAMES, SyntheticSceneConfig, generate_scene, write_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--views", type=int, default=60)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--no-shadows", action="store_true")
    a = ap.parse_args()
    print(f"{'seed':>4} {'views':>5} {'size':>9} {'gen wall s':>10} {'gen cpu s':>9} {'write s':>7}  classes")
    for seed in a.seeds:
        cfg = SyntheticSceneConfig(seed=seed, num_views=a.views, width=a.width, height=a.height,
                                   shadows=not a.no_shadows)
        t0, c0 = time.perf_counter(), time.process_time()
        scene = generate_scene(cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        with tempfile.TemporaryDirectory() as d:
            t1 = time.perf_counter()
            write_scene(scene, f"{d}/scene")
            wt = time.perf_counter() - t1
        present = np.unique(np.concatenate([v.labels.ravel() for v in scene.views]))
        print(f"{seed:>4} {a.views:>5} {a.width:>4}x{a.height:<4} {wall:>10.2f} {cpu:>9.2f} {wt:>7.2f}  "
              f"{','.join(CLASS_NAMES[i] for i in present)}")


if __name__ == "__main__":
    main()
