"""The viser server of ``fit3d view``: lifted scenes as Gaussian splats, colour modes, training cameras and
(with a fine-tuned folder) the original-vs-fine-tuned patch-similarity panel.

Everything drawn is computed by the pure functions of :mod:`fit3d.view.splats`, :mod:`fit3d.view.cameras`
and :mod:`fit3d.view.patches`; this module wires them to viser's scene, GUI and click events. viser is
imported here only (the optional extra ``fit3d[view]``).
"""

from __future__ import annotations

import socket
import threading
from typing import Sequence

import numpy as np

from fit3d.errors import Fit3DError
from fit3d.view.cameras import look_at_point, start_position, up_direction
from fit3d.view.patches import similarity_panel
from fit3d.view.scenes import ViewScene, click_target
from fit3d.view.splats import basis_colors, fit_feature_pca, similarity_colors

MODES = ("RGB", "PCA", "Similarity")
NO_QUERY = np.array([0.6, 0.6, 0.6], np.float32)  # similarity mode before any click
START_BACK = 0.5  # the view opens this share of the first camera's median depth behind it


def import_viser():
    """The viser module, or a ``Fit3DError`` saying how to install the viewer."""
    try:
        import viser
    except ModuleNotFoundError:
        raise Fit3DError("fit3d view needs the optional viewer package: pip install 'fit3d[view]' (viser)") from None
    return viser


def check_port(host: str, port: int) -> None:
    """``Fit3DError`` when ``port`` cannot be listened on at ``host`` (in use, or not allowed); viser would
    otherwise move to another port silently."""
    if not 1 <= port <= 65535:
        raise Fit3DError(f"--port {port}: not a TCP port (1-65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise Fit3DError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}); the port is "
                             f"probably in use: pass another --port") from None


def scene_extent(scene: ViewScene) -> float:
    """Size of the scene: the diagonal of the 5-95th percentile box of its Gaussian centres."""
    c = scene.splats.centers
    if len(c) == 0:
        return 1.0
    lo, hi = np.percentile(c, [5, 95], axis=0)
    return float(max(np.linalg.norm(hi - lo), 1e-3))


