"""Probe datasets: readers for the layouts users have, all giving ``ProbeData`` (lazy ``View``s).

Labels are remapped to ``0..C-1`` with ``ignore_index`` 255; depth is metres, 0 = invalid. Un-posed
datasets get a nominal K and identity pose (only the correspondence task needs real poses).
Every view is resized to the probe ``resolution`` (W, H) (image area/bilinear, targets nearest), so
metrics are computed at that resolution (documented deviation from sliding-window at native size).

Layouts (``--dataset`` name, what ``--data`` points at):

``scene`` -- any fit3d scene with depth (and optionally labels): what ``fit3d.data.read_scene`` reads
    (7-Scenes folder, ScanNet ``color/ depth/ pose/ intrinsic/ label-filt/``, synthetic scenes with
    ``classes.json``, nerfstudio, COLMAP). Split by frame number (``frame_number`` of the view name):
    default train 0-398, test 400-498 (the 7-Scenes convention), or ``--train-frames/--test-frames``.
    ScanNet ``label-filt`` ids are mapped to NYU40 (1..40 -> 0..39) through
    ``scannetv2-labels.combined.tsv`` when that file is in the scene folder or its parent; otherwise
    labels are taken as already 0-based class ids (255 ignore).
``scannet`` -- a folder of ScanNet scene folders (``scene0000_00/ ...``) or one scene folder; the split
    comes from ``scannetv2_train.txt`` / ``scannetv2_val.txt`` beside them (else the frame split above).
``nyuv2`` -- the labeled split extracted to files (e.g. by the usual NYUv2 toolkits)::

        root/train.txt, root/test.txt        # image ids, one a line (795 / 654)
        root/image/<id>.png                  # RGB 640x480
        root/depth/<id>.png                  # uint16 millimetres (or <id>.npy float metres)
        root/label13/<id>.png, root/label40/<id>.png   # uint8, 0 = unlabeled, 1..C classes

    ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5) needs h5py, which fit3d does not depend on:
    extract it first. Evaluation uses the Eigen crop, max depth 10 m.
``scannetpp`` -- ScanNet++ DSLR with rendered semantics/depth::

        root/splits/nvs_sem_train.txt, root/splits/nvs_sem_val.txt   # scene ids
        root/data/<scene>/dslr/resized_undistorted_images/<name>.JPG (or undistorted_images/)
        root/data/<scene>/dslr/render_depth/<name>.png               # uint16 millimetres
        root/data/<scene>/dslr/render_semantic/<name>.png            # class ids 0..99, else ignore

    Max depth 20 m, 100 classes.
``ade20k`` -- ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
    ``annotations/{training,validation}/*.png`` (0 = other -> ignore, 1..150 -> 0..149).
``voc`` -- ``VOCdevkit/VOC2012/JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette indices 0..20,
    255 = boundary/ignore) and ``ImageSets/Segmentation/{train,val}.txt`` (21 classes).
``camvid`` -- CamVid in the SegNet layout: ``train/*.jpg`` + ``trainannot/*.png`` (train split) and
    ``val/`` + ``valannot/`` (test split); 8-bit label PNGs sharing the image's stem, class ids 0..10
    (``CAMVID_CLASSES``), 11 = unlabelled -> ignore.
``kitti`` -- Eigen split in the BTS file-list format::

        root/eigen_train_files_with_gt.txt, root/eigen_test_files_with_gt.txt
            # "<rgb path> <depth path or None> <focal>" relative to root/raw/ and root/gt/
        root/raw/2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png
        root/gt/2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png  # uint16 / 256 m

    Garg crop, max depth 80 m.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from fit3d.data.readers.common import read_rgb as common_read_rgb
from fit3d.data.readers.common import read_single_channel, require_file
from fit3d.data.readers import frame_number  # re-exported: the probe's frame split uses it
from fit3d.data.scene import View
from fit3d.errors import SceneError

IGNORE = 255
DATASETS = ("auto", "scene", "scannet", "nyuv2", "scannetpp", "ade20k", "voc", "kitti", "camvid")
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist")
TRAIN_FRAMES = (0, 398)
TEST_FRAMES = (400, 498)


@dataclass
class ProbeData:
    """A probe's image set: lazy views (already at the probe resolution) plus dataset conventions."""

    name: str
    names: list[str]
    loaders: list[Callable[[], View]]
    num_classes: int = 0
    class_names: list[str] | None = None
    ignore_index: int = IGNORE
    min_depth: float = 1e-3
    max_depth: float = 10.0
    crop: str | None = None  # evaluation crop: "eigen" (NYU) | "garg" (KITTI) | None
    posed: bool = False
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def view(self, i: int) -> View:
        return self.loaders[i]()

    def subset(self, idx) -> "ProbeData":
        idx = list(idx)
        return ProbeData(self.name, [self.names[i] for i in idx], [self.loaders[i] for i in idx],
                         self.num_classes, self.class_names, self.ignore_index, self.min_depth,
                         self.max_depth, self.crop, self.posed, dict(self.meta))


