"""``render.py``: an mp4 of a checkpoint, RGB | colour-mapped depth side by side.

``path=spiral``: a circle of cameras on the band of the train cameras (mean radius and
elevation about the mean camera up, looking at the origin); for forward-facing data a small
spiral around the mean pose. ``path=test``: the test-split poses. The cameras use the first
frame's pinhole intrinsics (no distortion), scaled to ``resolution`` (frame height).
``path=FILE``: a camera-path JSON saved by the viewer, or nerfstudio's (pvdal/viewer/camera_path.py;
its size, scaled to ``resolution``, and its fps).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from pvdal.data.frames import Frames, SceneData
from pvdal.tasks.common import check_ranges, output_dir
from pvdal.tasks.evaluate import (
    load_checkpoint,
    load_data,
    n_samples,
    pick_device,
    progress,
    render_view,
)
from pvdal.utils.errors import ConfigError, PvdalError

log = logging.getLogger("pvdal")

RENDER_RANGES = {"seconds": (0.0, None), "fps": (1, None), "resolution": (2, None),
                 "chunk": (1, None), "n_samples": (2, None)}


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def look_at_origin(pos: Tensor, up: Tensor) -> Tensor:
    """Camera-to-world [n, 3, 4] (OpenGL axes) at ``pos`` [n, 3] looking at the origin."""
    z = _unit(pos)
    x = _unit(torch.linalg.cross(up.expand_as(z), z))
    return torch.stack([x, torch.linalg.cross(z, x), z, pos], -1)


def orbit_path(c2w: Tensor, n: int) -> Tensor:
    """``n`` poses on a circle at the train cameras' mean radius and elevation."""
    c2w = c2w.double()
    t, up = c2w[:, :, 3], _unit(c2w[:, :, 1].mean(0))
    r = t.norm(dim=-1)
    el = float(torch.asin((t / r[:, None].clamp_min(1e-9) @ up).clamp(-1, 1)).mean())
    e1 = t[0] - (t[0] @ up) * up  # start at the first train camera's azimuth
    if e1.norm() < 1e-6:
        e1 = torch.linalg.cross(up, torch.eye(3, dtype=up.dtype)[int(up.abs().argmin())])
    e1 = _unit(e1)
    e2 = torch.linalg.cross(up, e1)
    az = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    d = math.cos(el) * (az.cos()[:, None] * e1 + az.sin()[:, None] * e2) + math.sin(el) * up
    return look_at_origin(float(r.mean()) * d, up).float()


def spiral_path(c2w: Tensor, n: int, rots: float = 2.0, shrink: float = 0.5) -> Tensor:
    """Forward-facing: the mean pose moved along a spiral (radii: ``shrink`` x the 90th
    percentile of the camera offsets along the mean pose's axes); orientation kept."""
    c2w = c2w.double()
    z = _unit(c2w[:, :, 2].mean(0))
    x = _unit(torch.linalg.cross(c2w[:, :, 1].mean(0), z))
    R = torch.stack([x, torch.linalg.cross(z, x), z], -1)
    c = c2w[:, :, 3].mean(0)
    off = (c2w[:, :, 3] - c) @ R  # offsets in the mean camera's axes
    rads = shrink * torch.quantile(off.abs(), 0.9, dim=0).clamp_min(1e-3)
    th = torch.arange(n, dtype=torch.float64) * (2 * math.pi * rots / n)
    local = torch.stack([th.cos(), -th.sin(), -(0.5 * th).sin()], -1) * rads
    pos = c + local @ R.T
    return torch.cat([R.expand(n, 3, 3), pos[:, :, None]], -1).float()


def path_file(cfg: DictConfig):
    """The CameraPath of ``path=FILE`` (a .json name or an existing file), else None."""
    kind = str(cfg.path)
    if kind in ("spiral", "test") or not (kind.endswith(".json") or Path(kind).is_file()):
        return None
    from pvdal.viewer.camera_path import load_camera_path

    return load_camera_path(kind)


