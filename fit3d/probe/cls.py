"""Image classification probe on frozen [CLS] tokens: DINO's weighted k-NN and a linear head.

Data: an image folder in ImageNet's layout, one folder per class::

    root/train/<class>/*.jpg      (any of .jpg .jpeg .png .bmp .webp, any case)
    root/val/<class>/*.jpg        (the test split; root/test/ when there is no val/)

Classes are the sorted folder names of ``train/``; a ``val/`` class unknown to ``train/`` is an error.
Each image is resized (shorter side to ``size / 0.875``, bicubic) and centre-cropped to ``size`` x ``size``,
DINO's evaluation transform (256 -> 224).

Classifiers, both on the final-LayerNorm [CLS] token (``Backbone.features``' cls):

- **k-NN** (DINO, Caron et al. 2021): cosine similarity to every training image, the ``k`` nearest vote
  with weight exp(sim / T); k = 20, T = 0.07. Deterministic (no seed).
- **linear**: BatchNorm without affine (MAE's linear probe) + a linear layer, cross entropy, AdamW with
  warmup and a cosine schedule (``ClsSettings``), one head per seed (the seed draws init and batches).

Sources: ``original`` / ``finetuned`` as the other probes; ``concat`` joins both [CLS] tokens, since the dense
probes' concat (patch tokens of both, the original's [CLS]) would classify exactly as the original; the width
control ``original_x2`` is the original's [CLS] twice.
A fine-tuned model whose [CLS] is the original's own function (the ``default`` recipe's [CLS] branch, checked on
the weights by ``fit3d.models.cls_branch.cls_is_original``) classifies exactly as the original; its features are
the original's, not computed again (``source_features``; probe.json's ``same_cls`` says so).

Per-image results are (hit, 1) columns, ``[seeds, N, 4]`` = (k-NN hit, 1, linear hit, 1) per seed, the
pooled-ratio form the correspondence probe uses, so ``fit3d.probe.summary.summarise(kind="corr")`` gives
the top-1 accuracies (mean, std over seeds) and paired bootstrap intervals over test images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from fit3d.errors import Fit3DError, SceneError
from fit3d.models.backbone import using_precision
from fit3d.models.tokens import file_id
from fit3d.probe.features import CachedFeatures, FeatureCache, source_key
from fit3d.probe.sources import FeatureSource
from fit3d.probe.train import train_head

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CLS_METRICS = ("knn_top1", "linear_top1")
CROP_RATIO = 0.875  # DINO / ImageNet evaluation: resize to 256, centre crop 224


# ----------------------------------------------------------------------------------------- data
@dataclass
class ImageFolder:
    """One split of an image-folder dataset: file paths, class ids and class names."""

    root: Path
    split: str
    paths: list[Path]
    labels: np.ndarray  # [N] int64, index into class_names
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        """``<class>/<file>``: the image identities the feature cache is keyed by."""
        return [f"{p.parent.name}/{p.name}" for p in self.paths]

    def subset(self, idx) -> "ImageFolder":
        idx = list(idx)
        return ImageFolder(self.root, self.split, [self.paths[i] for i in idx], self.labels[idx], self.class_names)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _split_folder(root: Path, split: str) -> Path:
    if split == "train":
        return root / "train"
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    return root / "val"


def read_image_folder(root, split: str, class_names: Sequence[str] | None = None,
                      max_items: int = 0) -> ImageFolder:
    """The ``split`` ("train" | "test": ``val/``, else ``test/``) of the image folder ``root``.

    ``class_names``: the training split's classes (the test split's are checked against them; default: this
    split's own folder names). ``max_items``: keep that many images, evenly spaced over the sorted list
    (class by class, so the classes keep their shares). Raises ``SceneError`` naming the folder."""
    root = Path(root)
    if split not in ("train", "test"):
        raise SceneError(f"split must be train or test, got {split!r}")
    folder = _split_folder(root, split)
    if not folder.is_dir():
        want = "train/" if split == "train" else "val/ (or test/)"
        raise SceneError(f"{root}: no {want} folder; an image-folder dataset has root/train/<class>/*.jpg and "
                         f"root/val/<class>/*.jpg")
    dirs = _class_dirs(folder)
    if not dirs:
        raise SceneError(f"{folder}: no class folders (expected {folder}/<class>/*.jpg)")
    names = list(class_names) if class_names is not None else [d.name for d in dirs]
    unknown = [d.name for d in dirs if d.name not in names]
    if unknown:
        raise SceneError(f"{folder}: class folder(s) {', '.join(unknown)} are not among the training classes "
                         f"({', '.join(names)})")
    paths, labels = [], []
    for d in dirs:
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [names.index(d.name)] * len(files)
    if not paths:
        raise SceneError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    data = ImageFolder(root, split, paths, np.asarray(labels, dtype=np.int64), names)
    if max_items and len(data) > max_items:
        data = data.subset(np.linspace(0, len(data) - 1, max_items).round().astype(int).tolist())
    return data


def load_image(path: Path, size: int) -> np.ndarray:
    """[size, size, 3] float32 in [0, 1]: shorter side to size / 0.875 (bicubic), centre crop."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            short = round(size / CROP_RATIO)
            s = short / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise SceneError(f"{path}: not a readable image ({e})") from None