# ----------------------------------------------------------------------------------------------- helpers
def parse_range(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    """``"0-398"`` -> (0, 398) inclusive."""
    if not text:
        return default
    m = re.fullmatch(r"\s*(\d+)\s*[-:]\s*(\d+)\s*", str(text))
    if not m:
        raise SceneError(f"frame range must look like 0-398, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def nominal_K(w: int, h: int) -> np.ndarray:
    f = float(max(w, h))
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=np.float64)


def read_rgb(path: Path) -> np.ndarray:
    """[H, W, 3] float32 0-1 (``fit3d.data.readers.common.read_rgb`` scaled)."""
    return common_read_rgb(path).astype(np.float32) / 255.0


def read_index_png(path: Path) -> np.ndarray:
    """Label PNG as integer indices (palette PNGs give the indices, not the colours: PIL, not cv2, which
    would expand the palette); a missing, truncated or unreadable file is a ``SceneError`` naming it."""
    require_file(path, "labels")
    try:
        with Image.open(path) as im:  # PIL refuses truncated data unless LOAD_TRUNCATED_IMAGES is set
            a = np.array(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise SceneError(f"{path}: labels are unreadable or truncated ({e})") from None
    if a.ndim != 2:
        raise SceneError(f"{path}: labels must be a single-channel or palette PNG, got shape {a.shape}")
    return a.astype(np.int64)


def read_depth_png(path: Path, scale: float) -> np.ndarray:
    """uint16 depth PNG / ``scale`` -> metres (0 stays invalid); ``.npy`` is taken as metres. Strict
    decoding (``fit3d.data.readers.common.read_single_channel``)."""
    d = read_single_channel(path, "depth").astype(np.float32)
    return d if path.suffix.lower() == ".npy" else d / scale


def shift_labels(raw: np.ndarray, num_classes: int) -> np.ndarray:
    """0 = unlabeled -> ignore, 1..C -> 0..C-1, anything else -> ignore."""
    out = raw - 1
    out[(raw <= 0) | (raw > num_classes)] = IGNORE
    return out


def _make_view(image, name, resolution, depth=None, labels=None, K=None, c2w=None) -> View:
    h, w = image.shape[:2]
    if depth is not None and depth.shape != (h, w):  # e.g. KITTI GT depth is the image size, NYU is too
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
    v = View(image=image, K=nominal_K(w, h) if K is None else K, c2w=np.eye(4) if c2w is None else c2w,
             name=name, depth=depth, labels=labels)
    return v.resized(*resolution) if resolution else v


def _read_list(path: Path) -> list[str]:
    if not path.exists():
        raise SceneError(f"split file not found: {path}")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


# ----------------------------------------------------------------------------------------------- readers
def read_nyuv2(root: Path, split: str, resolution, num_classes: int = 40) -> ProbeData:
    if num_classes not in (13, 40):
        raise SceneError(f"NYUv2 has 13 or 40 classes, not {num_classes}")
    if (root / "nyu_depth_v2_labeled.mat").exists() and not (root / "image").is_dir():
        raise SceneError(f"{root / 'nyu_depth_v2_labeled.mat'}: reading the .mat needs h5py (not a fit3d "
                         f"dependency); extract it to image/ depth/ label13/ label40/ train.txt test.txt")
    ids = _read_list(root / ("train.txt" if split == "train" else "test.txt"))

    def load(i):
        dpath = root / "depth" / f"{i}.png"
        depth = read_depth_png(dpath if dpath.exists() else root / "depth" / f"{i}.npy", 1000.0)
        labels = shift_labels(read_index_png(root / f"label{num_classes}" / f"{i}.png"), num_classes)
        return _make_view(read_rgb(root / "image" / f"{i}.png"), i, resolution, depth, labels)

    return ProbeData("nyuv2", ids, [lambda i=i: load(i) for i in ids], num_classes, max_depth=10.0,
                     crop="eigen")


def read_ade20k(root: Path, split: str, resolution) -> ProbeData:
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    sub = "training" if split == "train" else "validation"
    imgs = sorted((root / "images" / sub).glob("*.jpg"))
    if not imgs:
        raise SceneError(f"no images in {root / 'images' / sub} (ADEChallengeData2016 layout expected)")

    def load(p):
        labels = shift_labels(read_index_png(root / "annotations" / sub / (p.stem + ".png")), 150)
        return _make_view(read_rgb(p), p.stem, resolution, labels=labels)

    return ProbeData("ade20k", [p.stem for p in imgs], [lambda p=p: load(p) for p in imgs], 150)


def read_voc(root: Path, split: str, resolution) -> ProbeData:
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir():
            root = cand
            break
    ids = _read_list(root / "ImageSets" / "Segmentation" / ("train.txt" if split == "train" else "val.txt"))

    def load(i):
        labels = read_index_png(root / "SegmentationClass" / f"{i}.png")
        labels[(labels < 0) | (labels > 20)] = IGNORE
        return _make_view(read_rgb(root / "JPEGImages" / f"{i}.jpg"), i, resolution, labels=labels)

    return ProbeData("voc", ids, [lambda i=i: load(i) for i in ids], 21)


def read_camvid(root: Path, split: str, resolution) -> ProbeData:
    """CamVid, SegNet layout: ``split`` "train" -> train/ + trainannot/, "test" (or "val") -> val/ + valannot/."""
    sub = "train" if split == "train" else "val"
    imgs = sorted(p for p in (root / sub).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not imgs:
        raise SceneError(f"no images in {root / sub} (CamVid SegNet layout: {sub}/ and {sub}annot/ expected)")

    def load(p):
        raw = read_index_png(root / f"{sub}annot" / (p.stem + ".png"))
        labels = raw.copy()
        labels[(raw < 0) | (raw >= len(CAMVID_CLASSES))] = IGNORE  # 11 = unlabelled
        return _make_view(read_rgb(p), p.stem, resolution, labels=labels)

    return ProbeData("camvid", [p.stem for p in imgs], [lambda p=p: load(p) for p in imgs], len(CAMVID_CLASSES),
                     list(CAMVID_CLASSES))


def read_kitti(root: Path, split: str, resolution) -> ProbeData:
    lst = root / ("eigen_train_files_with_gt.txt" if split == "train" else "eigen_test_files_with_gt.txt")
    rows = [ln.split() for ln in _read_list(lst)]
    rows = [r for r in rows if len(r) >= 2 and r[1] != "None"]  # frames without projected GT are skipped

    def load(r):
        depth = read_depth_png(root / "gt" / r[1], 256.0)
        return _make_view(read_rgb(root / "raw" / r[0]), r[0], resolution, depth=depth)

    names = [r[0] for r in rows]
    return ProbeData("kitti", names, [lambda r=r: load(r) for r in rows], max_depth=80.0, crop="garg")


def read_scannetpp(root: Path, split: str, resolution, num_classes: int = 100) -> ProbeData:
    scenes = _read_list(root / "splits" / ("nvs_sem_train.txt" if split == "train" else "nvs_sem_val.txt"))
    names, loaders = [], []
    for s in scenes:
        dslr = root / "data" / s / "dslr"
        img_dir = next((dslr / d for d in ("resized_undistorted_images", "undistorted_images", "resized_images")
                        if (dslr / d).is_dir()), None)
        if img_dir is None:
            raise SceneError(f"{dslr}: no resized_undistorted_images/ or undistorted_images/ folder")
        for p in sorted(img_dir.iterdir()):
            if p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue

            def load(p=p, dslr=dslr, s=s):
                depth = read_depth_png(dslr / "render_depth" / (p.stem + ".png"), 1000.0)
                sem = dslr / "render_semantic" / (p.stem + ".png")
                labels = None
                if sem.exists():
                    labels = read_index_png(sem)
                    labels[(labels < 0) | (labels >= num_classes)] = IGNORE
                return _make_view(read_rgb(p), f"{s}/{p.stem}", resolution, depth=depth, labels=labels)

            names.append(f"{s}/{p.stem}")
            loaders.append(load)
    return ProbeData("scannetpp", names, loaders, num_classes, max_depth=20.0)


def _nyu40_map(scene_dir: Path) -> np.ndarray | None:
    """ScanNet raw label id -> 0-based NYU40 class (255 ignore), from scannetv2-labels.combined.tsv."""
    for d in (scene_dir, scene_dir.parent):
        tsv = d / "scannetv2-labels.combined.tsv"
        if tsv.exists():
            lines = tsv.read_text().splitlines()
            head = lines[0].split("\t")
            i_id, i_nyu = head.index("id"), head.index("nyu40id")
            pairs = [(int(r[i_id]), int(r[i_nyu])) for r in (ln.split("\t") for ln in lines[1:]) if len(r) > i_nyu
                     and r[i_id].isdigit() and r[i_nyu].isdigit()]
            lut = np.full(max(p[0] for p in pairs) + 1 if pairs else 1, IGNORE, dtype=np.int64)
            for rid, nyu in pairs:
                lut[rid] = nyu - 1 if 1 <= nyu <= 40 else IGNORE
            return lut
    return None


def read_fit3d_scene(path: Path, split: str, resolution, train_frames=TRAIN_FRAMES, test_frames=TEST_FRAMES,
                     layout: str = "auto", max_depth: float = 10.0, num_classes: int = 0) -> ProbeData:
    """A scene ``fit3d.data.read_scene`` understands, split by frame number (inclusive ranges)."""
    from fit3d.data import read_scene

    lo, hi = train_frames if split == "train" else test_frames
    try:  # only the split's views are read
        scene = read_scene(path, layout=layout, resolution=tuple(resolution) if resolution else None,
                           names=lambda n: lo <= frame_number(n) <= hi)
    except SceneError as e:
        raise SceneError(f"{path}: no views with frame numbers in {lo}-{hi} for the {split} split ({e})") from e
    views = [v for v in scene.views if lo <= frame_number(v.name) <= hi]
    if not views:
        raise SceneError(f"{path}: no views with frame numbers in {lo}-{hi} for the {split} split")
    lut = _nyu40_map(Path(path))
    classes = None
    if lut is not None:
        num_classes = 40
        views = [_relabel(v, lut) for v in views]
    else:
        classes = _class_names(Path(path), scene.meta)
        if classes and not num_classes:
            num_classes = len(classes)
        if not num_classes and any(v.labels is not None for v in views):
            num_classes = int(max(v.labels[v.labels != IGNORE].max(initial=-1) for v in views
                                  if v.labels is not None)) + 1
        views = [_clean_labels(v, num_classes) for v in views]
    return ProbeData(scene.name or Path(path).name, [v.name for v in views],
                     [lambda v=v: v for v in views], num_classes, classes, max_depth=max_depth, posed=True)


def _class_names(path: Path, meta: dict) -> list[str] | None:
    c = next((meta[k] for k in ("classes", "class_names") if meta.get(k) is not None), None)
    if c is None and (path / "classes.json").exists():
        try:
            c = json.loads((path / "classes.json").read_text())
        except (OSError, ValueError) as e:
            raise SceneError(f"{path / 'classes.json'}: unreadable class list ({e})") from None
    if isinstance(c, dict) and c and all(str(k).lstrip("-").isdigit() for k in c):  # {id: name}
        ids = {int(k): v for k, v in c.items() if int(k) >= 0}
        return [str(ids.get(i, f"class{i}")) for i in range(max(ids) + 1)]
    if isinstance(c, dict):
        c = c.get("classes", c.get("names"))
    return [str(x) for x in c] if isinstance(c, list) else None


def _relabel(v: View, lut: np.ndarray) -> View:
    if v.labels is None:
        return v
    lab = v.labels.copy()
    ok = (lab >= 0) & (lab < len(lut))
    out = np.full_like(lab, IGNORE)
    out[ok] = lut[lab[ok]]
    v.labels = out
    return v


def _clean_labels(v: View, num_classes: int) -> View:
    if v.labels is not None:
        lab = v.labels.astype(np.int64).copy()
        lab[(lab < 0) | (lab >= max(num_classes, 1))] = IGNORE
        v.labels = lab
    return v


def read_scannet(root: Path, split: str, resolution, num_classes: int = 0, **kw) -> ProbeData:
    """One ScanNet scene (frame split) or a folder of scenes (scannetv2_{train,val}.txt split, else every
    scene folder with all its frames, e.g. separate train / test folders of ``fit3d generate`` rooms)."""
    if (root / "color").is_dir():
        return read_fit3d_scene(root, split, resolution, layout="scannet", max_depth=10.0,
                                num_classes=num_classes, **kw)
    lst = root / ("scannetv2_train.txt" if split == "train" else "scannetv2_val.txt")
    scenes = _read_list(lst) if lst.exists() else sorted(p.name for p in root.iterdir() if (p / "color").is_dir())
    if not scenes:
        raise SceneError(f"{root}: no ScanNet scene folders (with color/) found")
    wide = (0, 10 ** 9)
    parts = [read_fit3d_scene(root / s, "train", resolution, train_frames=wide, layout="scannet", max_depth=10.0,
                              num_classes=num_classes) for s in scenes]
    n = num_classes or max(p.num_classes for p in parts)
    return ProbeData("scannet", [f"{s}/{nm}" for s, p in zip(scenes, parts) for nm in p.names],
                     [ld for p in parts for ld in p.loaders], n, parts[0].class_names, max_depth=10.0, posed=True)


def detect(path: Path) -> str:
    """Guess the dataset layout of ``path``."""
    if (path / "ADEChallengeData2016").is_dir() or (path / "images" / "training").is_dir():
        return "ade20k"
    if any((path / c / "JPEGImages").is_dir() for c in ("VOCdevkit/VOC2012", "VOC2012", ".")):
        return "voc"
    if (path / "eigen_test_files_with_gt.txt").exists():
        return "kitti"
    if (path / "trainannot").is_dir() or (path / "valannot").is_dir():
        return "camvid"
    if (path / "splits" / "nvs_sem_val.txt").exists():
        return "scannetpp"
    if (path / "label40").is_dir() or (path / "label13").is_dir() or (path / "nyu_depth_v2_labeled.mat").exists():
        return "nyuv2"
    if (path / "scannetv2_val.txt").exists():
        return "scannet"
    return "scene"


def load_probe_data(path, split: str, resolution=None, dataset: str = "auto", num_classes: int = 0,
                    train_frames=TRAIN_FRAMES, test_frames=TEST_FRAMES, max_depth: float | None = None,
                    max_items: int = 0) -> ProbeData:
    """Read ``split`` ("train" | "test") of the dataset at ``path``, resized to ``resolution`` (W, H)."""
    path = Path(path)
    if not path.exists():
        raise SceneError(f"probe data not found: {path}")
    if split not in ("train", "test"):
        raise SceneError(f"split must be train or test, got {split!r}")
    kind = detect(path) if dataset == "auto" else dataset
    if kind == "nyuv2":
        data = read_nyuv2(path, split, resolution, num_classes or 40)
    elif kind == "ade20k":
        data = read_ade20k(path, split, resolution)
    elif kind == "voc":
        data = read_voc(path, split, resolution)
    elif kind == "kitti":
        data = read_kitti(path, split, resolution)
    elif kind == "camvid":
        data = read_camvid(path, split, resolution)
    elif kind == "scannetpp":
        data = read_scannetpp(path, split, resolution, num_classes or 100)
    elif kind == "scannet":
        data = read_scannet(path, split, resolution, num_classes, train_frames=train_frames, test_frames=test_frames)
    elif kind == "scene":
        data = read_fit3d_scene(path, split, resolution, train_frames, test_frames, num_classes=num_classes)
    else:
        raise SceneError(f"unknown probe dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if max_depth:
        data.max_depth = float(max_depth)
    if max_items and len(data) > max_items:  # evenly spaced subset, deterministic
        data = data.subset(np.linspace(0, len(data) - 1, max_items).round().astype(int).tolist())
    data.meta.update({"path": str(path), "split": split, "dataset": kind})
    return data