def camera_path(cfg: DictConfig, data: SceneData) -> Frames:
    """The video's cameras: poses of ``cfg.path`` with one intrinsics scaled to the height."""
    kind = str(cfg.path)
    if kind == "test":
        src, c2w = data.test, data.test.c2w
    elif kind == "spiral":
        n = max(1, round(float(cfg.seconds) * int(cfg.fps)))
        src = data.train
        ff = bool(data.meta.get("forward_facing"))
        c2w = spiral_path(src.c2w, n) if ff else orbit_path(src.c2w, n)
    elif path_file(cfg) is not None:  # a camera-path JSON (pvdal's or nerfstudio's)
        from pvdal.viewer.camera_path import path_frames

        return path_frames(path_file(cfg), cfg.get("resolution"))
    else:
        raise ConfigError("path", f"unknown camera path {kind!r} (no such file)",
                          "pass path=spiral, path=test or path=FILE.json (docs/viewer.md)")
    h, w = (int(v) for v in src.hw[0])
    s = 1.0 if cfg.get("resolution") is None else int(cfg.resolution) / h
    hw = torch.tensor([max(2, round(h * s)), max(2, round(w * s))])
    n = c2w.shape[0]
    return Frames(c2w, (src.intrinsics[0] * s).expand(n, 4).clone(), hw.expand(n, 2).clone())


def colorize_depth(depth: np.ndarray, opacity: np.ndarray, lo: float, hi: float,
                   background: np.ndarray, cmap: str = "turbo") -> np.ndarray:
    """Depth [H, W] -> uint8 RGB [H, W, 3]: normalised to [lo, hi], colour-mapped, blended
    over ``background`` by opacity (empty space shows the background)."""
    import matplotlib

    d = np.clip((depth - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    rgb = matplotlib.colormaps[cmap](d)[..., :3]
    a = np.clip(opacity, 0.0, 1.0)[..., None]
    return (255 * (a * rgb + (1 - a) * background) + 0.5).astype(np.uint8)


def depth_range(depths: list[np.ndarray], opacities: list[np.ndarray]) -> tuple[float, float]:
    """1st-99th percentile of the depth of opaque pixels over all frames (one scale per video)."""
    vals = np.concatenate([d[o > 0.5] for d, o in zip(depths, opacities)]).astype(np.float64)
    if vals.size == 0:
        vals = np.concatenate([d.ravel() for d in depths]).astype(np.float64)
    lo, hi = np.percentile(vals, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """Write uint8 frames [H, W, 3] (padded to even sizes) to ``path`` atomically."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, pixelformat="yuv420p") as w:
            for f in frames:
                h, wd = f.shape[:2]
                w.append_data(np.pad(f, ((0, h % 2), (0, wd % 2), (0, 0)), mode="edge"))
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError | RuntimeError):
            raise PvdalError(str(path), f"cannot write the video ({e})",
                             "check free disk space and that imageio-ffmpeg is installed") from e
        raise


def run(cfg: DictConfig) -> dict:
    check_ranges(cfg, RENDER_RANGES)
    out = output_dir(cfg)
    lf = load_checkpoint(cfg, pick_device(cfg))
    cp = path_file(cfg)
    try:
        data, _ = load_data(cfg, lf)
    except ConfigError:
        if cp is None:
            raise
        data = None  # a camera-path file needs no dataset (an imported field)
    cams = camera_path(cfg, data)
    if data is None:
        data = SceneData(cams, cams, cams, lf.scene)
    fps = int(cfg.fps) if cp is None else cp.fps
    name = str(cfg.path) if cp is None else Path(str(cfg.path)).stem
    n_samp, chunk = n_samples(cfg, lf), int(cfg.get("chunk", 4096))
    h, w = (int(v) for v in cams.hw[0])
    log.info("render: %s, %d frames of %dx%d (%s path)", lf.path, len(cams), w, h, cfg.path)
    rgbs, depths, opacities = [], [], []
    with progress(cfg) as bar:
        task = bar.add_task(f"render {name}", total=len(cams))
        for i in range(len(cams)):
            img = render_view(lf, data, cams, i, n_samp, chunk)
            rgbs.append((img["rgb"].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
            depths.append(img["depth"].numpy().astype(np.float32))
            opacities.append(img["opacity"].numpy().astype(np.float32))
            bar.advance(task)
    lo, hi = depth_range(depths, opacities)
    bg = lf.background.cpu().numpy()
    cmap = str(cfg.get("depth_colormap", "turbo"))
    frames = [np.concatenate([rgb, colorize_depth(d, o, lo, hi, bg, cmap)], axis=1)
              for rgb, d, o in zip(rgbs, depths, opacities)]
    path = Path(cfg.output) if cfg.get("output") else out / f"video_{name}.mp4"
    write_mp4(path, frames, fps)
    log.info("wrote %s (depth %.3f..%.3f)", path, lo, hi)
    return {"video": str(path), "frames": len(frames), "height": h, "width": 2 * w,
            "fps": fps, "depth_range": [lo, hi]}