# ----------------------------------------------------------------------------------------- features
@dataclass
class ClsFeatures:
    """Per-image [CLS] [N, Dc] of one source; ``same_as``: the source whose features these are, when the source's
    [CLS] is that one's own function (``fit3d.models.cls_branch.cls_is_original``) and was not computed again."""

    cls: torch.Tensor
    same_as: str | None = None


def extract_cls(model, data: ImageFolder, size: int, batch_size: int = 32, device="cpu",
                desc: str = "cls features", precision: str | None = None) -> CachedFeatures:
    """[CLS] and mean patch tokens of every image (only these are kept: the patch grids of thousands of
    images would not fit in memory); returned as ``CachedFeatures`` with patch = pooled [N, D, 1, 1]."""
    t0 = time.perf_counter()
    cls, pooled = [], []
    for i in tqdm(range(0, len(data), batch_size), desc=desc, leave=False, disable=len(data) <= batch_size):
        batch = torch.from_numpy(np.stack([load_image(p, size) for p in data.paths[i:i + batch_size]]))
        batch = batch.permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode(), using_precision(model, precision):
            p, c = model.features(batch.to(device))
        cls.append(c.float().cpu())
        pooled.append(p.float().mean((2, 3)).cpu())
    pooled_t = torch.cat(pooled)
    return CachedFeatures(pooled_t[:, :, None, None], torch.cat(cls), data.names,
                          int(getattr(model, "patch_size", 14)), time.perf_counter() - t0)


def source_features(sources: dict[str, FeatureSource], data: ImageFolder, size: int, cache: FeatureCache,
                    load_model, batch_size: int = 32, device="cpu", set_name: str = "",
                    precision: str | None = None) -> dict[str, ClsFeatures]:
    """{label: ClsFeatures} of ``original`` / ``finetuned`` sources (cached per source and image file in the
    token cache, as mean-pooled patch tokens [D, 1, 1] + [CLS]), plus ``concat`` (both [CLS] joined) when both are
    there. ``load_model(FeatureSource)`` gives a model with ``.features``; it is called only on a cache miss, or to
    compare the weights of a fine-tuned model whose folder has a [CLS] branch with the original's: when its [CLS]
    is the original's (``cls_is_original``, the ``default`` recipe's model) the original's features are its own
    (``same_as``), and none of its forwards run. ``precision``: the features' dtype (``fit3d.device.resolve_precision``;
    None: the models' default), part of the cache key."""
    out = {}
    ids = [file_id(p, f"cls {size} crop {CROP_RATIO}") for p in data.paths]
    same = _same_cls(sources, load_model)
    for label, src in sources.items():
        if src.kind == "concat" or label in same:
            continue

        def compute(idx, src=src, label=label):
            model = load_model(src)
            f = extract_cls(model, data.subset(idx), size, batch_size, device, desc=f"{label} {data.split}",
                            precision=precision)
            return f.patch, f.cls, {"patch_size": f.patch_size}

        f = cache.get(source_key(src, device, variant="mean", precision=precision), ids, compute)
        out[label] = ClsFeatures(f.cls)
    for label, base in same.items():
        out[label] = ClsFeatures(out[base].cls, same_as=base)
    if "original" in out and "finetuned" in out:
        out["concat"] = ClsFeatures(torch.cat([out["original"].cls, out["finetuned"].cls], 1))
    return out