class Viewer:
    """A running viewer. ``models`` = (original, fine-tuned) backbones enable the similarity panel."""

    def __init__(self, scenes: Sequence[ViewScene], *, host: str = "127.0.0.1", port: int = 8080,
                 models=None, model_names: tuple[str, str] = ("original", "fine-tuned"), short_side: int = 448,
                 shared_pca: bool = False):
        viser = import_viser()
        check_port(host, port)
        self.scenes, self.models, self.model_names, self.short_side = list(scenes), models, model_names, short_side
        self.mode, self.shared, self.threshold, self.query = "RGB", shared_pca, 0.5, None
        self.current = 0
        self.at_camera = (0, 0)  # (scene, camera) the view stands at: its frustum is hidden (it fills the view)
        self.lock = threading.RLock()
        self._pca: dict = {}  # PCA bases: "shared", or a scene's index
        self._feats: dict[tuple[int, int], tuple] = {}
        self.server = viser.ViserServer(host=host, port=port, verbose=False, label="fit3d view")
        if self.server.get_port() != port:  # a race with another program since check_port
            self.server.stop()
            raise Fit3DError(f"--port {port}: in use; pass another --port")
        self.host, self.port = host, port
        self._build_scene()
        self._build_gui()
        self.refresh()

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::", "::1") else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.stop()

    # ----------------------------------------------------------------------------------------- scene
    def _build_scene(self) -> None:
        sc = self.server.scene
        first = self.scenes[0]
        c2ws = np.array([c for s in self.scenes for c in s.c2ws]) if any(s.c2ws for s in self.scenes) else None
        if c2ws is not None:
            sc.set_up_direction(tuple(float(x) for x in up_direction(c2ws)))
        self.splat_handles, self.frustum_handles, self.frustum_scales = [], [], []
        for i, s in enumerate(self.scenes):
            sp = s.splats
            h = sc.add_gaussian_splats(f"/scene{i}/splats", centers=sp.centers, covariances=sp.covariances,
                                       rgbs=sp.rgbs, opacities=sp.opacities, visible=i == 0)
            self.splat_handles.append(h)
            scale = 0.025 * scene_extent(s)
            self.frustum_scales.append(scale)
            handles = []
            for j, (fr, thumb) in enumerate(zip(s.frustums, s.thumbnails)):
                fh = sc.add_camera_frustum(f"/scene{i}/cameras/{j:04d}", fov=fr.fov, aspect=fr.aspect, scale=scale,
                                           image=thumb, wxyz=fr.wxyz, position=fr.position,
                                           visible=i == 0 and (i, j) != self.at_camera,
                                           thickness=scale * 0.03, color=(40, 90, 200))
                handles.append(fh)
            self.frustum_handles.append(handles)
        self.marker = None
        sc.on_click()(self._on_click)  # one handler: which of splats / camera images the ray hits first
        if first.c2ws:  # start behind the first training camera (where its taker stood), looking at what it sees
            cam = self.server.initial_camera
            target = look_at_point(first.c2ws[0], first.splats.centers)
            sp = first.splats
            cam.position = tuple(start_position(first.c2ws[0], target, sp.centers, sp.opacities, sp.covariances,
                                                back=START_BACK))
            cam.look_at = tuple(target)
            cam.fov = float(first.frustums[0].fov)
            if c2ws is not None:
                cam.up = tuple(float(x) for x in up_direction(c2ws))

    # ------------------------------------------------------------------------------------------- GUI
    def _build_gui(self) -> None:
        gui = self.server.gui
        self.info = gui.add_markdown(self._info())
        if len(self.scenes) > 1:
            self.scene_dd = gui.add_dropdown("Scene", tuple(s.name for s in self.scenes), initial_value=self.scenes[0].name)
            self.scene_dd.on_update(lambda _: self.show_scene([s.name for s in self.scenes].index(self.scene_dd.value)))
            self.shared_cb = gui.add_checkbox("Shared PCA basis", self.shared,
                                              hint="one PCA basis for all scenes: a colour is one feature everywhere")
            self.shared_cb.on_update(lambda _: self.set_shared(self.shared_cb.value))
        self.mode_buttons = gui.add_button_group("Colour", MODES)
        self.mode_buttons.on_click(lambda _: self.set_mode(self.mode_buttons.value))
        self.threshold_slider = gui.add_slider("Similarity threshold", 0.0, 1.0, 0.01, self.threshold,
                                               hint="Gaussians less similar than this to the clicked one are grey")
        self.threshold_slider.on_update(lambda _: self.set_threshold(self.threshold_slider.value))
        self.cameras_cb = gui.add_checkbox("Show training cameras", True)
        self.cameras_cb.on_update(lambda _: self.show_scene(self.current))
        self.status = gui.add_markdown("Click the scene: similarity of every Gaussian to the clicked one. "
                                       "Click a camera: fly there (the camera you stand at is not drawn).")
        self.panel = None
        if self.models is not None and any(s.images for s in self.scenes):
            with gui.add_folder("Original vs fine-tuned"):
                s = self.scenes[0]
                self.image_dd = gui.add_dropdown("Image", tuple(f.name for f in s.frustums) or ("-",))
                w, h = (s.frustums[0].width, s.frustums[0].height) if s.frustums else (1, 1)
                self.px = gui.add_slider("Point x", 0, w - 1, 1, w // 2)
                self.py = gui.add_slider("Point y", 0, h - 1, 1, h // 2)
                gui.add_markdown("Or click a camera's image: the point where you click.")
                self.panel = gui.add_image(np.full((60, 200, 3), 255, np.uint8), label="patch similarity")
            for el in (self.image_dd, self.px, self.py):
                el.on_update(lambda _: self.update_panel())

    def _info(self) -> str:
        s = self.scenes[self.current]
        return (f"**{s.name}** ({s.backbone or 'backbone ?'}): {s.splats.describe()}, "
                f"{len(s.frustums)} training cameras. Colour: **{self.mode}**")

    # ------------------------------------------------------------------------------------- actions
    def colors(self, i: int) -> np.ndarray:
        """[N, 3] colours of scene ``i`` in the current mode."""
        sp = self.scenes[i].splats
        if self.mode == "PCA":  # bases fitted when first needed: the shown scene's, or the shared one
            key = "shared" if self.shared else i
            if key not in self._pca:
                self._pca[key] = fit_feature_pca([s.splats for s in self.scenes] if self.shared else [sp])
            return basis_colors(self._pca[key], sp)
        if self.mode == "Similarity":
            if self.query is None:
                return np.broadcast_to(NO_QUERY, sp.rgbs.shape)
            return similarity_colors(sp.cosine_to(self.query), self.threshold)
        return sp.rgbs

    def refresh(self) -> None:
        with self.lock:
            with self.server.atomic():
                self.splat_handles[self.current].rgbs = self.colors(self.current)  # others: when shown
            self.info.content = self._info()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.refresh()

    def set_shared(self, shared: bool) -> None:
        self.shared = bool(shared)
        if self.mode == "PCA":
            self.refresh()

    def set_threshold(self, value: float) -> None:
        self.threshold = float(value)
        if self.mode == "Similarity":
            self.refresh()

    def show_scene(self, i: int) -> None:
        with self.lock:
            self.current = i
            for k, h in enumerate(self.splat_handles):
                h.visible = k == i
                for j, fh in enumerate(self.frustum_handles[k]):
                    fh.visible = k == i and self.cameras_cb.value and (k, j) != self.at_camera
            if self.panel is not None and self.scenes[i].frustums:
                fr = self.scenes[i].frustums[0]
                self.image_dd.options = tuple(f.name for f in self.scenes[i].frustums)
                self.px.max, self.py.max = fr.width - 1, fr.height - 1
        self.refresh()

    def click(self, origin, direction):
        """Act on a click ray in the shown scene: a Gaussian becomes the similarity query, a camera's image
        selects that camera (and the clicked point) for the similarity panel. Returns the ``Click``."""
        i = self.current
        hidden = {self.at_camera[1]} if self.at_camera[0] == i else set()
        hit = click_target(self.scenes[i], self.frustum_scales[i], origin, direction, self.cameras_cb.value, hidden)
        if hit is None:
            self.status.content = "Nothing under the click; click a Gaussian or a camera's image."
        elif hit.kind == "gaussian":
            self.pick(i, hit.index)
        else:
            self.select_camera(i, hit.index, hit.point)
        return hit

    def pick(self, i: int, k: int) -> None:
        """Make Gaussian ``k`` of scene ``i`` the similarity query and switch to similarity colours."""
        sp = self.scenes[i].splats
        self.query = sp.decoded(np.array([k]))[0]
        self.mode = "Similarity"
        r = 0.01 * scene_extent(self.scenes[i])
        self.marker = self.server.scene.add_icosphere("/picked", radius=r, color=(0, 255, 255),
                                                      position=tuple(sp.centers[k]))
        self.status.content = (f"Similarity to Gaussian {int(sp.index[k])} of {self.scenes[i].name} at "
                               f"({', '.join(f'{x:.2f}' for x in sp.centers[k])}).")
        self.refresh()

    def select_camera(self, i: int, j: int, point: tuple[float, float] | None) -> None:
        """Camera ``j`` of scene ``i`` was clicked (at ``point`` of its image): show it in the panel."""
        fr = self.scenes[i].frustums[j]
        self.status.content = f"Camera {fr.name}" + (f", point ({point[0]:.0f}, {point[1]:.0f})" if point else "")
        if self.panel is not None:
            with self.server.atomic():
                self.image_dd.value = fr.name
                if point is not None:
                    self.px.value, self.py.value = int(point[0]), int(point[1])
            self.update_panel()

    def fly_to(self, client, i: int, j: int) -> None:
        """Move ``client``'s view to camera ``j`` of scene ``i`` (whose frustum is then hidden)."""
        fr = self.scenes[i].frustums[j]
        client.camera.wxyz = fr.wxyz
        client.camera.position = fr.position
        self.at_camera = (i, j)
        self.show_scene(self.current)

    def _on_click(self, event) -> None:
        hit = self.click(event.ray_origin, event.ray_direction)
        if hit is not None and hit.kind == "camera":
            self.fly_to(event.client, self.current, hit.index)

    # --------------------------------------------------------------------------- similarity panel
    def view_features(self, i: int, j: int):
        """(model-input image [H', W', 3] float, {name: [D, h, w]}) of camera ``j`` of scene ``i``, cached."""
        if (i, j) not in self._feats:
            import torch

            from fit3d.compare import prepare_image

            original, finetuned = self.models
            x = prepare_image(self.scenes[i].images[j], original, self.short_side)
            with torch.inference_mode():
                feats = {self.model_names[0]: original.features(x)[0][0].float().cpu(),
                         self.model_names[1]: finetuned.features(x)[0][0].float().cpu()}
            self._feats[(i, j)] = (x[0].permute(1, 2, 0).cpu().numpy(), feats)
        return self._feats[(i, j)]

    def panel_image(self, i: int, j: int, point: tuple[float, float]) -> np.ndarray:
        """The similarity panel of camera ``j`` of scene ``i`` at ``point`` (pixels of the lift image)."""
        img, feats = self.view_features(i, j)
        fr = self.scenes[i].frustums[j]
        sx, sy = img.shape[1] / fr.width, img.shape[0] / fr.height
        return similarity_panel(img, feats, ((point[0] + 0.5) * sx, (point[1] + 0.5) * sy), panel_height=180,
                                title=fr.name, vertical=True)

    def update_panel(self) -> None:
        if self.panel is None:
            return
        s = self.scenes[self.current]
        names = [f.name for f in s.frustums]
        if self.image_dd.value not in names:
            return
        with self.lock:
            self.panel.image = self.panel_image(self.current, names.index(self.image_dd.value),
                                                (self.px.value, self.py.value))
