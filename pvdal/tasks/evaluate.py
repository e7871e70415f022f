"""``eval.py``: test-split metrics and images of any pvdal checkpoint (train or distill run).

The field, its occupancy grid, scene and background come from the checkpoint; the data config is
the one stored in it (``meta["data"]``) unless ``data=...`` is given on the command line.
Shared by ``render.py`` and ``export.py``: checkpoint loading, device choice, data loading.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress
from torch import Tensor

from pvdal import metrics
from pvdal.data.frames import Frames, SceneData
from pvdal.io.atomic import atomic_write_bytes, atomic_write_json
from pvdal.io.checkpoint import LoadedField, load_field
from pvdal.modules.base import png_bytes
from pvdal.render.renderer import render_chunked
from pvdal.tasks.common import check_ranges, output_dir
from pvdal.utils.errors import ConfigError

log = logging.getLogger("pvdal")

EVAL_RANGES = {"chunk": (1, None), "n_samples": (2, None)}


def require(cfg: DictConfig, key: str, hint: str) -> str:
    """The value of a mandatory key (``???`` in the yaml) or a ConfigError naming it."""
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise ConfigError(key, "is required", hint)
    return str(cfg.get(key))


def pick_device(cfg: DictConfig) -> torch.device:
    name = str(cfg.get("device", "auto"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{name} asked for but CUDA is not available",
                          "pass device=cpu (or device=auto)")
    return torch.device(name)


def load_checkpoint(cfg: DictConfig, device: torch.device | None = None) -> LoadedField:
    """``cfg.ckpt`` (a checkpoint or a ``.safetensors`` export) -> LoadedField on ``device``."""
    path = require(cfg, "ckpt", "pass ckpt=PATH (e.g. outputs/train/runs/<time>/checkpoints/"
                   "last.ckpt)")
    if path.endswith(".safetensors"):  # an export.py format=safetensors file
        from pvdal.io.export import load_safetensors

        lf = load_safetensors(path, "ckpt")
    else:
        lf = load_field(path, "ckpt")
    if device is not None:
        lf.field.to(device)
        lf.grid.to(device)
        lf.background = lf.background.to(device)
    lf.field.eval()
    return lf


def load_data(cfg: DictConfig, lf: LoadedField) -> tuple[SceneData, str]:
    """The data to evaluate on: ``data=...`` if given, else the config stored in the checkpoint."""
    if cfg.get("data") is not None:
        return instantiate(cfg.data.loader), str(cfg.data.get("name", "data"))
    stored = lf.meta.get("data")
    if not stored or "loader" not in stored:
        raise ConfigError("data", f"{lf.path} stores no data config",
                          "pass data=<synthetic|blender|transforms|llff> data.root=PATH")
    return instantiate(OmegaConf.create(stored["loader"])), str(stored.get("name", "data"))


def n_samples(cfg: DictConfig, lf: LoadedField) -> int:
    n = cfg.get("n_samples")
    return int(n) if n is not None else int(lf.n_samples)


def render_view(lf: LoadedField, data: SceneData, frames: Frames, i: int, n_samp: int,
                chunk: int) -> dict[str, Tensor]:
    """Render frame ``i`` of ``frames``: rgb [H, W, 3], depth [H, W], opacity [H, W] (on CPU),
    and ``time``: seconds spent rendering (ray generation and transfers excluded)."""
    h, w = (int(v) for v in frames.hw[i])
    o, d = data.image_rays(frames, i)
    dev = lf.background.device
    o, d = o.to(dev), d.to(dev)
    t0 = time.perf_counter()
    out = render_chunked(lf.field, o, d, lf.scene, lf.grid, n_samp, lf.background, chunk)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    return {"rgb": out["rgb"].view(h, w, 3).cpu(), "depth": out["depth"].view(h, w).cpu(),
            "opacity": out["opacity"].view(h, w).cpu(), "time": dt}


def field_size(lf: LoadedField) -> tuple[int, float]:
    """(number of parameters, state-dict size in MB) of the field alone."""
    n = sum(p.numel() for p in lf.field.parameters())
    size = sum(t.numel() * t.element_size() for t in lf.field.state_dict().values())
    return n, size / 2**20


def progress(cfg: DictConfig) -> Progress:
    return Progress(*Progress.get_default_columns(), disable=not cfg.get("progress", True))


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not rows or len(vals) < len(rows):
        return None
    m = float(np.mean(vals))
    return m if math.isfinite(m) else None


def run(cfg: DictConfig) -> dict:
    check_ranges(cfg, EVAL_RANGES)
    out = output_dir(cfg)
    lf = load_checkpoint(cfg, pick_device(cfg))
    data, data_name = load_data(cfg, lf)
    split = str(cfg.get("split", "test"))
    if split not in ("train", "val", "test"):
        raise ConfigError("split", f"unknown split {split!r}", "pass split=test|val|train")
    frames = data.split(split)
    n_samp, chunk = n_samples(cfg, lf), int(cfg.get("chunk", 4096))
    log.info("eval: %s (%s) on %s/%s, %d views", lf.path, lf.arch.get("name"), data_name,
             split, len(frames))
    rows: list[dict] = []
    with progress(cfg) as bar:
        task = bar.add_task(f"eval {split}", total=len(frames))
        for i in range(len(frames)):
            img = render_view(lf, data, frames, i, n_samp, chunk)
            row: dict = {"index": i, "time": img["time"], "rays": img["rgb"].shape[0]
                         * img["rgb"].shape[1]}
            if frames.images is not None:
                gt = frames.images[i]
                row.update(psnr=float(metrics.psnr(img["rgb"], gt)),
                           ssim=float(metrics.ssim(img["rgb"], gt)),
                           lpips=metrics.lpips(img["rgb"], gt))
            if cfg.get("save_images", True):
                atomic_write_bytes(out / f"{split}_images" / f"{i:03d}.png", png_bytes(img["rgb"]))
            rows.append(row)
            bar.advance(task)
    n_params, size = field_size(lf)
    total = sum(r["time"] for r in rows)
    result = {"psnr": _mean(rows, "psnr"), "ssim": _mean(rows, "ssim"),
              "lpips": _mean(rows, "lpips"), "fps": len(rows) / total if total > 0 else None,
              "render_rays_per_s": sum(r["rays"] for r in rows) / total if total > 0 else None,
              "num_params": n_params, "size_mb": size, "arch": lf.arch.get("name"),
              "ckpt": lf.path, "ckpt_sha256": lf.sha256, "data": data_name, "split": split,
              "n_images": len(rows), "per_image": rows}
    atomic_write_json(Path(out) / "metrics.json", result)
    log.info("%s psnr %s, ssim %s; wrote %s", split, result["psnr"], result["ssim"],
             Path(out) / "metrics.json")
    return result
