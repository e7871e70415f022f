"""``train.py``: train one architecture from images, test it, write metrics.json."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.multiprocessing import ProcessExitedException

from pvdal.callbacks.save_last import SaveLastCheckpoint
from pvdal.data.datamodule import RayDataModule
from pvdal.io.atomic import atomic_write_json
from pvdal.io.checkpoint import data_config
from pvdal.modules.clock import budget_seconds
from pvdal.modules.field_module import FieldModule
from pvdal.tasks.common import check_ranges, output_dir, resolve_ckpt_path, writable_output_dir
from pvdal.utils.ddp import fresh_spawn_port
from pvdal.utils.instantiate import build_trainer
from pvdal.utils.presets import apply_preset
from pvdal.viewer.live import live_callbacks

log = logging.getLogger("pvdal")


def build_datamodule(cfg: DictConfig) -> RayDataModule:
    dm = RayDataModule(instantiate(cfg.data.loader, _partial_=True), cfg.data.batch_size,
                       cfg.data.steps_per_epoch, cfg.seed, cfg.data.get("val_images", 2))
    dm.setup()
    return dm


def schedule_steps(cfg: DictConfig) -> int:
    steps = int(cfg.trainer.get("max_steps") or -1)
    return steps if steps > 0 else 10000


def fit_and_test(cfg: DictConfig, module: pl.LightningModule, dm: RayDataModule,
                 extra_callbacks: list | None = None) -> tuple[pl.Trainer, float, dict]:
    """Fit (resuming when ckpt_path is set), save last.ckpt, test.

    ``trainer.max_time`` is the run's time budget: the module's clock paces every schedule by
    it and ends the run when the schedule is complete (Lightning's own cut is not used).

    The module writes ``metrics.json`` from the test process (rank 0; under ``ddp_spawn`` the
    parent never sees the test rows); this adds the training time and returns the result.
    """
    ckpt = resolve_ckpt_path(cfg)
    out = output_dir(cfg)
    callbacks = [SaveLastCheckpoint(out / "checkpoints" / "last.ckpt"), *(extra_callbacks or [])]
    module.clock.budget_s = budget_seconds(cfg.trainer.get("max_time"))
    trainer = build_trainer(cfg, callbacks)
    user_port = "MASTER_PORT" in os.environ
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    metrics_path = Path(out) / "metrics.json"
    module.metrics_path = str(metrics_path)
    for attempt in (1, 2):
        fresh_spawn_port(trainer, user_port)
        try:
            trainer.test(module, datamodule=dm, verbose=False)
            break
        except ProcessExitedException as e:
            # gloo can abort a freshly spawned process ('terminate called without an active
            # exception'); testing only renders and rewrites metrics.json, so it is retried once
            if attempt == 2 or getattr(e, "signal_name", None) != "SIGABRT":
                raise
            log.warning("testing: a spawned process aborted (%s); testing again on a fresh "
                        "port", e)
    result = json.loads(metrics_path.read_text())
    result["train_time_s"] = train_time
    result["train_cpu_s"] = train_cpu  # CPU seconds of this process: comparable under load
    if trainer.is_global_zero:
        atomic_write_json(metrics_path, result)
    return trainer, train_time, result


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> dict:
    """Train, test, write metrics.json. ``extra_callbacks``: e.g. benchmarks' WallClockEval."""
    apply_preset(cfg)
    check_ranges(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    out = writable_output_dir(cfg)
    dm = build_datamodule(cfg)
    data = dm.data
    module = FieldModule(cfg.arch, cfg.render, cfg.grid, data.scene.as_dict(),
                         list(data.background), str(out), schedule_steps(cfg),
                         data_config(cfg.data, data.world),
                         cfg.get("nan_policy", "stop"))
    log.info("training %s on %s (%d train / %d test views) into %s", cfg.arch.name,
             cfg.data.name, len(data.train), len(data.test), out)
    _, _, result = fit_and_test(cfg, module, dm, [*(extra_callbacks or []), *live_callbacks(cfg)])
    log.info("test psnr %.2f dB, ssim %.3f; wrote %s", result.get("psnr", float("nan")),
             result.get("ssim", float("nan")), Path(out) / "metrics.json")
    return result
