"""One cache of frozen backbone tokens, shared by Stage 1's targets and the probes' features.

An *entry* is one image's tokens: ``<root>/<key>.safetensors`` holding ``patch`` [D, h, w] and ``cls`` [Dc]
(float32; several layers concatenated along D), written atomically through ``fit3d.io``. The key is one rule
for every caller (:func:`entry_key`): the model's identity (``fit3d.models.identity.model_identity``, or a
fine-tuned source's), the layers read (None = the last), the device kind and dtype (``cpu``, ``cpu-bf16``, ``cuda``), a
``variant`` for derived tokens (``"mean"``: patch tokens averaged to [D, 1, 1]) and the image's identity: a
hash of the very pixels the backbone is given (:func:`image_id`: so the same image at the same input size
is one entry, however it was read or resized) or a hash of a file's bytes + preprocessing
(:func:`file_id`, for image folders read lazily). An unreadable, truncated or foreign entry is recomputed
with a warning; caches of older formats (``.npy`` / ``.pt``) are simply not found.

    cache = TokenCache(root)                       # root None: nothing on disk, computed every time
    what = token_key(model_identity(...), layers=None, device="cpu")
    got = cache.get(what, [image_id(im) for im in images],
                    lambda idx: extract_features(model, [images[i] for i in idx]))
    got.patch  # [N, D, h, w] float32; got.computed: how many images ran through the backbone
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fit3d.device import numerics
from fit3d.io import atomic_path

VERSION = 2  # of the key rule and the file layout (the first formats were TargetCache's .npy, FeatureCache's .pt)
SUFFIX = ".safetensors"
FORMAT = "fit3d-tokens"


def extract_features(model, images: Sequence[np.ndarray], batch_size: int = 8,
                     layers: Sequence[int] | None = None, desc: str = "features",
                     device: str | torch.device = "cpu",
                     progress: bool | None = None, precision: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model.features`` over ``images`` (each [H, W, 3] float 0-1, all the same size) in ``precision``
    (``fit3d.device.resolve_precision``: None, a backbone's default, is bf16 autocast on CUDA only; the same value
    must go into the entries' :func:`token_key`).

    Returns (patch [N, D, h, w] float32 cpu, cls [N, Dc] float32 cpu); with ``layers``, per-layer tokens
    concatenated along D (DINOv2's "linear4"). ``progress`` None: a bar when there is more than one batch.
    """
    from fit3d.models.backbone import using_precision

    patches, clss = [], []
    kw = {"layers": list(layers)} if layers else {}
    show = len(images) > batch_size if progress is None else progress
    for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=not show, unit="batch"):
        batch = torch.from_numpy(np.stack(images[i:i + batch_size])).permute(0, 3, 1, 2).contiguous()
        if hasattr(model, "prepare"):  # sides to patch multiples (a no-op at the default resolutions)
            batch = model.prepare(batch)
        with torch.inference_mode(), using_precision(model, precision):
            out = model.features(batch.to(device), **kw)
        if isinstance(out, list):  # one (patch, cls) per requested layer: DINOv2 "linear4" concatenation
            out = (torch.cat([o[0] for o in out], 1), torch.cat([o[1] for o in out], 1))
        p, c = out
        patches.append(p.float().cpu())
        clss.append(c.float().cpu())
    return torch.cat(patches), torch.cat(clss)


def image_id(image: np.ndarray) -> str:
    """Identity of an image by content: a hash of its float32 pixels and shape ([H, W, 3] in [0, 1])."""
    a = np.ascontiguousarray(image, dtype=np.float32)
    h = hashlib.blake2b(repr(a.shape).encode(), digest_size=20)
    h.update(memoryview(a).cast("B"))
    return "px:" + h.hexdigest()


def file_id(path: str | os.PathLike, how: str) -> str:
    """Identity of an image file read lazily: a hash of its bytes, plus ``how`` it is turned into the backbone's
    input (e.g. ``"resize 224x224"``). The bytes, not the path or mtime, so a copied or moved dataset (a fresh
    checkout, another mount) finds its entries; hashing a photo costs far less than decoding it."""
    h = hashlib.blake2b(Path(path).read_bytes(), digest_size=20).hexdigest()
    return f"file:{h}:{how}"


def token_key(model: dict | str, layers: Sequence[int] | None = None, device: str | torch.device = "cpu",
              variant: str | None = None, precision: str | None = None) -> dict:
    """What an entry's tokens depend on besides the image: ``model`` (an identity dict or string), the
    ``layers`` read (None: the last), the device kind and dtype (``fit3d.device.numerics`` of ``device`` and the
    model's ``precision``: ``cpu``, ``cpu-bf16``, ``cuda``, ...) and an optional ``variant`` (``"mean"``)."""
    return {"model": model, "layers": [int(i) for i in layers] if layers else None,
            "device": numerics(device, precision), "variant": variant}


