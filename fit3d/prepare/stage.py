"""``prepare_scene``: a folder of photos or a video -> a posed scene in COLMAP's layout.

Phases, each with a progress bar, each resumable (an interrupted run continues where it stopped):

1. images    photos: headers checked (unreadable files, mixed cameras), upright working copies; video:
             frames sampled by time and sharpness (``fit3d.prepare.video``)
2. features  SIFT, one shared camera when one camera took every image
3. matching  sequential pairs for a video, every pair for a photo set; then the overlap check: images
             that no chain of verified matches links to the largest group cannot register, so too small a
             group stops here, before mapping
4. mapping   COLMAP's incremental mapper; the largest reconstruction is kept, images it left out are named
5. undistort the kept model and its images undistorted to PINHOLE

Bad input stops before the costly phases with a ``SceneError`` naming it: an unreadable video or image,
too few images, mixed cameras, images that do not overlap (how many could register). The output is
checked by reading it back with ``fit3d.data.read_scene``. ``prepare.json`` (written last) records the
settings, the input's fingerprint, each image's source, what registered and the time per phase; a rerun
with the same settings returns it, one with other settings or another input stops naming the differences.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from fit3d.clock import Clock
from fit3d.errors import SceneError
from fit3d.guard import LOCK_FILE, MARKER
from fit3d.io import atomic_dir, read_json_dict, write_json
import fit3d.prepare.photos as photo_io
import fit3d.prepare.sfm as sfm
import fit3d.prepare.video as video_io
from fit3d.prepare.config import PrepareConfig
from fit3d.prepare.pairs import components, exhaustive_pairs, sequential_pairs
from fit3d.run import Interrupt, check_resume, commit_staged, recover_staged, result_settings, staged_dir

RECORD = "prepare.json"
WORK = "work"
_SETTINGS, _INPUT, _MAPPING = "settings.json", "input.json", "mapping.json"


def input_kind(path: Path) -> str:
    """"photos" (a folder) or "video" (any other file); ``SceneError`` for a missing path or one image."""
    if not path.exists():
        raise SceneError(f"{path}: input does not exist")
    if path.is_dir():
        return "photos"
    if photo_io.is_image(path):
        raise SceneError(f"{path}: too few images: the input is one image; pass the folder of photos (at least "
                         f"{PrepareConfig.min_images}) or a video")
    return "video"


def fingerprint(path: Path, kind: str) -> str:
    """A digest of the input's file names and sizes: a rerun on changed input never reuses the old result."""
    h = hashlib.sha1()
    files = photo_io.list_photos(path) if kind == "photos" else [path]
    for f in files:
        h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def recorded_settings(src: Path, kind: str, cfg: PrepareConfig) -> dict:
    return {"input": str(src.resolve()), "input_kind": kind, "input_files": fingerprint(src, kind),
            **result_settings(cfg)}


def check_output(src: Path, out: Path) -> None:
    """The output may neither be the input nor hold it (a rerun replaces parts of the output); an existing
    folder must be empty (the output guard's marker and lock aside) or an earlier ``fit3d prepare`` output."""
    s, o = src.resolve(), out.resolve()
    if o == s or o in s.parents:
        raise SceneError(f"--out {out}: the output folder would hold the input {src}; choose another --out")
    if out.exists() and not out.is_dir():
        raise SceneError(f"--out {out}: exists and is not a folder")
    held = [e for e in out.iterdir() if e.name not in (MARKER, LOCK_FILE)] if out.is_dir() else []
    if held and not (out / WORK / _SETTINGS).is_file():
        raise SceneError(f"--out {out}: the folder exists, holds files and is not a fit3d prepare output "
                         f"(no {WORK}/{_SETTINGS}); choose another --out")


def _bar(cfg: PrepareConfig, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"prepare: {desc}", unit="", disable=not cfg.progress, leave=False,
                file=sys.stderr, dynamic_ncols=True)


