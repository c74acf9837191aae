"""Helpers of the reliability suite: a tiny on-disk scene, the CLI run in-process, the checks every case makes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np

W, H = 40, 30
K = np.array([[36.0, 0, 20.0], [0, 34.0, 15.0], [0, 0, 1]])
# a lift that takes about a second: 4x3 tokens of the tiny backbone, a 16x12 render
LIFT_OPTS = ["--method", "optimize", "--iterations", "6", "--width", "16", "--feature-size", "32", "--feature-dim", "4",
             "--init-points", "200", "--max-gaussians", "400", "--pca-views", "0", "--no-progress",
             "--device", "cpu", "--checkpoint-every", "0"]
# FiT3D's recipe: the default preset freezes more blocks than the tiny backbone has
FINETUNE_OPTS = ["--recipe", "fit3d", "--max-steps", "2", "--workers", "0", "--no-progress", "--no-evaluate", "--lr", "1e-3",
                 "--device", "cpu", "--checkpoint-every", "0"]


def write_sevenscenes(path: Path, n: int = 6, seed: int = 0) -> Path:
    """A 7-Scenes folder of ``n`` random 40x30 frames with depth, poses near the identity, one K."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    np.savetxt(path / "camera-intrinsics.txt", K)
    for i in range(n):
        stem = path / f"frame-{i:06d}"
        img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        assert cv2.imwrite(f"{stem}.color.jpg", img)
        assert cv2.imwrite(f"{stem}.depth.png", rng.integers(800, 3000, size=(H, W)).astype(np.uint16))
        c2w = np.eye(4)
        c2w[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * 0.1).as_matrix()
        c2w[:3, 3] = rng.normal(size=3) * 0.2
        np.savetxt(f"{stem}.pose.txt", c2w)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``fit3d ARGV`` in this process: (exit status, stdout, stderr); argparse errors give their status 2."""
    from fit3d.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_clean_error(rc: int, err: str, *names, status: int = 1) -> None:
    """Exit ``status``, no traceback, one ``fit3d: error:`` line (argparse's usage line for status 2)
    that names every one of ``names``."""
    assert rc == status, (rc, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    for n in names:
        assert str(n) in lines[0], (n, lines[0])


def digest(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every file under ``folder`` (to check earlier outputs are intact)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def leftovers(folder: Path) -> list[str]:
    """Temporary / staging names left in ``folder`` and its parent (there should be none)."""
    names = [p.name for d in (folder, folder.parent) if d.exists() for p in d.iterdir()]
    return [n for n in names if n.endswith(".tmp") or n.endswith(".new") or n.endswith(".old")]
