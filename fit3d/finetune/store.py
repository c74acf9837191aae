"""Lifted scenes for Stage 2, memory-mapped: memory that does not grow with the number of scenes.

FiT3D keeps every scene's Gaussians in memory in every process: at ScanNet++ size (230 scenes of up to
~1M Gaussians, ~0.5 KB each) tens of GB per process. Here a scene is a :class:`SceneRef`: its record
(``lift.json``), the Gaussian count and widths from the PLY header, and a columnar copy of its Gaussians
(one safetensors file, Gaussians in Morton order of their means) that each render memory-maps:

1. the means (12 B a Gaussian) are read to cull the Gaussians the view cannot see
   (``fit3d.finetune.data.visible_subset``'s test);
2. only the visible rows of the other columns are gathered (in Morton order a view's Gaussians lie in
   few runs of the file, so few pages are read);
3. the mapping is closed: the pages leave the process's resident set.

So a process holds at most one view's visible Gaussians plus the means of one scene, whatever the number
of scenes. The columnar copy is made once per PLY (``<cache>/<key>.safetensors``, the key from the PLY's
identity: device, inode, size, mtime), never beside the lifted scene (Stage 2 does not change its inputs);
it costs as much disk as the PLY. Decoders (a few MB each) are loaded when a render needs them and kept
for the last few scenes.

Hand-written around safetensors' file format (an 8-byte header length, a JSON header of dtype / shape /
byte offsets, raw little-endian data): ``safetensors.safe_open`` copies whole tensors or contiguous
slices, and the renders need a row gather of a mapped column (``numpy.memmap`` fancy indexing).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fit3d.errors import SceneError
from fit3d.io import atomic_path, read_json_dict
from fit3d.lift.decoder import FeatureDecoder
from fit3d.lift.lifted import DECODER_FILE, GAUSSIANS_FILE, META_FILE, is_lifted
from fit3d.splat.gaussians import FeatureGaussians

COLUMNS = ("means", "quats", "log_scales", "opacity_logits", "sh", "features")
FORMAT = "fit3d-gaussians-columns/2"
DECODERS_KEPT = 8  # decoders held per process (LRU)


# ----------------------------------------------------------------------------------------- culling
def visible_mask(means: Tensor, max_log_scale: Tensor, K, c2w, width: int, height: int, near: float = 0.01,
                 sigmas: float = 3.0) -> Tensor:
    """[N] bool: the Gaussians (means [N, 3], largest log-scale [N]) whose ``sigmas``-sigma footprint can
    touch a ``width`` x ``height`` view (conservative: what is dropped lies behind the near plane or fully
    outside the frame). Hand-written: a few vectorised lines, no library needed."""
    c2w = torch.as_tensor(np.asarray(c2w), dtype=torch.float64)
    K = torch.as_tensor(np.asarray(K), dtype=torch.float64)
    R, t = c2w[:3, :3], c2w[:3, 3]
    cam = ((means.double() - t) @ R)  # [N, 3] world -> camera (R^T (x - t))
    z = cam[:, 2]
    zc = z.clamp_min(near)
    u = K[0, 0] * cam[:, 0] / zc + K[0, 2]
    v = K[1, 1] * cam[:, 1] / zc + K[1, 2]
    # 2D std bound: |J| <= f/z * sqrt(1 + (x/z)^2 + (y/z)^2) times the largest 3D std, plus the
    # rasterizer's 0.3 px^2 dilation; then the rasterizer's 3-sigma radius and a pixel of slack.
    tan2 = (cam[:, 0] / zc).square() + (cam[:, 1] / zc).square()
    s2d = max_log_scale.double().exp() * max(K[0, 0], K[1, 1]) / zc * (1 + tan2).sqrt()
    r = sigmas * (s2d.square() + 0.3).sqrt() * 1.1 + 2.0
    return (z > near) & (u + r > 0) & (u - r < width) & (v + r > 0) & (v - r < height)


# ----------------------------------------------------------------------------------------- PLY header
def ply_header(path: Path) -> dict:
    """{"count", "sh_bases", "feature_dim", "sh_degree"} from a Gaussian PLY's header, without its data
    (read by hand: plyfile reads the data with it)."""
    count, names, comments = None, [], []
    try:
        with open(path, "rb") as f:
            if f.readline().strip() != b"ply":
                raise ValueError("no 'ply' magic")
            element = None
            for _ in range(100000):
                line = f.readline()
                if not line:
                    raise ValueError("no end_header")
                words = line.decode("ascii", "replace").split()
                if not words:
                    continue
                if words[0] == "end_header":
                    break
                if words[0] == "comment":
                    comments.append(" ".join(words[1:]))
                elif words[0] == "element":
                    element = words[1]
                    if element == "vertex":
                        count = int(words[2])
                elif words[0] == "property" and element == "vertex":
                    names.append(words[-1])
    except FileNotFoundError:
        raise SceneError(f"{path}: Gaussian PLY not found") from None
    except (OSError, ValueError, IndexError) as e:
        raise SceneError(f"{path}: not a readable PLY ({e})") from None
    if count is None:
        raise SceneError(f"{path}: no vertex element (not a Gaussian PLY)")
    rest = sum(n.startswith("f_rest_") for n in names)
    k = 1 + rest // 3
    degree = int(math.isqrt(k)) - 1
    for c in comments:
        if "sh_degree=" in c:
            degree = int(c.split("sh_degree=")[1].split()[0])
    return {"count": count, "sh_bases": k, "feature_dim": sum(n.startswith("feat_") for n in names),
            "sh_degree": degree}


# ----------------------------------------------------------------------------------------- columns on disk
def morton_order(means: np.ndarray, bits: int = 10) -> np.ndarray:
    """[N] permutation sorting points [N, 3] along a Morton (Z-order) curve of a 2^bits grid over their box."""
    lo, hi = means.min(0), means.max(0)
    q = ((means - lo) / np.maximum(hi - lo, 1e-12) * (2 ** bits - 1)).astype(np.uint64)
    code = np.zeros(len(means), dtype=np.uint64)
    for b in range(bits):
        for a in range(3):
            code |= ((q[:, a] >> np.uint64(b)) & np.uint64(1)) << np.uint64(3 * b + a)
    return np.argsort(code, kind="stable")


def write_columns(g: FeatureGaussians, path: Path) -> None:
    """The Gaussians of ``g`` as one safetensors file of float32 columns, Morton-ordered, written atomically."""
    from safetensors.numpy import save_file

    order = morton_order(g.means.detach().cpu().numpy())
    cols = {k: np.ascontiguousarray(getattr(g, k).detach().cpu().float().numpy()[order]) for k in COLUMNS}
    cols["ply_index"] = order.astype(np.int64)  # where each row was in the PLY: reads give the PLY's order back
    with atomic_path(path) as tmp:
        save_file(cols, str(tmp), metadata={"format": FORMAT, "sh_degree": str(g.sh_degree)})


_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64}


def read_header(path: Path) -> tuple[dict, int]:
    """(safetensors JSON header, byte offset where the data begins)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return header, 8 + n


