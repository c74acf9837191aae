"""A folder of photos as structure-from-motion input: listing, header checks, camera groups, working copies.

Photos are the folder's top-level files with an image suffix, in name order. Headers are read first
(Pillow, no decoding): a file that is no image fails at once, and each photo's upright size and EXIF
camera (make, model, focal length) group the photos by the camera that took them. The working copy of
a photo is upright (EXIF orientation applied: COLMAP and OpenCV would otherwise disagree on the image
size) and at most ``max_size`` pixels on its long side; a photo that needs neither is copied byte for byte.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fit3d.errors import SceneError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_ORIENTATION, _MAKE, _MODEL, _EXIF_IFD, _FOCAL = 0x0112, 0x010F, 0x0110, 0x8769, 0x920A


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_photos(folder: Path) -> list[Path]:
    """The folder's top-level image files, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_file() and is_image(p) and not p.name.startswith(".")),
                  key=lambda p: p.name)


@dataclass(frozen=True)
class PhotoInfo:
    """A photo's header: upright ``size`` (W, H), EXIF ``orientation`` (1 = upright) and ``camera`` (make,
    model, focal length in mm; empty strings where EXIF has none)."""

    path: Path
    size: tuple[int, int]
    orientation: int
    camera: tuple[str, str, str]

    def describe_camera(self) -> str:
        make, model, focal = self.camera
        name = " ".join(s for s in (make, model) if s) or "no EXIF camera"
        return f"{self.size[0]}x{self.size[1]}, {name}" + (f", {focal} mm" if focal else "")


def probe(path: Path) -> PhotoInfo:
    """The header of the photo at ``path``; ``SceneError`` naming it if it is no readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            exif = im.getexif()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SceneError(f"{path}: not a readable image ({e})") from None
    orientation = int(exif.get(_ORIENTATION, 1) or 1)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: the upright image is H x W
        w, h = h, w
    focal = exif.get_ifd(_EXIF_IFD).get(_FOCAL) if exif else None
    clean = lambda v: str(v).strip("\x00 ").strip() if v is not None else ""  # noqa: E731
    focal_s = f"{float(focal):g}" if focal is not None else ""
    return PhotoInfo(path, (w, h), orientation, (clean(exif.get(_MAKE)), clean(exif.get(_MODEL)), focal_s))


def camera_groups(infos: list[PhotoInfo]) -> dict[str, list[str]]:
    """``{camera description: photo names}``: photos of one size and one EXIF camera form one group."""
    groups: dict[str, list[str]] = {}
    for info in infos:
        groups.setdefault(info.describe_camera(), []).append(info.path.name)
    return groups


def check_one_camera(infos: list[PhotoInfo], folder: Path, option: str) -> None:
    """``SceneError`` naming the groups unless every photo comes from one camera at one size."""
    groups = camera_groups(infos)
    if len(groups) <= 1:
        return
    parts = [f"{len(names)} x ({cam}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for cam, names in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    raise SceneError(f"{folder}: mixed cameras: the photos come from {len(groups)} cameras or sizes ({'; '.join(parts)}); "
                     f"{option} wants one camera: prepare one camera's photos at a time, or pass --camera per-image "
                     f"to give each photo its own intrinsics")


def write_copy(info: PhotoInfo, dst: Path, max_size: int) -> tuple[int, int]:
    """Write the upright working copy of ``info.path`` to ``dst`` (long side at most ``max_size``, 0: any);
    the photo is decoded in full, so a truncated file fails here naming it. Returns the copy's (W, H)."""
    from PIL import Image, ImageOps

    from fit3d.io import atomic_path

    try:
        with Image.open(info.path) as im:
            im.load()
            scale = max_size / max(info.size) if max_size and max(info.size) > max_size else 1.0
            if info.orientation == 1 and scale == 1.0:
                with atomic_path(dst) as tmp:
                    shutil.copyfile(info.path, tmp)
                return info.size
            exif = im.getexif()
            up = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError) as e:
        raise SceneError(f"{info.path}: image is unreadable or truncated ({e})") from None
    if scale != 1.0:
        up = up.resize((max(1, round(up.width * scale)), max(1, round(up.height * scale))), Image.Resampling.LANCZOS)
    if _ORIENTATION in exif:
        del exif[_ORIENTATION]
    with atomic_path(dst) as tmp:
        fmt = "JPEG" if dst.suffix.lower() in (".jpg", ".jpeg") else None
        fmt = fmt or Image.registered_extensions().get(dst.suffix.lower(), "PNG")
        kw = {"quality": 95} if fmt == "JPEG" else {}
        up.save(tmp, format=fmt, exif=exif, **kw)  # EXIF kept: COLMAP reads the focal length from it
    return up.size