def _same_cls(sources: dict[str, FeatureSource], load_model) -> dict[str, str]:
    """{label: original's label} of the fine-tuned sources whose [CLS] is the original's own (their folder has a
    [CLS] branch and the weights say so); the models are loaded only for a folder with a branch."""
    from fit3d.finetune.trainer import MODEL_DIR
    from fit3d.models.cls_branch import CLS_BRANCH_FILE, cls_is_original

    orig = [(k, s) for k, s in sources.items() if s.kind == "original"]
    same = {}
    for label, src in sources.items():
        if src.kind != "finetuned" or not orig or src.layers:
            continue
        if not (Path(src.finetuned_dir) / MODEL_DIR / CLS_BRANCH_FILE).is_file():
            continue
        for olabel, osrc in orig:
            if (osrc.backbone, osrc.model_path, osrc.layers) == (src.backbone, src.model_path, src.layers) \
                    and cls_is_original(load_model(osrc), load_model(src)):
                same[label] = olabel
                print(f"[fit3d] {label}: its [CLS] is the original's (the same weights on the [CLS] path: a [CLS] "
                      f"branch); the original's [CLS] features are used, none computed again", flush=True)
                break
    return same


# ----------------------------------------------------------------------------------------- classifiers
@torch.no_grad()
def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """DINO's weighted k-NN: predicted class [M] of each test row. train_x [N, D], train_y [N], test_x [M, D].

    Cosine similarity to every training row; the ``k`` most similar vote for their class with weight
    exp(sim / temperature); the class with the largest vote wins."""
    if len(train_x) == 0:
        raise Fit3DError("k-NN classification: the training split is empty")
    tr = F.normalize(train_x.float(), dim=1)
    k = min(k, len(tr))
    preds = []
    for i in range(0, len(test_x), chunk):
        sim = F.normalize(test_x[i:i + chunk].float(), dim=1) @ tr.T  # [m, N]
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, train_y[idx].long(), (top / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


class LinearClsHead(nn.Module):
    """BatchNorm1d (no affine) + linear: features [B, D] -> logits [B, C] (MAE's linear probe)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim, affine=False)
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x))


@dataclass
class ClsSettings:
    """The linear classification head's training (AdamW, linear warmup over 5% then cosine)."""

    iterations: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int | None = None  # None: 5% of the iterations
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warmup is None:
            self.warmup = round(0.05 * self.iterations)


def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, s: ClsSettings) -> tuple[LinearClsHead, dict]:
    """Fit a linear head on cached features x [N, D] with labels y [N]; returns (head, log)."""
    torch.manual_seed(s.seed)
    head = LinearClsHead(x.shape[1], num_classes)
    x, y = x.float(), y.long()

    def step(idx):
        if len(idx) < 2:  # BatchNorm needs two rows
            idx = torch.cat([idx, idx])
        return F.cross_entropy(head(x[idx]), y[idx])

    log = train_head(head, len(x), step, iterations=s.iterations, batch_size=s.batch_size, lr=s.lr,
                     weight_decay=s.weight_decay, schedule="cosine", warmup=s.warmup, seed=s.seed, desc="cls probe")
    return head, log


