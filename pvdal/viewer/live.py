"""``view=true`` in train.py / distill.py: the viewer inside the training process (rank 0 only).

Every ``every_n_steps`` steps the training thread copies the student (field + occupancy grid,
no grad: a snapshot, a few ms) and hands it to a background thread, which has teacher |
student | |difference| rendered for the browser's camera at the size the user picks (on a CPU
by a child process, worker.py: no GIL shared with training), shows the student in the 3-D view
and the stage, losses and student-vs-teacher PSNR. All render work goes through one ``Pacer``:
it takes at most ``budget`` of the wall time, so training keeps the rest. A snapshot is skipped
while the previous one is still being rendered. Closing the browser changes nothing for
training; a failing render is logged once and the viewer keeps going.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from pvdal.viewer.camera import c2w_from_viser, frame_size, intrinsics
from pvdal.viewer.render import ViewTarget, abs_diff, psnr, to_uint8

log = logging.getLogger("pvdal")
STAGES = {1: "1 features", 2: "2 points", 3: "3 render"}


@torch.no_grad()
def snapshot(module: pl.LightningModule, ndc=None) -> ViewTarget:
    """A detached copy of the module's field and occupancy grid, to render off the train loop."""
    field = copy.deepcopy(module.field).requires_grad_(False).eval()
    return ViewTarget(field, copy.deepcopy(module.grid), module.scene,
                      module.background.detach().clone(), int(module.n_samples), ndc)


def train_stats(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, float | str]:
    """Step, distillation stage and the latest logged losses / PSNRs."""
    out: dict[str, float | str] = {"step": int(trainer.global_step)}
    sched = getattr(module, "schedule", None)
    if sched is not None and hasattr(module, "schedule_step"):
        stage = sched.stage(module.schedule_step)
        out["stage"] = STAGES.get(stage, str(stage))
    for k, v in trainer.callback_metrics.items():
        if k.startswith(("train/", "distill/loss", "val/")):
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                pass
    return out


