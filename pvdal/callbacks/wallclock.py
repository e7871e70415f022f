"""Test PSNR against training wall-clock time (benchmarks): evaluation time is not counted."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from pvdal import metrics


class WallClockEval(pl.Callback):
    """At each of ``checkpoints_s`` seconds of training, render the test split and record PSNR.

    Rows: ``{"time_s", "step", "psnr"}`` (+ ``"psnr_vs_teacher"`` for distillation). The clock
    stops while evaluating, so the curve measures training time only. Training stops after the
    last checkpoint.
    """

    def __init__(self, checkpoints_s: list[float], max_images: int | None = None) -> None:
        self.checkpoints = sorted(checkpoints_s)
        self.max_images = max_images
        self.rows: list[dict] = []
        self._elapsed = 0.0
        self._t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._elapsed += time.perf_counter() - (self._t0 or time.perf_counter())
        while self.checkpoints and self._elapsed >= self.checkpoints[0]:
            self.rows.append({"time_s": self.checkpoints.pop(0), "step": trainer.global_step,
                              **self.evaluate(trainer, pl_module)})
        if not self.checkpoints:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        """Training ended before the budget (max_steps): record the final point."""
        if self.checkpoints:
            self.rows.append({"time_s": round(self._elapsed, 1), "step": trainer.global_step,
                              **self.evaluate(trainer, pl_module)})
            self.checkpoints = []

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> dict:
        dm = trainer.datamodule
        frames = dm.data.test
        n = len(frames) if not self.max_images else min(len(frames), self.max_images)
        was_training = pl_module.field.training
        pl_module.field.eval()
        ps, pt = [], []
        teacher = getattr(pl_module, "teacher", None)
        for i in range(n):
            o, d = dm.data.image_rays(frames, i)
            batch = {"rays_o": o.to(pl_module.device), "rays_d": d.to(pl_module.device),
                     "hw": frames.hw[i], "index": i}
            img = pl_module.render_image(pl_module.field, pl_module.grid, batch)["rgb"]
            ps.append(float(metrics.psnr(img, frames.images[i].to(img))))
            if teacher is not None:
                t_img = pl_module.render_image(teacher.field, teacher.grid, batch)["rgb"]
                pt.append(float(metrics.psnr(img, t_img)))
        pl_module.field.train(was_training)
        out = {"psnr": sum(ps) / len(ps)}
        if pt:
            out["psnr_vs_teacher"] = sum(pt) / len(pt)
        return out