def prepare_scene(input, out, cfg: PrepareConfig | None = None, overwrite: bool = False) -> dict:
    """Turn the photo folder or video ``input`` into a scene at ``out``; returns the record (``prepare.json``).

    ``out`` gets ``images/`` + ``sparse/0/`` (undistorted PINHOLE model with the sparse points, read by
    ``fit3d.data.read_scene``), ``prepare.json`` and ``work/`` (COLMAP's database, the working images and the
    raw reconstruction: what a resumed run continues from). ``overwrite`` rebuilds a finished scene in a
    sibling folder and swaps it in only once complete."""
    cfg = cfg or PrepareConfig()
    cfg.validate()
    src, out = Path(input), Path(out)
    kind = input_kind(src)
    check_output(src, out)
    settings = recorded_settings(src, kind, cfg)
    recover_staged(out)
    if (out / RECORD).is_file() and not overwrite:
        record = read_json_dict(out / RECORD, "prepared scene record")
        check_resume(record.get("settings"), settings, "prepared scene", out)
        record["reused"] = True
        return record
    plan = _inspect(src, kind, cfg)  # bad input fails here, before anything is written
    dst = out
    if overwrite and out.exists():
        dst = staged_dir(out)
        if (dst / WORK / _SETTINGS).is_file():
            old = read_json_dict(dst / WORK / _SETTINGS, "prepare settings").get("settings")
            if old != settings:
                shutil.rmtree(dst)  # an earlier interrupted overwrite with other settings: our own folder
        elif dst.exists():
            shutil.rmtree(dst)
    record = _prepare(src, kind, plan, dst, cfg, settings)
    if dst != out:
        commit_staged(dst, out)
    return record


def _start_work(dst: Path, settings: dict) -> Path:
    work = dst / WORK
    if (work / _SETTINGS).is_file():
        old = read_json_dict(work / _SETTINGS, "prepare settings").get("settings")
        check_resume(old, settings, "unfinished prepare", dst)
    else:
        work.mkdir(parents=True, exist_ok=True)
        write_json(work / _SETTINGS, {"settings": settings})
    return work


def _prepare(src: Path, kind: str, plan: dict, dst: Path, cfg: PrepareConfig, settings: dict) -> dict:
    work = _start_work(dst, settings)
    clock = Clock()
    with Interrupt() as intr, sfm.quiet_colmap():
        stop = lambda: intr.requested is not None  # noqa: E731

        def halt(phase: str) -> None:
            if stop():
                intr.stop(f"prepare ({phase})", work)

        with clock.stage("images"):
            images = _images(src, kind, plan, work, cfg, halt)
        names = [im["name"] for im in images["images"]]
        image_dir = work / "images"
        db = work / "database.db"
        with clock.stage("features"), _bar(cfg, len(names), "features") as bar:
            sfm.extract(db, image_dir, names, single_camera=images["camera"] == "single",
                        camera_model=cfg.camera_model, sift_max_size=cfg.sift_max_size,
                        max_features=cfg.max_features, threads=cfg.threads, progress=bar.update, should_stop=stop)
        halt("features")
        matching = _matching_mode(kind, len(names), cfg)
        pairs = exhaustive_pairs(len(names)) if matching == "exhaustive" else \
            sequential_pairs(len(names), cfg.sequential_overlap)
        with clock.stage("matching"), _bar(cfg, len(pairs), f"matching ({matching})") as bar:
            sfm.match(db, names, pairs, work / "pairs.txt", threads=cfg.threads, progress=bar.update, should_stop=stop)
        halt("matching")
        _check_overlap(src, names, sfm.verified_pairs(db, names), cfg)
        with clock.stage("mapping"):
            mapping = _mapping(work, db, image_dir, names, cfg, stop)
        halt("mapping")
        _check_registered(src, names, mapping, cfg)
        with clock.stage("undistort"), _bar(cfg, 1, "undistort") as bar:
            _undistort(work, dst, mapping, cfg)
            bar.update(1)
        _check_readable(dst, mapping)
    timings = {k: {"wall_s": round(clock.wall[k], 2), "cpu_s": round(clock.cpu[k], 2)} for k in clock.wall}
    timings["total"] = {k: round(sum(v[k] for v in timings.values()), 2) for k in ("wall_s", "cpu_s")}
    record = {
        "format": "fit3d-prepare/1",
        "settings": settings,
        "input": str(src), "input_kind": kind, "matching": matching, "camera": images["camera"],
        "pairs": len(pairs),
        "images": len(names), **mapping["stats"],
        "dropped": mapping["dropped"],
        "sources": images["images"],
        "timings": timings,
        "pycolmap": _pycolmap_version(),
    }
    write_json(dst / RECORD, record)
    return record


def _pycolmap_version() -> str:
    import pycolmap

    return str(pycolmap.__version__)


