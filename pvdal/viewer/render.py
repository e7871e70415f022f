"""One camera of a field, rendered the way ``eval.py`` renders a test view (``render_chunked``:
march -> field -> composite with early termination), in blocks of rows so a frame can be
abandoned as soon as the camera moves, and turned into the picture the page shows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from pvdal.data.frames import NDCSpec
from pvdal.fields.base import RadianceField
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.rays import image_rays, ndc_rays
from pvdal.render.renderer import render_chunked
from pvdal.render.scene import SceneSpec

MODES = ("rgb", "depth", "opacity")


@dataclass
class ViewTarget:
    """What a view renders: a field with its grid, scene, background and sample count."""

    field: RadianceField
    grid: OccupancyGrid | None
    scene: SceneSpec
    background: Tensor  # [3], on the field's device
    n_samples: int
    ndc: NDCSpec | None = None

    @classmethod
    def of(cls, lf, ndc: NDCSpec | None = None) -> ViewTarget:
        """From a ``LoadedField`` (eval.py's checkpoint loader) or a training module."""
        return cls(lf.field, lf.grid, lf.scene, lf.background, int(lf.n_samples), ndc)

    @property
    def device(self) -> torch.device:
        return self.background.device

    def with_(self, background: Tensor | None = None, n_samples: int | None = None) -> ViewTarget:
        """A copy with another background colour and/or sample count."""
        bg = self.background if background is None else background.to(self.device)
        return replace(self, background=bg,
                       n_samples=self.n_samples if n_samples is None else int(n_samples))


class Pacer:
    """Keeps render work within ``budget`` (a fraction of wall time) across threads: blocks run
    one at a time under a lock, and each owes a pause of (1/budget - 1) x its duration, paid in
    ``rest()`` (after a whole frame, so a frame shows at once) under the same lock, so nobody
    renders meanwhile (budget >= 1: no pauses). Training keeps the rest. (The render threads
    keep their normal CPU priority: a niced thread that holds the GIL while starved would stall
    training.)"""

    def __init__(self, budget: float = 1.0) -> None:
        self.budget = float(budget)
        self._lock = threading.Lock()
        self._closed = threading.Event()  # set: no more pauses (the viewer is stopping)
        self._debt = 0.0  # seconds of pause owed
        self.busy_s = 0.0  # render time spent so far

    def close(self) -> None:
        self._closed.set()

    def __call__(self, fn: Callable[[], dict]) -> dict:
        with self._lock:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            self.busy_s += dt
            if 0 < self.budget < 1:
                self._debt += dt * (1.0 / self.budget - 1.0)
        return out

    def rest(self) -> None:
        """Pay the pause owed for the blocks rendered since the last rest."""
        with self._lock:
            if self._debt > 0:
                self._closed.wait(self._debt)
                self._debt = 0.0


@torch.no_grad()
def render_camera(target: ViewTarget, c2w: np.ndarray | Tensor, K: np.ndarray | Tensor,
                  height: int, width: int, chunk: int = 4096,
                  cancelled: Callable[[], bool] | None = None,
                  pacer: Pacer | None = None) -> dict[str, Tensor] | None:
    """rgb [H, W, 3], depth [H, W], opacity [H, W] (CPU) of one pinhole camera (c2w [3, 4]
    OpenGL, K = fx, fy, cx, cy), in blocks of whole chunks on the field's device; None when
    ``cancelled()`` turns true between blocks. ``pacer`` runs each block (a render budget)."""
    dev = target.device
    c2w = torch.as_tensor(np.asarray(c2w, np.float32) if not isinstance(c2w, Tensor) else c2w,
                          dtype=torch.float32, device=dev)[:3, :4]
    K = torch.as_tensor(np.asarray(K, np.float32) if not isinstance(K, Tensor) else K,
                        dtype=torch.float32, device=dev)
    o, d = image_rays(c2w, K, height, width)
    if target.ndc is not None:
        n = target.ndc
        o, d = ndc_rays(o, d, n.focal, n.width, n.height, n.near)
    parts: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "opacity": []}
    block = max(1, chunk) * 4  # a few chunks per block: cancel within ~1/4 of a chunk's time x4
    for s in range(0, o.shape[0], block):
        if cancelled is not None and cancelled():
            return None
        run = (lambda s=s: render_chunked(target.field, o[s:s + block], d[s:s + block],
                                          target.scene, target.grid, target.n_samples,
                                          target.background, chunk))
        out = run() if pacer is None else pacer(run)
        for k in parts:
            parts[k].append(out[k].cpu())
    res = {k: torch.cat(v) for k, v in parts.items()}
    return {"rgb": res["rgb"].view(height, width, 3), "depth": res["depth"].view(height, width),
            "opacity": res["opacity"].view(height, width)}


def to_uint8(img: Tensor | np.ndarray) -> np.ndarray:
    a = img.numpy() if isinstance(img, Tensor) else np.asarray(img)
    return (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def picture(out: dict[str, Tensor], mode: str, background: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] of a render: RGB, colour-mapped depth (as render.py's videos; empty
    space shows the background) or opacity in grey."""
    if mode == "depth":
        from pvdal.tasks.render_video import colorize_depth, depth_range

        d, a = out["depth"].numpy(), out["opacity"].numpy()
        lo, hi = depth_range([d], [a])
        return colorize_depth(d, a, lo, hi, np.asarray(background, float))
    if mode == "opacity":
        return np.repeat(to_uint8(out["opacity"])[..., None], 3, axis=-1)
    return to_uint8(out["rgb"])


def abs_diff(a: Tensor, b: Tensor, gain: float = 4.0) -> np.ndarray:
    """uint8 |a - b| (mean over channels, times ``gain`` so small errors show), grey."""
    d = ((a - b).abs().mean(-1) * gain).clamp(0, 1)
    return np.repeat(to_uint8(d)[..., None], 3, axis=-1)


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse <= 0 else -10.0 * float(np.log10(mse))
