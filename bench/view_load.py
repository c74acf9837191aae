"""What ``fit3d view`` costs before the browser draws: loading lifted scenes, starting the server, and the
first PCA / shared-PCA / similarity colours (no browser; wall and process CPU seconds, peak memory).

    python bench/view_load.py runs/demo                       # the demo's 14 lifted rooms
    python bench/view_load.py runs/demo --max-splats 20000    # with a budget

Prints a markdown table. Timings on a shared machine are noisy: the CPU seconds are the steadier number.
"""

from __future__ import annotations

import argparse
import resource
import socket
import time

import numpy as np


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", nargs="+")
    ap.add_argument("--max-splats", type=int, default=500_000)
    args = ap.parse_args()

    from fit3d.view.cli import ViewConfig, start_viewer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    viewer, w, c = timed(lambda: start_viewer(args.scenes, ViewConfig(port=port, max_splats=args.max_splats)))
    rows = [("load scenes + start server", w, c)]
    try:
        _, w, c = timed(lambda: viewer.set_mode("PCA"))
        rows.append(("first PCA colours (shown scene's basis)", w, c))
        _, w, c = timed(lambda: viewer.set_shared(True))
        rows.append(("shared PCA basis over all scenes", w, c))
        sp = viewer.scenes[0].splats
        k = int(np.argmax(sp.opacities[:, 0]))
        _, w, c = timed(lambda: viewer.pick(0, k))
        rows.append(("similarity to a picked Gaussian", w, c))
        n = sum(len(s.splats) for s in viewer.scenes)
        total = sum(s.splats.total for s in viewer.scenes)
    finally:
        viewer.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{len(viewer.scenes)} scene(s), {n:,} of {total:,} Gaussians drawn (--max-splats {args.max_splats}), "
          f"peak memory {rss:.0f} MiB\n")
    print("| step | wall s | CPU s |\n|---|---|---|")
    for name, w, c in rows:
        print(f"| {name} | {w:.2f} | {c:.2f} |")


if __name__ == "__main__":
    main()
