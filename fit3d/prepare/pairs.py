"""Which images to match, and which can register together once matched.

Pairs are listed here (not by COLMAP's matchers) so matching runs in chunks: one progress step per
chunk, and an interrupted run resumes (COLMAP skips pairs already in the database).
"""

from __future__ import annotations

import numpy as np


def exhaustive_pairs(n: int) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of ``n`` images: n (n - 1) / 2 pairs."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def sequential_pairs(n: int, overlap: int) -> list[tuple[int, int]]:
    """Each image i with i + 1 .. i + overlap and, as COLMAP's quadratic overlap, i + 2^k for k < overlap
    (long jumps close loops in a video that returns to where it started)."""
    pairs = set()
    for i in range(n):
        steps = set(range(1, overlap + 1)) | {2 ** k for k in range(overlap)}
        pairs |= {(i, i + s) for s in steps if i + s < n}
    return sorted(pairs)


def components(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the graph on ``n`` nodes with ``edges``, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, label = connected_components(g, directed=False)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(label.tolist()):
        groups.setdefault(c, []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))
