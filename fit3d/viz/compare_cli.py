"""``fit3d compare IMG [IMG ...] --finetuned DIR --out DIR``: PCA pictures of original vs fine-tuned features.

One PNG per image (``OUT/<image stem>.png``): the image, PCA of the original backbone's features and of
the fine-tuned one's, coloured with one PCA basis fitted on both. Folders given as IMG are searched for
images (non-recursively).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fit3d.config import add_arguments as add_config_arguments
from fit3d.config import from_args
from fit3d.errors import SceneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class CompareConfig:
    finetuned: str = field(default="", metadata={"help": "a `fit3d finetune` output folder (fit3d.json + model/)"})
    out: str = field(default="compare", metadata={"help": "folder for the PNG figures"})
    backbone: str = field(default="", metadata={"help": "registered name of the original backbone "
                                                        "(default: the one in the fine-tuned folder's fit3d.json)"})
    model_path: str = field(default="", metadata={"help": "local folder / hub id of the original weights "
                                                          "(default: the path in fit3d.json, FIT3D_MODEL_PATH, the hub)"})
    short_side: int = field(default=448, metadata={"help": "model input: shorter image side, rounded to the patch"})
    max_side: int = field(default=1344, metadata={"help": "model input: cap on the longer side"})
    panel_height: int = field(default=320, metadata={"help": "display height of each panel in pixels"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | auto"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="image files (any size) or folders of images")
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


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_models(cfg: CompareConfig):
    """(original, fine-tuned) Backbones from ``cfg.finetuned``; ``backbone`` / ``model_path`` override the
    original model recorded in the folder."""
    from fit3d.finetune.assembled import load_finetuned, read_manifest
    from fit3d.models import load_backbone

    device = _device(cfg.device)
    original, finetuned = load_finetuned(cfg.finetuned, device=device)
    if cfg.backbone or cfg.model_path:
        name = cfg.backbone or read_manifest(cfg.finetuned)["backbone"]
        original = load_backbone(name, model_path=cfg.model_path or None, device=device)
        original.requires_grad_(False)
    return original, finetuned


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
    from fit3d.viz.compare import compare_figure
    from fit3d.viz.images import read_image, save_png

    cfg = from_args(CompareConfig, args)
    if not cfg.finetuned:
        raise SceneError("fit3d compare: --finetuned DIR is required (a `fit3d finetune` output folder)")
    images = find_images(args.images)
    original, finetuned = load_models(cfg)
    out = Path(cfg.out)
    for path, name in zip(tqdm(images, desc="compare", unit="image"), _out_names(images)):
        fig = compare_figure(read_image(path), original, finetuned, short_side=cfg.short_side,
                             max_side=cfg.max_side, panel_height=cfg.panel_height)
        save_png(out / name, fig)
    print(f"wrote {len(images)} figure(s) to {out}")
    return 0