def _matching_mode(kind: str, n: int, cfg: PrepareConfig) -> str:
    if cfg.matching != "auto":
        return cfg.matching
    return "sequential" if kind == "video" or n > cfg.exhaustive_max else "exhaustive"


def _inspect(src: Path, kind: str, cfg: PrepareConfig) -> dict:
    """Check the input without writing anything: the video decodes, enough images, photos readable (headers)
    and from one camera (unless ``--camera per-image``). Returns what :func:`_images` needs."""
    if kind == "video":
        info = video_io.probe(src)
        if min(info.frames, cfg.max_frames) < cfg.min_images:
            raise SceneError(f"{src}: too few images: the video has {info.frames} frame(s); structure from motion "
                             f"needs at least --min-images {cfg.min_images}")
        return {"video": info, "camera": "single" if cfg.camera in ("auto", "single") else "per-image"}
    files = photo_io.list_photos(src)
    if len(files) < cfg.min_images:
        raise SceneError(f"{src}: too few images: {len(files)} photo(s) ({', '.join(photo_io.IMAGE_SUFFIXES)}); "
                         f"structure from motion needs at least --min-images {cfg.min_images}")
    if len(files) > cfg.max_frames:  # evenly thinned in name order
        keep = sorted({round(i * (len(files) - 1) / (cfg.max_frames - 1)) for i in range(cfg.max_frames)})
        print(f"prepare: {len(files)} photos, keeping {len(keep)} evenly spaced ones (--max-frames "
              f"{cfg.max_frames})", file=sys.stderr)
        files = [files[i] for i in keep]
    infos = [photo_io.probe(f) for f in files]  # headers only: every file checked before any decoding
    if cfg.camera != "per-image":
        photo_io.check_one_camera(infos, src, f"--camera {cfg.camera}")
    return {"photos": infos, "camera": "single" if cfg.camera != "per-image" else "per-image"}


def _images(src: Path, kind: str, plan: dict, work: Path, cfg: PrepareConfig, halt) -> dict:
    """Phase 1: the working images in ``work/images`` and ``work/input.json`` describing them."""
    done = work / _INPUT
    if done.is_file():
        return read_json_dict(done, "prepare input record", keys=("images", "camera"))
    image_dir = work / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if kind == "video":
        info = plan["video"]
        n = len(video_io.windows(info.frames, cfg.max_frames))
        with _bar(cfg, n, "frames (time x sharpness)") as bar:
            frames = video_io.sample_frames(src, info, cfg.max_frames, cfg.max_size, image_dir, bar.update)
        if len(frames) < cfg.min_images:
            raise SceneError(f"{src}: too few images: only {len(frames)} frame(s) decode; structure from motion "
                             f"needs at least --min-images {cfg.min_images}")
        images = [{"name": f.name, "source": src.name, "frame": f.index, "time_s": round(f.time, 3),
                   "sharpness": round(f.sharpness, 2)} for f in frames]
        record = {"kind": kind, "frames_in_video": info.frames, "fps": info.fps, "video_size": list(info.size),
                  "images": images, "camera": plan["camera"]}
    else:
        images = []
        with _bar(cfg, len(plan["photos"]), "images") as bar:
            for info in plan["photos"]:
                halt("images")
                size = photo_io.write_copy(info, image_dir / info.path.name, cfg.max_size)
                images.append({"name": info.path.name, "source": info.path.name, "size": list(size),
                               "camera": info.describe_camera()})
                bar.update(1)
        record = {"kind": kind, "images": images, "camera": plan["camera"],
                  "camera_groups": photo_io.camera_groups(plan["photos"])}
    write_json(done, record)
    return record


def _check_overlap(src: Path, names: list[str], edges: list[tuple[int, int]], cfg: PrepareConfig) -> None:
    """Stop before mapping when the largest group of images linked by verified matches is too small."""
    groups = components(len(names), edges)
    largest = len(groups[0]) if edges else 1
    if largest < cfg.min_images or largest < cfg.min_registered * len(names):
        left = sorted(set(range(len(names))) - set(groups[0])) if edges else list(range(len(names)))
        raise SceneError(
            f"{src}: the images do not overlap: at most {largest if edges else 0} of {len(names)} images could "
            f"register (the largest group linked by {sfm.MIN_INLIERS}+ verified matches; {len(edges)} matching "
            f"pairs in all); {_names(names, left)} share too few features with it. Photograph the scene with more "
            f"overlap between neighbouring views (or lower --min-registered {cfg.min_registered:g})")