@torch.no_grad()
def predict_linear(head: LinearClsHead, x: torch.Tensor) -> torch.Tensor:
    head.eval()
    return head(x.float()).argmax(1)


def majority_top1(train_y, test_y) -> float:
    """Top-1 of predicting the training split's most frequent class for every test image."""
    major = int(np.bincount(np.asarray(train_y)).argmax())
    return float((np.asarray(test_y) == major).mean())


def cls_stats(train_f: dict, train_y: torch.Tensor, test_f: dict, test_y: torch.Tensor, num_classes: int,
              settings: list[ClsSettings], k: int = 20, temperature: float = 0.07, known: dict | None = None,
              heads: dict | None = None) -> dict:
    """{source: [seeds, N, 4] (k-NN hit, 1, linear hit, 1)} of every source in ``train_f`` (x [N, D] tensors);
    sources in ``known`` are taken from it. The k-NN is the same for every seed. ``heads``, when given,
    receives {source: [(head, log) per seed]}."""
    out = dict(known or {})
    y = np.asarray(test_y)
    for src in train_f:
        if src in out:
            continue
        knn = (knn_classify(train_f[src], train_y, test_f[src], num_classes, k, temperature).numpy() == y)
        rows = []
        trained = []
        for s in settings:
            head, log = train_linear(train_f[src], train_y, num_classes, s)
            trained.append((head, log))
            lin = predict_linear(head, test_f[src]).numpy() == y
            ones = np.ones(len(y))
            rows.append(np.stack([knn, ones, lin, ones], 1).astype(np.float64))
        out[src] = np.stack(rows)
        if heads is not None:
            heads[src] = trained
    return out


def top1(stats: np.ndarray) -> dict:
    """{metric: [per-seed top-1]} of one source's [seeds, N, 4] statistics."""
    s = stats.sum(1)
    return {m: s[:, 2 * j] / np.maximum(s[:, 2 * j + 1], 1) for j, m in enumerate(CLS_METRICS)}


