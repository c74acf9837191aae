"""``fit3d compare IMG [IMG ...] --finetuned DIR --out DIR``: PCA pictures of original vs fine-tuned features.

The paper's qualitative figure (``compare_figure``): an image, PCA of original vs fine-tuned features,
depth-probe maps. It works on any photo: the image is resized (keeping its aspect) to a multiple of the
patch size, both backbones see the same input, and one PCA basis fitted on both feature maps colours them.

One PNG per image (``OUT/<image stem>.png``): the image, PCA of the original backbone's features and of
the fine-tuned one's, coloured with one PCA basis fitted on both. Folders given as IMG are searched for
images (non-recursively).

``--depth-probe DIR_OR_FILE ...`` adds the depth maps of trained depth probes (``fit3d probe --task depth``
output folders, whose ``heads/<source>.pt`` are read, or single head files), one panel per feature source
(original / finetuned / concat) on one colour scale. Without ``--short-side`` the model input then has the
probes' training short side (their ``--resolution``), so the features are at the scale the heads saw.

``--scene DIR`` (a posed scene with depth, any layout ``fit3d.data.read_scene`` reads) adds
``OUT/correspondence_<scene>.png``: a view pair of the scene (``--pair A B``, default the pair with the
largest rotation that still overlaps) with the nearest-patch matches of the original and of the fine-tuned
backbone, green where within one patch of the ground-truth reprojection (depth + poses), red where wrong
(:mod:`fit3d.probe.corr_figure`). IMG may then be omitted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.device import resolve_device
from fit3d.errors import ModelNotFoundError, NonFiniteError, SceneError
from fit3d.finetune.assembled import load_finetuned, read_manifest
from fit3d.guard import guard_output, model_inputs
from fit3d.io import write_json
from fit3d.models import ConcatFeatures, load_backbone
from fit3d.probe.corr_figure import correspondence_figure
from fit3d.probe.features import extract_features
from fit3d.probe.heads import HEADS_DIR, load_head
from fit3d.probe.sources import KINDS as FEATURE_SOURCES
from fit3d.run import check_rerun, result_settings
from fit3d.config import check_counts, check_memory, vit_bytes
from fit3d.device import check_device
from fit3d.viz.images import read_image, save_png, titled, to_uint8
from fit3d.viz.panels import comparison_figure

RECORD = "compare.json"  # the settings the figures in --out were made with (a rerun with others is refused)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class CompareConfig:
    finetuned: str = field(default="", metadata={"help": "a `fit3d finetune` output folder (fit3d.json + model/)"})
    out: str = field(default="compare", metadata={"help": "folder for the PNG figures"})
    backbone: str = field(default="", metadata={"help": "registered name of the original backbone "
                                                        "(default: the one in the fine-tuned folder's fit3d.json)"})
    model_path: str = field(default="", metadata={"help": "local folder / hub id of the original weights "
                                                          "(default: the path in fit3d.json, FIT3D_MODEL_PATH, the hub)"})
    depth_probe: list[str] = field(default_factory=list, metadata={
        "help": "depth probes to show: `fit3d probe --task depth` output folders (heads/*.pt) or head files"})
    short_side: int = field(default=0, metadata={"help": "model input: shorter image side, rounded to the patch "
                                                         "(0: the depth probes' training short side, else 448)"})
    max_side: int = field(default=1344, metadata={"help": "model input: cap on the longer side"})
    panel_height: int = field(default=320, metadata={"help": "display height of each panel in pixels"})
    scene: str = field(default="", metadata={"help": "a posed scene with depth: adds a correspondence figure of "
                                                     "one of its view pairs (original vs fine-tuned matches)"})
    pair: list[str] = field(default_factory=list, metadata={"help": "--scene: the two view names of the pair "
                                                                     "(default: the most rotated overlapping pair)"})
    device: str = field(default="auto", metadata={"volatile": True, "help": "auto / cpu / cuda / cuda:N"})
    overwrite: bool = field(default=False, metadata={"volatile": True,
        "help": "replace earlier figures in --out made with other settings (without it such a rerun is refused)"})

    def validate(self) -> None:
        """``Fit3DError`` naming the option for a value out of range (before any model loads)."""
        check_counts(self, {"short_side": 0, "max_side": 1, "panel_height": 1})
        side = min(self.short_side or 448, self.max_side)  # a square image's model input (the smallest for a side)
        check_memory(self, "max_side", vit_bytes(side, side) * 2, "both backbones' attention over a square image")
        check_device(self.device)


# A depth probe: (patch [B, D, h, w], cls [B, Dc], (H, W)) -> depth [B, 1, H, W] or [B, H, W] metres.
# ``fit3d.probe.depth.LinearDepthHead`` is one. Keyed by the features it reads:
# "original", "finetuned" or "concat" (original and fine-tuned patch tokens, original [CLS]).
DepthProbe = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


def model_input_size(height: int, width: int, patch: int, short_side: int = 448,
                     max_side: int = 1344) -> tuple[int, int]:
    """(H, W) for the model: shorter side about ``short_side``, longer side at most ``max_side``, aspect
    kept, both rounded to multiples of ``patch``."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_side:
        scale = max_side / max(height, width)
    return (max(patch, int(round(height * scale / patch)) * patch),
            max(patch, int(round(width * scale / patch)) * patch))