def _names(names: list[str], idx: list[int], k: int = 8) -> str:
    shown = ", ".join(names[i] for i in idx[:k])
    return shown + (f" and {len(idx) - k} more" if len(idx) > k else "")


def _mapping(work: Path, db: Path, image_dir: Path, names: list[str], cfg: PrepareConfig, stop) -> dict:
    """Phase 4: incremental mapping into ``work/sparse/<k>``; the largest model's index, names and stats."""
    import pycolmap

    done = work / _MAPPING
    if done.is_file():
        return read_json_dict(done, "prepare mapping record", keys=("model", "registered", "dropped", "stats"))
    with _bar(cfg, len(names), "mapping (registered images)") as bar, atomic_dir(work / "sparse") as tmp:
        models = sfm.reconstruct(db, image_dir, tmp, seed=cfg.seed, threads=cfg.threads, progress=bar.update,
                                 should_stop=stop)
        if stop():
            return {}
        if not models:
            raise SceneError(f"{work.parent}: structure from motion found no initial image pair: the images do not "
                             f"overlap enough (0 of {len(names)} registered)")
        best = max(models, key=lambda k: (models[k].num_reg_images(), -k))
    rec = pycolmap.Reconstruction(str(work / "sparse" / str(best)))
    registered = sfm.registered_names(rec)
    mapping = {"model": best, "models": len(models), "registered": registered,
               "dropped": sorted(set(names) - set(registered)), "stats": sfm.model_stats(rec)}
    write_json(done, mapping)
    return mapping


def _check_registered(src: Path, names: list[str], mapping: dict, cfg: PrepareConfig) -> None:
    """Too few registered images stop with an error naming the dropped ones; a partial reconstruction is
    reported (stderr) and recorded."""
    reg, dropped = len(mapping["registered"]), mapping["dropped"]
    idx = [names.index(n) for n in dropped]
    if reg < cfg.min_images or reg < cfg.min_registered * len(names):
        raise SceneError(f"{src}: the images do not overlap enough: only {reg} of {len(names)} images registered "
                         f"(--min-registered {cfg.min_registered:g}, --min-images {cfg.min_images}); dropped: "
                         f"{_names(names, idx)}")
    if dropped:
        print(f"prepare: warning: partial reconstruction, {len(dropped)} of {len(names)} images did not register "
              f"and are left out of the scene: {_names(names, idx)}", file=sys.stderr)


def _undistort(work: Path, dst: Path, mapping: dict, cfg: PrepareConfig) -> None:
    """Phase 5: the kept model undistorted into ``dst/images`` + ``dst/sparse/0``."""
    with atomic_dir(work / "undistorted") as tmp:
        sfm.undistort(work / "sparse" / str(mapping["model"]), work / "images", tmp, cfg.threads)
    und = work / "undistorted"
    for name in ("images", "sparse"):  # our own outputs of an interrupted earlier run
        if (dst / name).exists():
            shutil.rmtree(dst / name)
    os.replace(und / "images", dst / "images")
    (dst / "sparse").mkdir()
    os.replace(und / "sparse", dst / "sparse" / "0")
    shutil.rmtree(und)


def _check_readable(dst: Path, mapping: dict) -> None:
    """Read the scene back as fit3d does (one view: the layout, the model and an image)."""
    from fit3d.data.readers import read_scene

    first = str(Path(mapping["registered"][0]).with_suffix(""))
    read_scene(dst, layout="colmap", names=[first], resolution=(64, 64))


def summary_line(out, record: dict) -> str:
    """One line: images registered, mean reprojection error, points, how and how long."""
    t = record["timings"]["total"]
    err = record.get("mean_reprojection_error")
    err_s = "n/a" if err is None else f"{err:.2f} px"
    dropped = f", {len(record['dropped'])} dropped" if record["dropped"] else ""
    return (f"{out}: {record['registered']}/{record['images']} images registered{dropped}, mean reprojection error "
            f"{err_s}, {record['points']} points ({record['input_kind']}, {record['matching']} matching, "
            f"{record['cameras']} camera(s)) in {t['wall_s']:.0f} s ({t['cpu_s']:.0f} CPU s)")