class MappedColumns:
    """A columns file mapped while in use: ``with MappedColumns(path) as m: m["means"]`` ([N, 3] memmap)."""

    def __init__(self, path: Path):
        self.path = path
        self.header, self.start = read_header(path)
        self._maps: dict[str, np.memmap] = {}

    def __getitem__(self, name: str) -> np.memmap:
        if name not in self._maps:
            h = self.header[name]
            a, b = h["data_offsets"]
            self._maps[name] = np.memmap(self.path, dtype=_DTYPES[h["dtype"]], mode="r", offset=self.start + a,
                                         shape=tuple(h["shape"])) if b > a else np.zeros(h["shape"], np.float32)
        return self._maps[name]

    def __enter__(self) -> "MappedColumns":
        return self

    def __exit__(self, *exc) -> None:
        self._maps.clear()  # the last references: the mappings close and their pages leave the resident set


# ----------------------------------------------------------------------------------------- scenes
@functools.lru_cache(maxsize=DECODERS_KEPT)
def _decoder(path: str, stamp: tuple) -> FeatureDecoder:
    dec = FeatureDecoder.load(path, map_location="cpu")
    return dec.requires_grad_(False).eval()


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class SceneRef:
    """A lifted scene for Stage 2, its Gaussians on disk (module docstring). Same ``name`` / ``path`` /
    ``meta`` / ``resolution`` as ``fit3d.lift.lifted.LiftedScene``; ``decoder`` loads on use,
    ``visible(K, c2w, W, H)`` gives a view's Gaussians, ``gaussians`` all of them (tests, small scenes)."""

    def __init__(self, path, cache_dir):
        self.path = Path(path)
        if not is_lifted(self.path):
            missing = [f for f in (GAUSSIANS_FILE, DECODER_FILE, META_FILE) if not (self.path / f).exists()]
            raise SceneError(f"{self.path}: not a finished lifted scene (missing {', '.join(missing)}); run "
                             f"`fit3d lift` first")
        self.meta = read_json_dict(self.path / META_FILE, "lifted scene record", keys=("resolution", "scene"))
        self.name = self.meta.get("name", self.path.name)
        self.ply = self.path / GAUSSIANS_FILE
        self.header = ply_header(self.ply)
        self.cache_dir = Path(cache_dir)
        stamp = _stamp(self.ply)
        self.columns_file = self.cache_dir / (hashlib.sha1(repr(stamp).encode()).hexdigest()[:20] + ".safetensors")

    @property
    def resolution(self) -> tuple[int, int]:
        w, h = self.meta["resolution"]
        return int(w), int(h)

    def __len__(self) -> int:
        return self.header["count"]

    @property
    def feature_dim(self) -> int:
        return self.header["feature_dim"]

    @property
    def decoder(self) -> FeatureDecoder:
        p = self.path / DECODER_FILE
        try:
            return _decoder(str(p), _stamp(p))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own type; a foreign file a KeyError
            raise SceneError(f"{p}: decoder is unreadable or corrupt ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''}); re-lift the scene") from None

    def ensure_columns(self) -> Path:
        """The columnar copy of the PLY (made now if missing or unreadable)."""
        f = self.columns_file
        if f.is_file():
            try:
                h, _ = read_header(f)
                if h.get("__metadata__", {}).get("format") == FORMAT and h["means"]["shape"][0] == len(self):
                    return f
            except (OSError, ValueError, KeyError, struct.error):
                pass  # truncated / foreign: made again
        try:
            g = FeatureGaussians.load_ply(self.ply)
        except SceneError:
            raise
        except Exception as e:  # noqa: BLE001 - plyfile raises several types for a truncated / foreign file
            raise SceneError(f"{self.ply}: Gaussians are unreadable or corrupt ({type(e).__name__}); re-lift the "
                             f"scene") from None
        f.parent.mkdir(parents=True, exist_ok=True)
        write_columns(g, f)
        return f

    @property
    def gaussians(self) -> FeatureGaussians:
        """Every Gaussian, in memory (the PLY's order)."""
        with MappedColumns(self.ensure_columns()) as m:
            return self._gather(m, None)

    def _gather(self, m: MappedColumns, idx: np.ndarray | None) -> FeatureGaussians:
        """The rows ``idx`` (all when None) in the PLY's order: renders composite Gaussians of equal depth in
        input order, so the same order as the PLY gives the same image as the Gaussians loaded whole."""
        rows = np.arange(len(self)) if idx is None else idx
        rows = rows[np.argsort(np.asarray(m["ply_index"][rows]), kind="stable")]
        # np.take on the plain array view: a memmap's own fancy indexing is ~2.5x slower (its subclass machinery)
        cols = {k: torch.from_numpy(np.take(np.asarray(m[k]), rows, axis=0).astype(np.float32, copy=False))
                for k in COLUMNS}
        return FeatureGaussians(**cols, sh_degree=self.header["sh_degree"])

    def view_rows(self) -> dict[str, tuple[int, int]]:
        """{training view: PLY rows [start, stop) of the Gaussians it contributed}, in the training views' order, for a
        lift that records them (a back-projected lift's ``backprojected.view_gaussians``, one count per training view;
        held-out views contributed none). ``SceneError`` when the lift records no per-view Gaussians (other methods
        fuse every view into each Gaussian; older back-projected lifts)."""
        counts = (self.meta.get("backprojected") or {}).get("view_gaussians")
        train = list(self.meta["scene"].get("train_views", []))
        if counts is None or len(counts) != len(train) or sum(counts) != len(self):
            raise SceneError(f"{self.path}: this lift does not record which view each Gaussian came from (lift.json "
                             f"backprojected.view_gaussians; method {self.meta.get('method')!r}), so a view's own "
                             f"Gaussians cannot be left out of its target: lift it again with --method backprojected, "
                             f"or train with targets from all views")
        stops = np.cumsum(counts, dtype=np.int64)
        return {v: (int(b - c), int(b)) for v, c, b in zip(train, counts, stops)}

    def visible(self, K, c2w, width: int, height: int, exclude: tuple[int, int] | None = None) -> FeatureGaussians:
        """The Gaussians a ``width`` x ``height`` view (K, c2w) can see (``visible_subset``'s conservative test),
        read from the mapped columns; every other row stays on disk. ``exclude``: PLY rows [start, stop) left out
        (a view's own Gaussians, :meth:`view_rows`)."""
        with MappedColumns(self.ensure_columns()) as m:
            means = torch.from_numpy(np.array(m["means"]))
            scale = torch.from_numpy(np.array(m["log_scales"]).max(1))
            keep = visible_mask(means, scale, K, c2w, width, height)
            if exclude is not None:
                ply = torch.from_numpy(np.array(m["ply_index"]))
                keep &= (ply < exclude[0]) | (ply >= exclude[1])
            idx = keep.nonzero().squeeze(1).numpy()
            return self._gather(m, idx)

    def nbytes(self) -> int:
        """Bytes of all Gaussians (float32 columns), what an in-memory scene would hold."""
        k, f = self.header["sh_bases"], self.header["feature_dim"]
        return len(self) * 4 * (3 + 4 + 3 + 1 + 3 * k + f)


def scene_refs(dirs, cache_dir) -> list[SceneRef]:
    """A :class:`SceneRef` per lifted folder (records and PLY headers read; no Gaussians loaded)."""
    return [SceneRef(d, cache_dir) for d in dirs]


def decoder_bytes(scene: SceneRef) -> int:
    """Bytes of a scene's decoder weights."""
    return sum(t.numel() * t.element_size() for t in scene.decoder.state_dict().values())
