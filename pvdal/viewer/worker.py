"""Rendering in a child process, for the live viewer on a CPU.

A render thread inside the training process shares Python's GIL with the training loop: both
run many small torch ops, and each hand-over of the GIL can wait out the switch interval, which
slowed training by far more than the render time itself. A child process has its own GIL: the
training process only pickles a snapshot across (a few MB, once per refresh) and waits for
pixels on a thread that sleeps meanwhile.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import sys
import threading
from typing import Any

import numpy as np
import torch

from pvdal.viewer.render import Pacer, ViewTarget, render_camera


def _serve(req: Any, res: Any, threads: int) -> None:
    """The child: keep the targets it is sent, render what it is asked, until ``None``."""
    torch.set_num_threads(max(1, threads))
    targets: dict[int, ViewTarget] = {}
    res.put("ready")  # imports done: start-up is not render time
    while True:
        msg = req.get()
        if msg is None:
            return
        if msg[0] == "clear":
            targets.clear()
            continue
        if msg[0] == "target":
            targets[msg[1]] = msg[2]
            continue
        _, key, c2w, K, h, w, chunk, bg, n = msg
        try:
            t = targets[key].with_(background=torch.tensor(bg), n_samples=n)
            res.put(render_camera(t, c2w, K, h, w, chunk))
        except Exception as e:  # reported to the caller, the child keeps serving
            res.put(RuntimeError(f"{type(e).__name__}: {e}"))


class RenderWorker:
    """``render(target, c2w, K, h, w, chunk, cancelled, pacer)`` like ``render_camera``,
    computed in a spawned child process (CPU fields only)."""

    def __init__(self, threads: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self._req, self._res = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=_serve, args=(self._req, self._res, threads),
                                 daemon=True, name="pvdal-render")
        # the child needs only this module: keep spawn from re-running the parent's script
        # (a script without an ``if __name__ == "__main__"`` guard would train again)
        main = sys.modules["__main__"]
        path = main.__dict__.pop("__file__", None) if getattr(main, "__spec__", None) is None \
            else None
        try:
            self._proc.start()
        finally:
            if path is not None:
                main.__file__ = path
        self._lock = threading.Lock()
        self._ready = False
        self._sent: dict[int, Any] = {}  # id(field) -> field (kept alive: ids stay unique)

    def render(self, target: ViewTarget, c2w, K, height: int, width: int, chunk: int = 4096,
               cancelled=None, pacer: Pacer | None = None) -> dict | None:
        if cancelled is not None and cancelled():
            return None
        with self._lock:
            if not self._ready:  # outside the pacer: start-up is not render time
                self._get()
                self._ready = True
        run = lambda: self._render(target, c2w, K, height, width, chunk)
        return run() if pacer is None else pacer(run)

    def _render(self, target: ViewTarget, c2w, K, h: int, w: int, chunk: int) -> dict:
        key = id(target.field)
        with self._lock:
            if key not in self._sent:
                if len(self._sent) >= 4:  # old snapshots: both sides forget them
                    self._sent.clear()
                    self._req.put(("clear",))
                self._sent[key] = target.field
                self._req.put(("target", key, target))
            self._req.put(("render", key, np.asarray(c2w, np.float32),
                           np.asarray(K, np.float32), int(h), int(w), int(chunk),
                           target.background.cpu().tolist(), int(target.n_samples)))
            out = self._get()
        if isinstance(out, Exception):
            raise out
        return out

    def _get(self) -> Any:
        while True:
            try:
                return self._res.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError("the render process died") from None

    def close(self) -> None:
        try:
            self._req.put(None)
            self._proc.join(5)
        finally:
            if self._proc.is_alive():
                self._proc.terminate()
