"""Build callbacks, loggers and the Trainer from their config groups."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from pvdal.io.checkpoint import AtomicCheckpointIO

log = logging.getLogger("pvdal")


def _instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    if not cfg:
        return []
    return [instantiate(v) for v in cfg.values() if isinstance(v, DictConfig) and "_target_" in v]


def wandb_default_offline() -> None:
    """W&B runs offline unless the user configured it (WANDB_MODE, or an API key)."""
    if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
        log.info("W&B: offline (set WANDB_MODE=online to sync live); `wandb sync` uploads later")


def run_name(cfg: DictConfig) -> str:
    """``<arch>`` for training, ``<teacher>2<student>-<al>`` for distillation."""
    if "student" not in cfg:
        return str(cfg.arch.name)
    al = cfg.get("al") or {}
    on = [k for k in ("view", "ray", "point") if (al.get(k) or {}).get("enabled")]
    tag = "full" if len(on) == 3 else ("+".join(on) or "none")
    return f"{cfg.teacher.name}2{cfg.student.name}-{tag}"


def sweep_group() -> str | None:
    """A multirun's jobs share one W&B group: the sweep directory's name."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    mode = getattr(hc.mode, "name", None)
    return Path(str(hc.sweep.dir)).name if mode == "MULTIRUN" else None


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None) -> pl.Trainer:
    logger_cfg = cfg.get("logger") or {}
    loggers = []
    for lcfg in logger_cfg.values():
        if not (isinstance(lcfg, DictConfig) and "_target_" in lcfg):
            continue
        if "Wandb" in str(lcfg._target_):
            wandb_default_offline()
            Path(str(lcfg.save_dir)).mkdir(parents=True, exist_ok=True)
            name = lcfg.get("name") or run_name(cfg)
            group = lcfg.get("group") or sweep_group()
            loggers.append(instantiate(lcfg, name=name, group=group))
        else:
            loggers.append(instantiate(lcfg))
    callbacks = _instantiate_dict(cfg.get("callbacks")) + list(extra_callbacks or [])
    # max_time is the run's budget, paced by the module's clock (modules/clock.py): Lightning's
    # Timer would cut the schedule wherever it stands
    tcfg = cfg.trainer.copy()
    with open_dict(tcfg):  # not a Trainer argument: a process-wide torch setting
        matmul = tcfg.pop("float32_matmul_precision", None)
        tcfg.pop("target_samples", None)  # read through render.target_samples
    if matmul and torch.cuda.is_available():  # CUDA only: on the CPU it could mean bf16
        torch.set_float32_matmul_precision(str(matmul))
        log.info("float32 matmul precision: %s (trainer.float32_matmul_precision)", matmul)
    return instantiate(tcfg, callbacks=callbacks, logger=loggers or False,
                       plugins=[AtomicCheckpointIO()], max_time=None)
