"""End to end in a real headless browser: ``fit3d view`` on a small lifted scene, opened in Debian's chromium
driven by playwright (its Python package pointed at the system browser, no browser download).

It waits for the canvas, checks the drawn scene is not blank, switches the colour mode to the feature PCA
and checks the picture changes. Outside CI a missing browser or playwright skips with the reason; in CI
(``CI=true``, where ``.ci/run`` installs them) it fails. ``FIT3D_VIEW_SCREENSHOTS=DIR`` keeps the two
screenshots; ``FIT3D_VIEW_SCENE=LIFTED_DIR`` views that scene instead of the test's tiny one (how
``docs/view.png`` was made: docs/view.md)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                 "--ignore-gpu-blocklist", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def need(what: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what}; .ci/run installs it (apt-get install chromium; pip install '.[test,view]')")
    pytest.skip(what)


def chromium() -> str:
    path = os.environ.get("FIT3D_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        need("no chromium on PATH (Debian: apt-get install chromium)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene_area(png: bytes) -> np.ndarray:
    """The 3D view of a screenshot (left of the GUI panel, below the notifications), float RGB."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)
    h, w = img.shape[:2]
    return img[h // 4:, : int(w * 0.6)]


def wait_for(check, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        out = check()
        if out is not None:
            return out
        time.sleep(1.0)
    pytest.fail(f"{what} within {timeout:.0f} s")


@pytest.fixture()
def viewer(view_lifted):
    """``fit3d view`` in a subprocess; yields its URL once it printed it."""
    port = free_port()
    scene = os.environ.get("FIT3D_VIEW_SCENE") or str(view_lifted)
    proc = subprocess.Popen([sys.executable, "-m", "fit3d", "view", scene, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        end = time.time() + 180
        while time.time() < end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"open (http://\S+)", line)
            if m:
                break
        else:
            m = None
        if not m:
            pytest.fail("fit3d view printed no URL:\n" + "".join(lines[-30:]))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_browser_shows_the_scene_and_switches_colours(viewer):
    path = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        need("the playwright Python package is not installed (pip install '.[test]')")
    keep = os.environ.get("FIT3D_VIEW_SCREENSHOTS")
    last = {}  # the latest screenshot, kept for a look when a check fails
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 600})
            page.goto(viewer, timeout=60_000)
            page.wait_for_selector("canvas", timeout=60_000)
            page.get_by_text("Colour:").first.wait_for(timeout=60_000)  # the GUI arrived over the websocket
            note = page.get_by_role("alert").filter(has_text="Software WebGL")
            try:  # swiftshader's notice would cover part of the picture
                note.get_by_role("button").first.click(timeout=10_000)
            except Exception:  # noqa: BLE001 - a browser with GPU shows none
                pass

            def drawn():
                png = last["png"] = page.screenshot()
                a = scene_area(png)
                # not blank: the splats cover most of the view in many colours
                n_colours = len(np.unique((a // 8).astype(np.int32).reshape(-1, 3), axis=0))
                return (png, a) if a.std() > 15 and n_colours > 100 else None

            rgb_png, rgb = wait_for(drawn, 120, "the scene was not drawn (blank canvas)")
            time.sleep(2)  # let progressive sorting settle, then take the reference again
            rgb_png, rgb = wait_for(drawn, 60, "the scene was not drawn (blank canvas)")
            page.get_by_role("button", name="PCA", exact=True).click()
            page.get_by_text("Colour: PCA").first.wait_for(timeout=60_000)

            def changed():
                png = last["png"] = page.screenshot()
                a = scene_area(png)
                return (png, a) if np.abs(a - rgb).mean() > 8 else None

            pca_png, pca = wait_for(changed, 120, "switching the colour mode to PCA did not change the picture")
            assert pca.std() > 15
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                time.sleep(2)
                (Path(keep) / "view_rgb.png").write_bytes(rgb_png)
                (Path(keep) / "view_pca.png").write_bytes(page.screenshot())
        finally:
            if keep and last:
                Path(keep).mkdir(parents=True, exist_ok=True)
                (Path(keep) / "view_last.png").write_bytes(last["png"])
            browser.close()