def prepare_image(image, backbone, short_side: int = 448, max_side: int = 1344) -> torch.Tensor:
    """uint8 / float RGB [H, W, 3] -> float [1, 3, H', W'] in [0, 1] sized for ``backbone``."""
    img = torch.from_numpy(to_uint8(image)).permute(2, 0, 1)[None]
    size = model_input_size(img.shape[-2], img.shape[-1], backbone.patch_size, short_side, max_side)
    return backbone.prepare(img, size=size)


def _depth_of(probe: DepthProbe, patch: torch.Tensor, cls: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    with torch.inference_mode():
        d = probe(patch, cls, size)
    d = d.detach().float().cpu()
    return d.reshape(d.shape[0], *d.shape[-2:])[0].numpy()


def probe_features(model, x: torch.Tensor, layers: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch [1, D, h, w], cls [1, Dc]) of ``x`` [1, 3, H, W] exactly as ``fit3d probe`` extracted them
    (``fit3d.probe.features.extract_features``: per-layer tokens concatenated along D)."""
    return extract_features(model, [x[0].permute(1, 2, 0).cpu().numpy()], layers=layers, device=model.device)


def compare_figure(image, original, finetuned, depth_probes: Mapping[str, DepthProbe] | None = None, *,
                   short_side: int = 448, max_side: int = 1344, panel_height: int | None = 320,
                   names: tuple[str, str] = ("original", "fine-tuned"),
                   probe_layers: Mapping[str, Sequence[int] | None] | None = None,
                   title: str | None = None) -> np.ndarray:
    """Side-by-side panels [H, W, 3] uint8: image | PCA original | PCA fine-tuned | depth of each probe,
    each titled, ``title`` (the file, the models) above them.

    image          [H, W, 3] uint8 or float in [0, 1], any size
    original, finetuned  Backbones (``.prepare``, ``.features``, ``.patch_size``) with the same patch size
    depth_probes   optional {"original" | "finetuned" | "concat": probe}; their maps share one colour scale.
                   "concat" reads ``fit3d.models.ConcatFeatures(original, finetuned)`` tokens (patch tokens
                   original first, [CLS] of the original), as ``fit3d probe --features concat``.
    probe_layers   optional {source: backbone layers} a probe was trained on (``fit3d probe --layers``)
    panel_height   display height of each panel (None: the model input height)
    """
    if original.patch_size != finetuned.patch_size:
        raise ValueError(f"compare_figure: patch sizes differ ({original.patch_size} vs {finetuned.patch_size})")
    x = prepare_image(image, original, short_side, max_side)                # [1, 3, H, W]
    H, W = x.shape[-2:]
    po, co = original.features(x)
    pf, cf = finetuned.features(x)
    for name, f in zip(names, (po, pf)):
        if not bool(torch.isfinite(f).all()):
            raise NonFiniteError(f"the {name} backbone's features of this image hold NaN or inf (weights or input "
                                 f"out of range); no picture can be drawn from them")
    depths = {}
    for source, probe in (depth_probes or {}).items():
        layers = (probe_layers or {}).get(source)
        if source == "original":
            patch, cls = (po, co) if layers is None else probe_features(original, x, layers)
        elif source == "finetuned":
            patch, cls = (pf, cf) if layers is None else probe_features(finetuned, x, layers)
        elif source == "concat":
            patch, cls = probe_features(ConcatFeatures(original, finetuned), x, layers)
        else:
            raise ValueError(f"compare_figure: depth probe source {source!r} is not one of {FEATURE_SOURCES}")
        depths[f"depth: {dict(original=names[0], finetuned=names[1]).get(source, source)}"] = \
            _depth_of(probe, patch, cls, (H, W))
    fig = comparison_figure(x[0].permute(1, 2, 0).cpu().numpy(), {names[0]: po[0], names[1]: pf[0]}, depths,
                            panel_height=panel_height)
    return titled(fig, title, 16, max_lines=3) if title else fig


def figure_title(image_name: str, backbone: str, finetuned_dir: str) -> str:
    """What a compare figure shows: the file, the models and the picture."""
    return (f"{image_name}: {backbone} original vs fine-tuned ({Path(finetuned_dir).name}), PCA of patch "
            f"features (one basis)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", type=Path, help="image files (any size) or folders of images")
    add_config_arguments(parser, CompareConfig)


def find_images(paths) -> list[Path]:
    """Image files among ``paths``, folders expanded (sorted); ``SceneError`` for a missing path."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SceneError(f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise SceneError(f"{p}: no such image or folder")
    return out


def load_models(cfg: CompareConfig):
    """(original, fine-tuned) Backbones from ``cfg.finetuned``; ``backbone`` / ``model_path`` override the
    original model recorded in the folder."""
    device = str(resolve_device(cfg.device))
    original, finetuned = load_finetuned(cfg.finetuned, device=device)
    if cfg.backbone or cfg.model_path:
        name = cfg.backbone or read_manifest(cfg.finetuned)["backbone"]
        original = load_backbone(name, model_path=cfg.model_path or None, device=device)
        original.requires_grad_(False)
    return original, finetuned


def find_depth_heads(paths) -> list[Path]:
    """Depth-head files among ``paths``: files as given, folders expanded to ``heads/*.pt`` (or ``*.pt``
    when the folder is a heads folder itself); seg heads in folders are skipped by the loader."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted((p / HEADS_DIR).glob("*.pt")) or sorted(p.glob("*.pt"))
            if not found:
                raise ModelNotFoundError(f"{p}: no probe heads ({HEADS_DIR}/*.pt); run `fit3d probe --task depth "
                                         f"--out {p}` first, or pass a head file")
            out += found
        else:
            raise ModelNotFoundError(f"{p}: no such depth probe folder or head file")
    return out


def load_depth_probes(paths, original, finetuned, finetuned_dir: str = "", device: str = "cpu"):
    """({source: probe callable}, {source: layers}, [head metas]) for ``compare_figure``.

    Each head's recorded feature width is checked against the loaded backbones (the width of its source
    times its number of layers); a mismatch raises ``ModelNotFoundError`` naming the head file.
    """
    files = find_depth_heads(paths)
    probes, layers, metas = {}, {}, []
    for f in files:
        head, meta = load_head(f, device=device)
        if meta["type"] != "depth":
            if f in map(Path, paths):
                raise ModelNotFoundError(f"{f}: a {meta['type']} probe head, not a depth probe")
            continue
        src = meta.get("source") or {}
        kind = src.get("kind")
        if kind not in FEATURE_SOURCES:
            raise ModelNotFoundError(f"{f}: unknown feature source {kind!r} in the head's meta")
        if kind in probes:
            raise ModelNotFoundError(f"{f}: a second depth probe on '{kind}' features (one per source)")
        n = len(src.get("layers") or []) or 1
        d_o, d_f = original.embed_dim, finetuned.embed_dim
        want = tuple(n * d for d in {"original": (d_o, d_o), "finetuned": (d_f, d_f), "concat": (d_o + d_f, d_o)}[kind])
        if (meta["patch_dim"], meta["cls_dim"]) != want:
            raise ModelNotFoundError(f"{f}: head reads '{kind}' features of width {meta['patch_dim']} (+ [CLS] "
                                     f"{meta['cls_dim']}) but these backbones give {want[0]} (+ {want[1]})")
        ft = src.get("finetuned_dir")
        if kind != "original" and ft and finetuned_dir and Path(ft).resolve() != Path(finetuned_dir).resolve():
            print(f"warning: {f} was trained on features of {ft}, shown here on {finetuned_dir}", file=sys.stderr)

        def probe(patch, cls, size, head=head):
            return head(patch.to(device), cls.to(device), size)

        probes[kind], layers[kind] = probe, src.get("layers")
        metas.append({**meta, "path": str(f)})
    if not probes:
        raise ModelNotFoundError(f"no depth probe heads in {', '.join(map(str, paths))}")
    order = {k: i for i, k in enumerate(FEATURE_SOURCES)}
    probes = dict(sorted(probes.items(), key=lambda kv: order[kv[0]]))
    return probes, layers, metas


def scene_pair(scene_dir, names: list[str]):
    """([view a, view b], scene name) of a posed scene with depth: the named pair, or
    :func:`fit3d.probe.corr_figure.pick_pair`'s. ``SceneError`` for a scene without depth or unknown names."""
    from fit3d.data import read_scene
    from fit3d.probe.corr_figure import pick_pair

    scene = read_scene(scene_dir)
    if any(v.depth is None for v in scene.views):
        raise SceneError(f"--scene {scene_dir}: the correspondence figure needs depth for every view")
    by_name = {v.name: v for v in scene.views}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise SceneError(f"--pair: {', '.join(missing)} not among the views of {scene_dir} "
                             f"(e.g. {', '.join(list(by_name)[:3])})")
        return [by_name[n] for n in names], scene.name
    step = max(1, len(scene.views) // 40)  # pick_pair looks at every pair: at most 40 views
    sub = [v.resized(max(1, v.width // 4), max(1, v.height // 4)) for v in scene.views[::step]]
    i, j = pick_pair(sub)
    return [scene.views[::step][i], scene.views[::step][j]], scene.name


def pair_figure(views, original, finetuned, cfg: CompareConfig, scene_name: str):
    """The correspondence figure of ``views`` (a pair) at the model input size, and {model: right share}."""
    H, W = model_input_size(views[0].height, views[0].width, original.patch_size, cfg.short_side or 448,
                            cfg.max_side)
    a, b = (v.resized(W, H) for v in views)
    x = torch.stack([torch.from_numpy(v.image).permute(2, 0, 1) for v in (a, b)])
    feats = {}
    with torch.inference_mode():
        for name, model in (("original", original), ("fine-tuned", finetuned)):
            p = model.features(model.prepare(x, size=(H, W))).patch.float().cpu()
            feats[name] = (p[0], p[1])
    return correspondence_figure(a, b, feats, W / feats["original"][0].shape[-1], panel_height=cfg.panel_height,
                                 title=f"{scene_name}, views {a.name} -> {b.name}: {original.name} original vs "
                                       f"fine-tuned ({Path(cfg.finetuned).name}) nearest-patch matches, green within "
                                       f"1 patch of the truth (depth + poses)")


def _out_names(images: list[Path]) -> list[str]:
    """``<stem>.png`` per image, made unique when stems repeat."""
    seen: dict[str, int] = {}
    names = []
    for p in images:
        k = seen.get(p.stem, 0)
        seen[p.stem] = k + 1
        names.append(f"{p.stem}.png" if k == 0 else f"{p.stem}_{k}.png")
    return names


def run(args: argparse.Namespace) -> int:
    cfg = from_args(CompareConfig, args)
    cfg.validate()
    if not cfg.finetuned:
        raise SceneError("fit3d compare: --finetuned DIR is required (a `fit3d finetune` output folder)")
    if not args.images and not cfg.scene:
        raise SceneError("fit3d compare: give images (IMG ...) or --scene DIR (or both)")
    if cfg.pair and len(cfg.pair) != 2:
        raise SceneError(f"--pair {' '.join(cfg.pair)}: give two view names")
    images = find_images(args.images)
    guard_output(cfg.out, [*args.images, cfg.finetuned, *cfg.depth_probe, *([cfg.scene] if cfg.scene else []),
                          *model_inputs(cfg.model_path)], command="compare")
    settings = result_settings(cfg)
    check_rerun(Path(cfg.out) / RECORD, settings, "earlier comparison", overwrite=cfg.overwrite)
    pair_views = scene_pair(cfg.scene, cfg.pair) if cfg.scene else None  # read and checked before the models
    original, finetuned = load_models(cfg)
    if pair_views is not None:
        views, name = pair_views
        fig, right = pair_figure(views, original, finetuned, cfg, name)
        save_png(Path(cfg.out) / f"correspondence_{name}.png", fig)
        print(f"correspondence {name} {views[0].name} -> {views[1].name}: right matches " +
              ", ".join(f"{k} {v:.1%}" for k, v in right.items()) + f" -> {Path(cfg.out) / f'correspondence_{name}.png'}")
    probes, layers, short_side = None, None, cfg.short_side or 448
    if cfg.depth_probe:
        probes, layers, metas = load_depth_probes(cfg.depth_probe, original, finetuned, cfg.finetuned,
                                                  str(resolve_device(cfg.device)))
        trained = sorted({min(m["resolution"]) for m in metas if m.get("resolution")})
        if not cfg.short_side and trained:
            short_side = trained[0]
        shown = ", ".join(f"{m['source']['label']} ({m['path']})" for m in metas)
        print(f"depth probes: {shown}; model input short side {short_side}")
    out = Path(cfg.out)
    for path, name in zip(tqdm(images, desc="compare", unit="image"), _out_names(images)):
        fig = compare_figure(read_image(path), original, finetuned, probes, short_side=short_side,
                             max_side=cfg.max_side, panel_height=cfg.panel_height, probe_layers=layers,
                             title=figure_title(path.name, original.name, cfg.finetuned))
        save_png(out / name, fig)
    write_json(out / RECORD, {"settings": settings, "images": [str(p) for p in images]})
    if images:
        print(f"wrote {len(images)} figure(s) to {out}")
    return 0