class LiveViewer(pl.Callback):
    def __init__(self, host: str = "127.0.0.1", port: int = 8080, every_n_steps: int = 50,
                 resolution: int = 160, budget: float = 0.05, chunk: int = 4096,
                 diff_gain: float = 4.0) -> None:
        self.host, self.port, self.every = host, int(port), max(1, int(every_n_steps))
        self.resolution, self.budget, self.chunk = int(resolution), float(budget), int(chunk)
        self.diff_gain = float(diff_gain)
        self.viewer = None
        self.teacher: ViewTarget | None = None
        self._next: tuple | None = None  # the latest snapshot, waiting for the render thread
        self._busy = False
        self._event: threading.Event | None = None  # made on rank 0 (ddp_spawn pickles this)
        self._thread: threading.Thread | None = None
        self._teacher_tile: dict = {}  # camera -> the teacher's render (it does not change)
        self._worker = None  # the render process (CPU)
        self._t0 = time.perf_counter()
        self._stopped = False
        self._warned = False
        self.refreshes = 0

    # --- Lightning hooks ----------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.viewer is not None:
            return
        from pvdal.viewer.server import Viewer, dataset_cameras

        dm = getattr(trainer, "datamodule", None)
        data = getattr(dm, "data", None)
        self.ndc = data.ndc if data is not None else None
        t = getattr(pl_module, "teacher", None)
        self.teacher = ViewTarget.of(t, self.ndc) if t is not None else None
        targets = {"student" if t is not None else "field": snapshot(pl_module, self.ndc)}
        if self.teacher is not None:
            targets["teacher"] = self.teacher
        out = Path(getattr(pl_module, "output_dir", None) or ".")
        self.viewer = Viewer(targets, dataset_cameras(data), self.host, self.port,
                             self.resolution, 2, self.chunk, self.budget, out)
        if targets[next(iter(targets))].device.type == "cpu":  # no GIL shared with training
            from pvdal.viewer.worker import RenderWorker

            try:
                self._worker = RenderWorker(torch.get_num_threads())
                self.viewer.render = self._worker.render
            except Exception as e:  # rendering on a thread instead: slower training, still live
                log.warning("viewer: no render process (%s: %s)", type(e).__name__, e)
        gui = self.viewer.server.gui
        with gui.add_folder("Training", order=-1):
            size = min(max(self.resolution, 16), 640)
            self.g_size = gui.add_slider("panel size", 16, 640, 8, size,
                                         hint="longest side of each tile, pixels")
            self.g_img = gui.add_image(np.full((8, 24, 3), 255, np.uint8),
                                       label="teacher | student | |difference|"
                                       if self.teacher is not None else "field")
            self.g_stats = gui.add_markdown("waiting for the first snapshot...")
        self._event = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pvdal-live")
        self._thread.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (self.viewer is None or trainer.global_step % self.every or self._busy
                or self._next is not None):
            return
        self._hand_over(pl_module, trainer)

    def _hand_over(self, pl_module, trainer) -> None:
        self._next = (snapshot(pl_module, self.ndc), train_stats(trainer, pl_module))
        if self._event is not None:
            self._event.set()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final weights go to the render thread (shown while the run tests); with no
        budget (``budget >= 1``) they are rendered here, before testing starts."""
        if self.viewer is None:
            return
        if self.budget < 1:
            self._hand_over(pl_module, trainer)
            return
        try:
            self.refresh(snapshot(pl_module, self.ndc), train_stats(trainer, pl_module))
        except Exception as e:
            log.warning("viewer: final refresh failed (%s: %s)", type(e).__name__, e)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" and self.viewer is not None:  # after testing: the run is over
            self.stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.stop()

    def stop(self) -> None:
        """End the render thread (joined, so none is inside torch when the process exits),
        then the page."""
        self._stopped = True
        if self._event is not None:
            self._event.set()
        if self.viewer is not None:
            self.viewer.pacer.close()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(30.0)
            self.viewer.stop()
            if self._worker is not None:
                self._worker.close()
                self._worker = None
            served = time.perf_counter() - self._t0
            log.info("viewer: %d refreshes, %.1f s of rendering in %.0f s (%.1f %%)",
                     self.refreshes, self.viewer.pacer.busy_s, served,
                     100 * self.viewer.pacer.busy_s / max(served, 1e-9))
            self.viewer = None

    # --- background thread --------------------------------------------------------------------
    def _loop(self) -> None:
        assert self._event is not None and self.viewer is not None
        while not self._stopped:
            if not self._event.wait(0.5):
                continue
            self._event.clear()
            item, self._next = self._next, None
            if item is None:
                continue
            self._busy = True
            try:
                self.refresh(*item)
            except Exception as e:  # never reaches training
                if not self._warned:
                    log.warning("viewer: live refresh failed (%s: %s)", type(e).__name__, e)
                    self._warned = True
            finally:
                if self.viewer is not None:
                    self.viewer.pacer.rest()  # the budget: the pause this refresh owes
                self._busy = False

    def _camera(self) -> tuple[np.ndarray, float, float]:
        """The first browser's camera (c2w, fov, aspect); else the first dataset camera."""
        v = self.viewer
        for client in v.server.get_clients().values():
            cam = client.camera
            return c2w_from_viser(cam.wxyz, cam.position), float(cam.fov), cam.aspect
        if v.cameras:
            c = v.cameras[0]
            return c.c2w, 2 * float(np.arctan(0.5 * c.hw[0] / c.K[1])), c.hw[1] / c.hw[0]
        return np.eye(4)[:3], 0.7, 4 / 3

    def refresh(self, student: ViewTarget, stats: dict) -> None:
        """Show the snapshot: the 3-D view re-renders it; the panel gets the tiles and stats."""
        v = self.viewer
        if v is None:
            return
        key = "student" if self.teacher is not None else "field"
        v.set_targets({key: student})
        c2w, fov, aspect = self._camera()
        w, h = frame_size(aspect, int(self.g_size.value))
        K = intrinsics(fov, w, h)
        bg = v.target().background
        s = v.render(student.with_(background=bg), c2w, K, h, w, self.chunk,
                     lambda: self._stopped, v.pacer)
        if s is None:
            return
        tiles = [to_uint8(s["rgb"])]
        if self.teacher is not None:
            key = (np.asarray(c2w).tobytes(), K.tobytes(), h, w, tuple(bg.tolist()))
            t = self._teacher_tile.get(key)
            if t is None:  # the teacher is frozen: render it once per camera
                t = v.render(self.teacher.with_(background=bg), c2w, K, h, w, self.chunk,
                             lambda: self._stopped, v.pacer)
                if t is None:
                    return
                self._teacher_tile = {key: t}
            tiles = [to_uint8(t["rgb"]), tiles[0], abs_diff(s["rgb"], t["rgb"], self.diff_gain)]
            stats = {**stats, "student vs teacher PSNR (this view)": psnr(s["rgb"], t["rgb"])}
        sep = np.full((h, 2, 3), 128, np.uint8)
        panel = tiles[0]
        for tile in tiles[1:]:
            panel = np.concatenate([panel, sep, tile], axis=1)
        self.g_img.image = panel
        self.g_stats.content = "\n".join(
            f"- **{k}**: {val:.4g}" if isinstance(val, float) else f"- **{k}**: {val}"
            for k, val in stats.items())
        self.refreshes += 1


def live_callbacks(cfg) -> list[pl.Callback]:
    """``[LiveViewer]`` when the run config says ``view=true`` (settings: ``viewer.*``)."""
    if not cfg.get("view", False):
        return []
    v = cfg.get("viewer") or {}
    return [LiveViewer(str(v.get("host", "127.0.0.1")), int(v.get("port", 8080)),
                       int(v.get("every_n_steps", 50)), int(v.get("resolution", 160)),
                       float(v.get("budget", 0.05)),
                       int(cfg.get("render", {}).get("chunk", 4096)))]
