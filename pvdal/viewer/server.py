"""The viewer page (viser): orbit / pan / zoom a camera, the field renders progressively.

Every browser tab gets a render thread: on a camera move it renders a coarse frame at once and
refines it while the camera rests (a newer move abandons the frame between blocks of rays).
The panel: field (when there are several), RGB / depth / opacity, background, samples,
resolution; "snap to a dataset camera" with its ground truth; keyframes -> camera-path JSON.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pvdal.data.frames import SceneData
from pvdal.viewer.camera import (
    c2w_from_viser,
    fov_y,
    frame_size,
    intrinsics,
    look_at_of,
    viser_from_c2w,
)
from pvdal.viewer.camera_path import CameraPath, Keyframe
from pvdal.viewer.render import MODES, Pacer, ViewTarget, picture, render_camera, to_uint8

log = logging.getLogger("pvdal")


@dataclass
class DatasetCamera:
    label: str  # "<split>/<name or index>"
    c2w: np.ndarray  # [3, 4] OpenGL
    K: np.ndarray  # [4]
    hw: tuple[int, int]
    image: torch.Tensor | None  # [H, W, 3] ground truth


def dataset_cameras(data: SceneData | None, limit: int = 300) -> list[DatasetCamera]:
    """Train cameras first (the viewer starts at the first), then val and test."""
    cams: list[DatasetCamera] = []
    for split in ("train", "val", "test") if data is not None else ():
        fr = data.split(split)
        for i in range(len(fr)):
            name = fr.names[i] if i < len(fr.names) else f"{i:03d}"
            img = fr.images[i] if fr.images is not None else None
            cams.append(DatasetCamera(f"{split}/{name}", fr.c2w[i].numpy().astype(np.float64),
                                      fr.intrinsics[i].numpy().astype(np.float64),
                                      (int(fr.hw[i][0]), int(fr.hw[i][1])), img))
    return cams[:limit]


def start_server(host: str, port: int):
    """A viser server on ``host:port``, or the next free port (said in one line)."""
    import viser

    logging.getLogger("websockets").setLevel(logging.WARNING)  # no line per connection
    with contextlib.redirect_stdout(io.StringIO()):  # viser's banner: we print one line
        server = viser.ViserServer(host=host, port=int(port), label="pvdal", verbose=False)
    got = server.get_port()
    if int(port) not in (0, got):
        print(f"pvdal: viewer: port {port} is in use; serving on {got} instead", flush=True)
    return server


class Viewer:
    """The page, its controls and one render thread per connected browser tab."""

    def __init__(self, targets: dict[str, ViewTarget], cameras: list[DatasetCamera],
                 host: str = "127.0.0.1", port: int = 8080, max_res: int = 320,
                 coarse: int = 4, chunk: int = 4096, budget: float = 1.0,
                 out_dir: str | Path = ".", up: np.ndarray | None = None) -> None:
        self.targets, self.cameras, self.chunk = dict(targets), cameras, int(chunk)
        self.coarse, self.out_dir = max(1, int(coarse)), Path(out_dir)
        self.pacer = Pacer(budget)
        self.render = render_camera  # the live viewer swaps in a render process (worker.py)
        self.keyframes: list[Keyframe] = []
        self.frames_rendered, self.last_fps = 0, 0.0
        self._lock = threading.Lock()
        self._views: dict[int, _ClientView] = {}
        self.server = start_server(host, port)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"http://{shown}:{self.server.get_port()}"
        print(f"pvdal: viewer at {self.url}", flush=True)
        self._setup_scene(up)
        self._build_gui(max_res)
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    # --- scene and controls -------------------------------------------------------------------
    def _setup_scene(self, up: np.ndarray | None) -> None:
        if up is None and self.cameras:
            up = np.mean([c.c2w[:3, 1] for c in self.cameras], 0)
        up = np.asarray(up if up is not None else (0.0, 0.0, 1.0), float)
        self.up = up / max(np.linalg.norm(up), 1e-9)
        self.server.scene.set_up_direction(tuple(self.up))
        cam0 = self.cameras[0] if self.cameras else None
        ic = self.server.initial_camera
        if cam0 is not None:
            ic.position, ic.look_at = cam0.c2w[:3, 3], look_at_of(cam0.c2w)
            ic.fov = fov_y(cam0.K[1], cam0.hw[0])
        else:  # no dataset: look at the unit box from outside
            ic.position, ic.look_at, ic.fov = 3.0 * self.up + (0.0, -3.0, 0.0), (0, 0, 0), 0.7
        ic.up = self.up

    def _build_gui(self, max_res: int) -> None:
        gui = self.server.gui
        with gui.add_folder("Render"):
            self.g_field = gui.add_dropdown("field", list(self.targets),
                                            visible=len(self.targets) > 1)
            self.g_mode = gui.add_dropdown("show", list(MODES), initial_value="rgb")
            bg = next(iter(self.targets.values())).background.cpu().tolist()
            self.g_bg = gui.add_rgb("background", tuple(int(round(255 * v)) for v in bg))
            n0 = next(iter(self.targets.values())).n_samples
            self.g_samples = gui.add_slider("samples", 2, max(1024, n0), 1, n0)
            res = min(max(int(max_res), 16), 1024)
            self.g_res = gui.add_slider("resolution", 16, 1024, 8, res,
                                        hint="longest side of the refined frame, pixels")
            self.g_status = gui.add_markdown("waiting for a browser...")
        for h in (self.g_field, self.g_mode, self.g_bg, self.g_samples, self.g_res):
            h.on_update(lambda _: self.poke_all())
        with gui.add_folder("Dataset cameras", visible=bool(self.cameras)):
            self.g_cam = gui.add_dropdown("camera", [c.label for c in self.cameras] or ["-"])
            snap = gui.add_button("snap to camera")
            self.g_gt = gui.add_image(np.zeros((8, 8, 3), np.uint8), label="ground truth",
                                      visible=False)
        snap.on_click(lambda ev: self.snap(ev.client, self.g_cam.value))
        with gui.add_folder("Camera path"):
            add = gui.add_button("add keyframe")
            self.g_fps = gui.add_number("fps", 24, min=1, max=120, step=1)
            self.g_secs = gui.add_number("seconds", 4.0, min=0.1, max=600.0, step=0.1)
            self.g_path = gui.add_text("file", str(self.out_dir / "camera_path.json"))
            save = gui.add_button("save camera path")
            clear = gui.add_button("clear keyframes")
            self.g_keys = gui.add_markdown("0 keyframes")
        add.on_click(lambda ev: self.add_keyframe(ev.client))
        save.on_click(lambda ev: self.save_path(ev.client))
        clear.on_click(lambda _: self._set_keyframes([]))

    # --- state shared by the render threads ---------------------------------------------------
    def target(self) -> ViewTarget:
        with self._lock:
            t = self.targets.get(self.g_field.value) or next(iter(self.targets.values()))
        bg = torch.tensor(self.g_bg.value, dtype=torch.float32) / 255.0
        return t.with_(background=bg, n_samples=int(self.g_samples.value))

    def set_targets(self, targets: dict[str, ViewTarget]) -> None:
        """New fields to show (a training snapshot); every tab re-renders."""
        with self._lock:
            self.targets.update(targets)
        self.poke_all()

    def poke_all(self) -> None:
        for v in list(self._views.values()):
            v.poke()

    def levels(self) -> list[int]:
        full = int(self.g_res.value)
        sides = [full // self.coarse, full // 2, full] if self.coarse >= 4 else [
            full // self.coarse, full]
        return sorted({max(16, s) for s in sides})

    # --- actions ------------------------------------------------------------------------------
    def snap(self, client, label: str) -> None:
        cam = next((c for c in self.cameras if c.label == label), None)
        if cam is None or client is None:
            return
        _, pos = viser_from_c2w(cam.c2w)
        with client.atomic():  # look direction + the camera's own up: its exact orientation
            client.camera.position = pos
            client.camera.look_at = look_at_of(cam.c2w)
            client.camera.up_direction = cam.c2w[:3, 1]
            client.camera.fov = fov_y(cam.K[1], cam.hw[0])
        if cam.image is not None:
            self.g_gt.image, self.g_gt.visible = to_uint8(cam.image), True

    def add_keyframe(self, client) -> None:
        if client is None:
            return
        cam = client.camera
        self._set_keyframes([*self.keyframes, Keyframe(c2w_from_viser(cam.wxyz, cam.position),
                                                       math.degrees(cam.fov))])

    def _set_keyframes(self, keys: list[Keyframe]) -> None:
        self.keyframes = keys
        self.g_keys.content = f"{len(keys)} keyframes"

    def camera_path(self, aspect: float = 4 / 3) -> CameraPath:
        w, h = frame_size(aspect, int(self.g_res.value))
        return CameraPath(list(self.keyframes), w, h, int(self.g_fps.value),
                          float(self.g_secs.value))

    def save_path(self, client) -> None:
        aspect = client.camera.aspect if client is not None else 4 / 3
        try:
            path = self.camera_path(aspect).save(self.g_path.value)
        except Exception as e:  # a bad file name must not kill the page
            self.g_keys.content = f"not saved: {e}"
            return
        self.g_keys.content = f"{len(self.keyframes)} keyframes, saved to `{path}`"
        log.info("viewer: camera path saved to %s (render it: python render.py ckpt=... "
                 "path=%s)", path, path)

    # --- clients ------------------------------------------------------------------------------
    def _connect(self, client) -> None:
        self._views[client.client_id] = _ClientView(self, client)

    def _disconnect(self, client) -> None:
        v = self._views.pop(client.client_id, None)
        if v is not None:
            v.close()

    def report(self, w: int, h: int, dt: float) -> None:
        self.frames_rendered += 1
        self.last_fps = 1.0 / max(dt, 1e-6)
        self.g_status.content = f"{w}x{h} in {1000 * dt:.0f} ms ({self.last_fps:.1f} frames/s)"

    def stop(self) -> None:
        """Stop rendering (threads joined: none is left inside torch at exit), then serving."""
        self.pacer.close()
        views = list(self._views.values())
        for v in views:
            v.close()
        for v in views:
            v.join()
        self.server.stop()


class _ClientView:
    """One tab: renders its camera whenever it moves or a control changes."""

    def __init__(self, viewer: Viewer, client) -> None:
        self.viewer, self.client = viewer, client
        self.version, self.closed = 0, False
        self._event = threading.Event()
        client.camera.on_update(lambda _: self.poke())
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pvdal-view")
        self._thread.start()
        self.poke()

    def poke(self) -> None:
        self.version += 1
        self._event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    def join(self, timeout: float = 30.0) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self.closed:
            if not self._event.wait(0.5):
                continue
            self._event.clear()
            try:
                self._render(self.version)
            except Exception as e:  # a browser that went away, a bad camera: keep serving
                if not self.closed:
                    log.warning("viewer: render failed (%s: %s)", type(e).__name__, e)
                    time.sleep(0.5)

    def _render(self, ver: int) -> None:
        v, cam = self.viewer, self.client.camera
        c2w, fov, aspect = c2w_from_viser(cam.wxyz, cam.position), float(cam.fov), cam.aspect
        target, mode = v.target(), str(v.g_mode.value)
        stale = lambda: self.closed or self.version != ver
        for side in v.levels():
            w, h = frame_size(aspect, side)
            t0 = time.perf_counter()
            out = v.render(target, c2w, intrinsics(fov, w, h), h, w, v.chunk, stale, v.pacer)
            if out is None or stale():
                v.pacer.rest()
                return
            dt = time.perf_counter() - t0
            img = picture(out, mode, target.background.cpu().numpy())
            self.client.scene.set_background_image(img, format="jpeg", jpeg_quality=90)
            v.report(w, h, dt)
            v.pacer.rest()