def entry_key(what: dict, image: str) -> str:
    """The file stem of one image's entry: a hash of the key version, ``what`` (:func:`token_key`) and the
    image identity (:func:`image_id` / :func:`file_id`)."""
    blob = json.dumps({"version": VERSION, "what": what, "image": image}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


@dataclass
class TokenSet:
    """Tokens of N images: patch [N, D, h, w], cls [N, Dc] (float32 cpu); ``computed`` of them ran through the
    backbone in ``seconds`` (the rest were read from the cache)."""

    patch: torch.Tensor
    cls: torch.Tensor
    computed: int = 0
    seconds: float = 0.0
    info: dict | None = None  # what ``compute`` said of its model (e.g. {"patch_size": 14}), kept in every entry

    @property
    def from_cache(self) -> bool:
        return self.computed == 0


class TokenCache:
    """Per-image backbone tokens under ``root`` (None: no cache, every :meth:`get` computes)."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None

    def read(self, path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor, dict] | None:
        """(patch [D, h, w], cls [Dc], info) of the entry at ``path``, None when there is none; an unreadable,
        truncated or foreign file is a warning (and None: the caller recomputes it)."""
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT or meta.get("key") != key:
                    raise ValueError(f"not the entry {key} (format {meta.get('format')!r}, key {meta.get('key')!r})")
                patch, cls = f.get_tensor("patch"), f.get_tensor("cls")
            if patch.ndim != 3 or cls.ndim != 1:
                raise ValueError(f"patch {tuple(patch.shape)} / cls {tuple(cls.shape)}: expected [D, h, w] / [Dc]")
            return patch, cls, json.loads(meta.get("info") or "{}")
        except Exception as e:  # truncated / corrupt / foreign file (safetensors raises several types): recompute
            warnings.warn(f"{path}: unreadable token cache entry ({type(e).__name__}: {e}); recomputing", stacklevel=3)
            return None

    def write(self, path: Path, key: str, what: dict, image: str, patch: torch.Tensor, cls: torch.Tensor,
              info: dict | None = None) -> None:
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "version": str(VERSION), "key": key, "image": image,
                "what": json.dumps(what, sort_keys=True, default=str), "info": json.dumps(info or {})}
        with atomic_path(path) as tmp:
            save_file({"patch": patch.float().contiguous(), "cls": cls.float().contiguous()}, str(tmp), metadata=meta)

    def get(self, what: dict, images: Sequence[str],
            compute: Callable[[list[int]], tuple]) -> TokenSet:
        """Tokens of the images with identities ``images`` (:func:`image_id` / :func:`file_id`) under ``what``
        (:func:`token_key`): read where an entry exists, the rest from ``compute(indices)`` -> (patch [M, D, h, w],
        cls [M, Dc][, info dict]) in one call (the model is loaded only then) and stored. An image listed twice
        runs once."""
        n = len(images)
        found: list = [None] * n
        keys = [entry_key(what, im) for im in images]
        if self.root is not None:
            for i, k in enumerate(keys):
                found[i] = self.read(self.root / f"{k}{SUFFIX}", k)
        first: dict[str, int] = {}
        missing = [i for i in range(n) if found[i] is None and first.setdefault(keys[i], i) == i]
        seconds, info = 0.0, next((f[2] for f in found if f is not None), None)
        if missing:
            t0 = time.perf_counter()
            patch, cls, *rest = compute(missing)
            seconds = time.perf_counter() - t0
            info = rest[0] if rest else None
            if len(patch) != len(missing) or len(cls) != len(missing):
                raise RuntimeError(f"token cache: compute gave {len(patch)} / {len(cls)} rows for {len(missing)} images")
            for j, i in enumerate(missing):
                found[i] = (patch[j].float(), cls[j].float(), info)
                if self.root is not None:
                    self.write(self.root / f"{keys[i]}{SUFFIX}", keys[i], what, images[i], patch[j], cls[j], info)
        for i in range(n):
            if found[i] is None:  # a repeat of an image computed above
                found[i] = found[first[keys[i]]]
        shapes = {tuple(f[0].shape) for f in found}
        if len(shapes) > 1:
            raise RuntimeError(f"token cache: images of one set gave token grids of several shapes {sorted(shapes)}")
        # patch tokens laid out as the backbone gives them ([N, h, w, D] in memory: channels last), so heads see the
        # same strides whether the tokens were computed or read
        patch = torch.stack([f[0] for f in found]).contiguous(memory_format=torch.channels_last) if n else torch.empty(0)
        return TokenSet(patch, torch.stack([f[1] for f in found]) if n else torch.empty(0), len(missing), seconds, info)
