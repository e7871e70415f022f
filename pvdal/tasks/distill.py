"""``distill.py``: convert a teacher field into a student architecture, test both."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from pvdal.distill.random_views import build_random_views
from pvdal.distill.teacher import resolve_teacher
from pvdal.io.checkpoint import data_config
from pvdal.modules.distill_module import DistillModule
from pvdal.tasks.common import check_ranges, writable_output_dir
from pvdal.tasks.train import build_datamodule, fit_and_test, schedule_steps
from pvdal.utils.presets import apply_native, apply_preset
from pvdal.viewer.live import live_callbacks

log = logging.getLogger("pvdal")

DISTILL_RANGES = {
    "distill.weights.feat": (0.0, None),
    "distill.weights.sigma": (0.0, None),
    "distill.weights.color": (0.0, None),
    "distill.weights.rgb": (0.0, None),
    "distill.feat_decay": (0.0, 1.0),
    "distill.early_stop_eps": (0.0, 1.0),
    "teacher_train.max_steps": (-1, None),
}


def build_al(cfg: DictConfig, dm, teacher) -> tuple[dict, list]:
    """Active-learning levels enabled in ``cfg.al`` -> ({name: level}, callbacks)."""
    try:
        from pvdal.al import build_levels
    except ImportError:
        return {}, []
    return build_levels(cfg.al, dm, teacher, cfg)


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> dict:
    apply_native(cfg)
    apply_preset(cfg)
    check_ranges(cfg, DISTILL_RANGES)
    pl.seed_everything(cfg.seed, workers=True)
    out = writable_output_dir(cfg)
    dm = build_datamodule(cfg)
    teacher = resolve_teacher(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    if teacher.world is not None and dm.data.world is not None and \
            not teacher.world.matches(dm.data.world):
        log.warning("distill: the teacher was trained in another frame (%s) than this data's "
                    "(%s): its field and these cameras do not line up", teacher.world.to_dict(),
                    dm.data.world.to_dict())
    levels, callbacks = build_al(cfg, dm, teacher)
    if "ray" in levels:  # the hard rays join each batch in the data (before the teacher pass)
        dm.set_replay(levels["ray"])
    views = build_random_views(cfg.distill.get("random_views"), dm, "view" in levels,
                               int(cfg.seed))
    if views is not None:
        callbacks = [*callbacks, views]
    module = DistillModule(teacher, cfg.student, cfg.distill, cfg.render, cfg.grid, str(out),
                           schedule_steps(cfg), data_config(cfg.data, dm.data.world), levels,
                           cfg.get("nan_policy", "stop"))
    log.info("distill: %s -> %s (al: %s) into %s", teacher.arch["name"], cfg.student.name,
             ",".join(levels) or "none", out)
    callbacks = callbacks + list(extra_callbacks or []) + live_callbacks(cfg)
    _, _, result = fit_and_test(cfg, module, dm, callbacks)
    log.info("student psnr %s dB, vs teacher %s dB; wrote %s", result["student"].get("psnr"),
             result["student_vs_teacher_psnr"], Path(out) / "metrics.json")
    return result
