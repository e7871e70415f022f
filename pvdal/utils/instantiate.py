"""Build callbacks, loggers and the Trainer from their config groups."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

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


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None) -> pl.Trainer:
    if cfg.get("logger") and any("wandb" in str(k) for k in cfg.logger):
        wandb_default_offline()
    callbacks = _instantiate_dict(cfg.get("callbacks")) + list(extra_callbacks or [])
    loggers = _instantiate_dict(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                       plugins=[AtomicCheckpointIO()])