# ----------------------------------------------------------------------------------------- fit3d probe --task cls
def run_cls_probe(cfg, command: str | None = None, verbose: bool = True) -> dict:
    """``fit3d probe --task cls``: k-NN and linear top-1 of each ``cfg.features`` source on ``cfg.data``'s
    ``train/`` -> ``val/`` (``cfg.eval_data``'s ``val/`` when given). Writes probe.json / probe.md and the
    linear heads (``heads/<source>[_seed<s>].pt``) under ``cfg.out``; with original, finetuned and concat all
    given, probe.md adds paired bootstrap intervals against the original and the width control."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from fit3d.device import resolve_device, resolve_precision
    from fit3d.probe import heads as heads_mod
    from fit3d.probe import report
    from fit3d.probe.report import seed_summary
    from fit3d.probe.config import probe_settings
    from fit3d.probe import sources as sources_mod
    from fit3d.probe.summary import CONTROL, SOURCES, summarise, summary_markdown

    cfg.validate()
    if cfg.layers:
        raise Fit3DError("--layers: the classification probe reads the final [CLS] token only")
    device = str(resolve_device(cfg.device))
    out = Path(cfg.out)
    train = read_image_folder(cfg.data, "train", max_items=cfg.max_items)
    test = read_image_folder(cfg.eval_data or cfg.data, "test", class_names=train.class_names,
                             max_items=cfg.max_items)
    srcs = {s.label: s for s in sources_mod.config_sources(cfg)}
    base = dict(srcs)
    if "concat" in srcs:  # computed from the two sources' features (both [CLS] tokens)
        for kind in ("original", "finetuned"):
            base.setdefault(kind, FeatureSource(kind, cfg.backbone, cfg.model_path, cfg.finetuned))
    cache = FeatureCache(None if (cfg.cache_dir or "").lower() == "none" else (cfg.cache_dir or out / "cache"))
    loaded: dict = {}

    def load_model(src):
        if src not in loaded:
            loaded[src] = sources_mod.resolve_source(src, device=device)
        return loaded[src]

    t0 = time.perf_counter()
    kw = dict(batch_size=cfg.extract_batch, device=device, precision=resolve_precision(cfg.precision, device))
    ftr = source_features(base, train, cfg.cls_size, cache, load_model, set_name="train", **kw)
    fte = source_features(base, test, cfg.cls_size, cache, load_model, set_name="test", **kw)
    extract_s = time.perf_counter() - t0
    want = [s for s in srcs] + ([CONTROL] if set(SOURCES) <= set(srcs) else [])
    if CONTROL in want:
        ftr[CONTROL] = ClsFeatures(ftr["original"].cls.repeat(1, 2))
        fte[CONTROL] = ClsFeatures(fte["original"].cls.repeat(1, 2))
    settings = [ClsSettings(iterations=cfg.iterations, batch_size=cfg.batch_size, seed=s,
                            **{k: v for k, v in (("lr", cfg.lr), ("warmup", cfg.warmup)) if v is not None})
                for s in cfg.head_seeds]
    y_tr, y_te = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    C = len(train.class_names)
    trained: dict = {}
    t0 = time.perf_counter()
    stats = cls_stats({s: ftr[s].cls for s in want}, y_tr, {s: fte[s].cls for s in want}, y_te, C, settings,
                      cfg.knn_k, cfg.knn_temperature, heads=trained)
    head_s = time.perf_counter() - t0

    results, saved = {}, {}
    for label in srcs:
        acc = top1(stats[label])
        per_seed = {seed: {m: float(acc[m][i]) for m in CLS_METRICS} for i, seed in enumerate(cfg.head_seeds)}
        results[label] = seed_summary(per_seed, CLS_METRICS)
        for i, seed in enumerate(cfg.head_seeds):
            head = trained[label][i][0]
            name = label if i == 0 else f"{label}_seed{seed}"
            meta = {"type": "cls", "format": heads_mod.FORMAT, "feature_dim": int(head.fc.in_features),
                    "num_classes": C, "class_names": train.class_names, "input": "cls",
                    "source": heads_mod.source_meta(srcs[label]), "size": cfg.cls_size, "seed": seed,
                    "iterations": cfg.iterations}
            saved[name] = str(heads_mod.save_head(heads_mod.head_path(out, name), head, meta))
    results["baseline: majority class"] = {m: majority_top1(train.labels, test.labels) for m in CLS_METRICS}
    results["baseline: chance"] = {m: 1.0 / C for m in CLS_METRICS}

    table = None
    if CONTROL in want:
        entry = summarise("corr", stats, SimpleNamespace(bootstrap=2000), list(CLS_METRICS))
        control = {test.root.name: entry.pop("_control")}
        table = summary_markdown({test.root.name: entry}, control)
        results["intervals"] = {"ci": entry["ci"], CONTROL: control[test.root.name][CONTROL],
                                "ci_control": control[test.root.name]["ci"]}
    s = asdict(cfg)
    s.update(device=device, head_seeds=cfg.head_seeds, n_train=len(train), n_test=len(test), num_classes=C,
             class_names=train.class_names, dataset="imagefolder",
             sources=[{"label": k, **asdict(v)} for k, v in srcs.items()])
    timing = {"extract_s": extract_s, "heads_s": head_s}
    same = {k: v.same_as for k, v in ftr.items() if v.same_as}
    md = report.write_report(out, "cls", {k: v for k, v in results.items() if k != "intervals"}, s,
                             {"timing": timing, "heads": saved, "config": probe_settings(cfg), "same_cls": same,
                              **({"intervals": results["intervals"]}
                                                                   if "intervals" in results else {})},
                             command, extra_md=table)
    if verbose:
        print(md)
        if table:
            print(table)
        print(f"wrote {out / 'probe.json'}")
    return {"metrics": results, "timing": timing, "settings": s, "table": md, "heads": saved, "stats": stats}
