"""Shared task plumbing: config checks, seeding, error reporting for the entry points."""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pvdal.modules.clock import budget_seconds
from pvdal.utils.errors import ConfigError, PvdalError

log = logging.getLogger("pvdal")

# key -> (min, max) inclusive; None = unbounded
RANGES: dict[str, tuple[float | None, float | None]] = {
    "trainer.max_steps": (-1, None),
    "data.batch_size": (1, None),
    "data.steps_per_epoch": (1, None),
    "render.n_samples": (2, None),
    "render.chunk": (1, None),
    "grid.resolution": (2, None),
    "grid.threshold": (0.0, None),
    "grid.ema_decay": (0.0, 1.0),
    "grid.update_every": (0, None),
    "grid.sample_fraction": (0.0, 1.0),
}


def check_ranges(cfg: DictConfig, extra: dict[str, tuple] | None = None) -> None:
    """Reject numeric keys out of range with the key's name and its allowed range, and a
    time budget that is not a duration."""
    for key in ("trainer.max_time", "teacher_train.max_time"):
        budget_seconds(OmegaConf.select(cfg, key, default=None), key)
    for key, (lo, hi) in {**RANGES, **(extra or {})}.items():
        val = OmegaConf.select(cfg, key, default=None)
        if val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, int | float):
            raise ConfigError(key, f"must be a number, got {val!r}", "fix the override")
        if (lo is not None and val < lo) or (hi is not None and val > hi):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(key, f"{val} is out of range {rng}", f"pass {key}=<value in {rng}>")


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def writable_output_dir(cfg: DictConfig) -> Path:
    """The run's output dir, created and probed before any work; else a PvdalError naming it."""
    out = output_dir(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise PvdalError(str(out), f"cannot write the output dir ({e.strerror or e})",
                         "choose a writable one: hydra.run.dir=PATH") from e
    return out


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path=last`` -> <run dir>/checkpoints/last.ckpt (must exist); PATH must exist."""
    p = cfg.get("ckpt_path")
    if p in (None, "", "null"):
        return None
    path = output_dir(cfg) / "checkpoints" / "last.ckpt" if p == "last" else Path(str(p))
    if not path.is_file():
        raise ConfigError("ckpt_path", f"no checkpoint at {path}",
                          "to resume, pass hydra.run.dir=<earlier run dir> ckpt_path=last")
    return str(path)


def is_multirun() -> bool:
    try:
        return getattr(HydraConfig.get().mode, "name", None) == "MULTIRUN"
    except ValueError:
        return False


def run_task(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task; a PvdalError becomes one message on stderr and exit code 2.

    In a multirun the failure is written to ``error.txt`` in the job dir (reports show the job
    as failed) and the sweep goes on.
    """
    try:
        return fn(cfg)
    except PvdalError as e:
        msg = f"pvdal: error: {e}"
        log.debug(msg)  # the console gets it once, on stderr
        if is_multirun():
            try:
                (output_dir(cfg) / "error.txt").write_text(msg + "\n")
            except OSError:
                pass
            return None
        print(msg, file=sys.stderr)
        sys.exit(2)
