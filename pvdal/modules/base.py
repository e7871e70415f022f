"""What every pvdal LightningModule shares: the trained field's optimizer and hooks, occupancy
updates, whole-image evaluation and the self-describing checkpoint metadata."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from pvdal import metrics
from pvdal.fields.base import RadianceField
from pvdal.io.atomic import atomic_write_bytes, atomic_write_json
from pvdal.io.checkpoint import KEY, field_metadata
from pvdal.modules.clock import ScheduleClock
from pvdal.modules.lr_schedule import lr_factors
from pvdal.render.march import default_step_size
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.renderer import render_chunked
from pvdal.render.scene import SceneSpec
from pvdal.utils.ddp import all_ranks_true, rewrap_after_new_parameters
from pvdal.utils.errors import ConfigError, PvdalError
from pvdal.utils.precision import safe_eps

log = logging.getLogger("pvdal")
FIELD_EXTRA = "pvdal_field_extra"  # key of the field's shape state in the module's state dict


def as_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def png_bytes(img: Tensor) -> bytes:
    import imageio.v3 as iio

    arr = (img.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return iio.imwrite("<bytes>", arr, extension=".png")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RadianceModule(pl.LightningModule):
    """Base: ``self.field`` (trained), ``self.grid`` (its occupancy grid), render settings."""

    field: RadianceField
    grid: OccupancyGrid

    def __init__(self, arch: DictConfig | dict, render: dict, grid: dict, scene: dict,
                 background: list[float], output_dir: str | None = None,
                 schedule_steps: int = 10000, data_cfg: dict | None = None,
                 nan_policy: str = "stop") -> None:
        super().__init__()
        if nan_policy not in ("stop", "skip"):
            raise ConfigError("nan_policy", f"must be stop or skip, got {nan_policy!r}",
                              "stop: save and end the run; skip: drop the batch")
        self.nan_policy = nan_policy
        self.data_cfg = as_dict(data_cfg) if data_cfg is not None else None
        self.arch = as_dict(arch)
        self.render_cfg = as_dict(render)
        self.grid_cfg = as_dict(grid)
        self.scene = SceneSpec(**as_dict(scene))
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32),
                             persistent=False)
        self.output_dir = output_dir
        self.schedule_steps = max(1, int(schedule_steps))
        self.clock = ScheduleClock(self.schedule_steps)  # budget: set by the task (max_time)
        # its state stays on the CPU (read every step); every rank keeps its own clock and
        # rank 0's pace is broadcast by ``optimizer_step``, so DDP must not sync it as a buffer
        self._ddp_params_and_buffers_to_ignore = ["clock.state"]
        self.n_samples = int(self.render_cfg["n_samples"])
        self.step_size = default_step_size(self.n_samples)
        self._test_rows: list[dict] = []
        self.metrics_path: str | None = None  # set by the task; written at test end (rank 0)
        self.lr_reset_at = 0.0  # progress where the LR schedule last restarted (lr_schedule.py)

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = self.optimizer_groups()
        lr = self.arch["lr"]
        params = [{"params": p, "lr": float(lr[name]), "name": name}
                  for name, p in groups.items() if p]
        params += self.extra_param_groups()
        opt = safe_eps(instantiate(self.arch["optimizer"])(params))  # eps fits the dtype
        # exp or cosine over the schedule (steps or budget), see lr_schedule.py
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_factors(self.arch, opt, lambda: self.clock.progress,
                            lambda: self.lr_reset_at))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @property
    def schedule_step(self) -> int:
        """Where the run is in its schedule: ``global_step`` unless a time budget paces it."""
        return self.clock.step

    def optimizer_step(self, *args, **kwargs) -> None:
        """After each optimizer step the clock advances (before the LR scheduler reads it);
        the run ends when the schedule is complete, by steps or by budget."""
        super().optimizer_step(*args, **kwargs)
        trainer = self.trainer
        sync = (lambda v: trainer.strategy.broadcast(v, 0)) if trainer.world_size > 1 else None
        # global_step counts this step only once the hook returns (Lightning 2.x); at
        # max_steps Lightning ends the run itself, as it always did
        done = self.global_step + 1
        if self.clock.tick(done, sync) and done < self.clock.max_steps:
            trainer.should_stop = True

    #: check the loss on the device between logging steps (None: on CUDA only, where a check
    #: would wait for the device every step; on the CPU a check costs nothing)
    defer_nan_check: bool | None = None

    def finite_or_none(self, loss: Tensor, terms: dict[str, Tensor]) -> Tensor | None:
        """NaN guard: a non-finite loss either skips the batch (``nan_policy=skip``, returns
        None so no optimizer step happens) or saves ``last.ckpt`` with the still-finite
        parameters and stops with a message naming the step and the loss term. Under DDP a
        non-finite loss on any rank counts for all: they skip, or stop, together.

        Deferred (``defer_nan_check``; on CUDA by default) on steps that don't log: the check
        stays on the device, a bad step's gradients are zeroed before the optimizer step
        (``on_before_optimizer_step``; Adam still applies its momentum) and the policy acts at
        the next logging step, naming the first bad step."""
        defer = self.defer_nan_check
        if defer is None:
            defer = loss.is_cuda
        if defer and not self.log_step():
            self._step_ok = torch.isfinite(loss.detach())
            return loss
        self._report_deferred()
        # one decision on every rank: a rank that skipped alone would leave the others
        # waiting in the gradient all-reduce, one that stopped alone in the checkpoint barrier
        if all_ranks_true(torch.isfinite(loss)):
            return loss
        bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())] or [
            "loss" if not bool(torch.isfinite(loss)) else "loss (on another rank)"]
        step = self.global_step
        if self.nan_policy == "skip":
            log.warning("step %d: non-finite %s; batch skipped (nan_policy=skip)", step,
                        ", ".join(bad))
            if self.trainer.world_size > 1:  # Lightning cannot skip a DDP step: backward a
                self._drop_update = True  # zero loss (every rank), then drop the gradients
                return sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)
            return None
        if self.output_dir:
            self.trainer.save_checkpoint(Path(self.output_dir) / "checkpoints" / "last.ckpt")
        raise PvdalError(f"step {step}", f"loss term {', '.join(bad)} is not finite; the last "
                         "good state is in checkpoints/last.ckpt",
                         "lower the learning rate, or set nan_policy=skip to drop such batches")

    def on_before_optimizer_step(self, optimizer) -> None:
        """A deferred NaN check: zero this step's gradients on the device if the loss or any
        gradient (another rank's NaN arrives through the all-reduce) is not finite."""
        ok = getattr(self, "_step_ok", None)
        if ok is None:
            return
        self._step_ok = None
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            ok = ok & torch.stack([torch.isfinite(g).all() for g in grads]).all()
        zero = torch.zeros((), device=ok.device)
        for g in grads:
            g.copy_(torch.where(ok, g, zero.to(g.dtype)))
        bad = getattr(self, "_bad_steps", None)
        step = torch.full((), self.global_step, device=ok.device)
        if bad is None:
            bad = self._bad_steps = torch.zeros(2, dtype=torch.long, device=ok.device)
            bad[1] = -1
        bad[0] += (~ok).long()
        bad[1] = torch.where(~ok & (bad[1] < 0), step, bad[1])

    def _report_deferred(self) -> None:
        """On a checked step: act on the bad steps a deferred check found since the last one."""
        bad = getattr(self, "_bad_steps", None)
        if bad is None:
            return
        n, first = (int(v) for v in bad.tolist())
        self._bad_steps = None
        if n == 0:
            return
        if self.nan_policy == "skip":
            log.warning("step %d: non-finite loss on %d step(s) since; their gradients were "
                        "zeroed (nan_policy=skip)", first, n)
            return
        if self.output_dir:
            self.trainer.save_checkpoint(Path(self.output_dir) / "checkpoints" / "last.ckpt")
        raise PvdalError(f"step {first}", f"the loss was not finite on {n} step(s) since (their "
                         "gradients were zeroed); the state after them is in "
                         "checkpoints/last.ckpt", "lower the learning rate, or set "
                         "nan_policy=skip to drop such batches")

    def on_after_backward(self) -> None:
        """A step skipped by the NaN guard under DDP updates nothing: without gradients the
        optimizer leaves every parameter and its state alone."""
        if getattr(self, "_drop_update", False):
            self._drop_update = False
            for p in self.parameters():
                p.grad = None

    def after_grid_update(self) -> None:
        """Hook after an occupancy update (distillation restricts the student's grid)."""

    def optimizer_groups(self) -> dict[str, list]:
        """The field's param groups that the optimizer updates (distillation may freeze some)."""
        return self.field.param_groups()

    def extra_param_groups(self) -> list[dict]:
        """Trainable parameters outside the field (e.g. distillation's feature projection)."""
        return []

    def log_step(self) -> bool:
        """Whether this training step's values reach the logger (every ``log_every_n_steps``).

        Each ``self.log`` costs ~1 ms of Lightning bookkeeping, about a tenth of a small
        model's step on CPU, and Lightning only writes the values of these steps anyway."""
        trainer = self._trainer
        if trainer is None:
            return True
        every = trainer.log_every_n_steps
        return every > 0 and ((self.global_step + 1) % every == 0 or trainer.should_stop)

    def field_hooks(self) -> None:
        """Field-specific schedule (upsampling, pruning) and occupancy update, before a step."""
        step = self.global_step
        prev, sched = self.clock.hook_steps()
        if self.field.on_step(sched, self.grid, prev):  # new Parameters: DDP and optimizer
            if self.arch.get("lr_upsample_reset"):  # the schedule restarts at the full rate
                self.lr_reset_at = self.clock.progress
            rewrap_after_new_parameters(self.trainer)
            self.trainer.strategy.setup_optimizers(self.trainer)
        if self.grid.should_update(step):
            self.grid.update(step, self.field.density, self.step_size)
            self.after_grid_update()
            self.log("train/occupancy", self.grid.occupancy_fraction())

    # --- evaluation ---------------------------------------------------------------------------
    def render_image(self, field: RadianceField, grid: OccupancyGrid, batch: dict) -> dict:
        h, w = (int(v) for v in batch["hw"])
        out = render_chunked(field, batch["rays_o"], batch["rays_d"], self.scene, grid,
                             self.n_samples, self.background,
                             int(self.render_cfg.get("chunk", 4096)))
        return {"rgb": out["rgb"].view(h, w, 3), "depth": out["depth"].view(h, w),
                "opacity": out["opacity"].view(h, w)}

    def image_metrics(self, pred: Tensor, gt: Tensor) -> dict[str, float]:
        return {"psnr": float(metrics.psnr(pred, gt)), "ssim": float(metrics.ssim(pred, gt))}

    def log_panel(self, tiles: dict[str, Tensor], depth: Tensor) -> None:
        """One validation panel: the tiles side by side, |error| of the last tile against the
        first, and colour-mapped depth. W&B and TensorBoard get the image; every run also
        keeps it as ``val/step*.png`` in the run dir (what the CSV logger's users read)."""
        if not self.trainer.is_global_zero:
            return
        imgs = list(tiles.values())
        err = (imgs[-1] - imgs[0]).abs().mean(-1, keepdim=True).clamp(0, 1).expand_as(imgs[0])
        d = depth / depth.max().clamp_min(1e-6)
        cmap = torch.stack([d, 1 - (2 * d - 1).abs(), 1 - d], -1)  # blue -> green -> red
        panel = torch.cat([*imgs, err, cmap], dim=1)
        caption = " | ".join([*tiles, "error", "depth"])
        self.save_image(f"val/step{self.global_step:06d}.png", panel)
        for lg in self.loggers:
            name = type(lg).__name__
            if name == "WandbLogger":
                lg.log_image("val/panel", [panel.cpu().numpy()], step=self.global_step,
                             caption=[caption])
            elif name == "TensorBoardLogger":
                lg.experiment.add_image("val/panel", panel.permute(2, 0, 1).cpu(),
                                        self.global_step)

    def on_test_end(self) -> None:
        """Final metrics into the W&B run summary; testing is a run's last stage, so the W&B
        run is finished here (that also writes its summary and config files offline)."""
        for lg in self.loggers:
            if type(lg).__name__ == "WandbLogger" and self.trainer.is_global_zero:
                flat = _flatten(self.test_summary())
                lg.experiment.summary.update({f"final/{k}": v for k, v in flat.items()
                                              if isinstance(v, int | float)})
                lg.experiment.finish()

    def save_image(self, rel: str, img: Tensor) -> None:
        if self.output_dir and self.trainer.is_global_zero:
            atomic_write_bytes(Path(self.output_dir) / rel, png_bytes(img))

    def timed_render(self, field, grid, batch) -> tuple[dict, float]:
        t0 = time.perf_counter()
        out = self.render_image(field, grid, batch)
        return out, time.perf_counter() - t0

    @staticmethod
    def n_rays(batch) -> int:
        return int(batch["hw"][0]) * int(batch["hw"][1])

    def summarize_test(self, rows: list[dict] | None = None,
                       field: RadianceField | None = None) -> dict:
        """Mean test metrics of ``rows`` (default: this module's test rows; psnr/ssim only
        where ground truth exists) and the size of ``field`` (default: the trained one)."""
        rows = self._test_rows if rows is None else rows
        field = self.field if field is None else field
        out: dict = {k: float(np.mean([r[k] for r in rows]))
                     for k in ("psnr", "ssim") if rows and all(k in r for r in rows)}
        lp = [r.get("lpips") for r in rows]
        out["lpips"] = float(np.mean(lp)) if lp and all(v is not None for v in lp) else None
        t = sum(r["time"] for r in rows)
        out["fps"] = len(rows) / t if t > 0 else None
        out["render_rays_per_s"] = sum(r.get("rays", 0) for r in rows) / t if t > 0 else None
        out["num_params"] = sum(p.numel() for p in field.parameters())
        out["size_mb"] = sum(t.numel() * t.element_size()
                             for t in field.state_dict().values()) / 2**20
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items()}

    def test_summary(self) -> dict:
        """What ``metrics.json`` holds; distillation overrides it."""
        return self.summarize_test()

    def on_test_epoch_end(self) -> None:
        if self.metrics_path and self.trainer.is_global_zero:
            result = {**self.test_summary(), **self.clock.summary(self.global_step)}
            atomic_write_json(self.metrics_path, result)

    # --- checkpoint ---------------------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        """The module's state, plus (top level only) the field's shape state under
        ``FIELD_EXTRA``: whoever loads it resizes the field first. ``ddp_spawn`` hands rank 0's
        weights back to the main process as a bare state dict, after upsampling or pruning."""
        state = super().state_dict(*args, **kwargs)
        if not args and not kwargs.get("prefix"):
            state[FIELD_EXTRA] = self.field.extra_state_for_checkpoint()
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state_dict = dict(state_dict)
        extra = state_dict.pop(FIELD_EXTRA, None)
        if extra:
            self.field.prepare_load(extra)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def checkpoint_prefixes(self) -> tuple[str, str]:
        return "field.", "grid."

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        prefix, gprefix = self.checkpoint_prefixes()
        checkpoint[KEY] = field_metadata(self.arch, self.field, self.grid, self.grid_cfg,
                                         self.scene, self.background.tolist(), self.n_samples,
                                         prefix, gprefix)
        checkpoint[KEY]["data"] = self.data_cfg
        checkpoint["rng"] = torch.get_rng_state()
        checkpoint["lr_reset_at"] = self.lr_reset_at
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if self.render_cfg.get("target_samples") and dm is not None and dm.data is not None:
            checkpoint["ray_batch_size"] = dm.rays_per_batch

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get(KEY, {})
        state = checkpoint.setdefault("state_dict", {})
        if "clock.state" not in state:  # written before the clock existed: step-paced
            step = int(checkpoint.get("global_step", 0))
            state["clock.state"] = torch.tensor([min(1.0, step / self.clock.max_steps), 0.0,
                                                 step, step], dtype=torch.float64)
        self.field.prepare_load(meta.get("field_extra", {}))
        self._resume_rng = checkpoint.get("rng")  # applied when training starts
        self.lr_reset_at = float(checkpoint.get("lr_reset_at", 0.0))
        self._resume_batch = checkpoint.get("ray_batch_size")

    def on_train_end(self) -> None:
        self._report_deferred()
        msg = self.clock.end_message(self.global_step)
        if msg and self.trainer.is_global_zero:
            log.info(msg)

    def adapt_batch(self, n_samples: int, n_rays: int) -> None:
        """``render.target_samples``: the rays per batch follow a target number of samples per
        step (nerfacc's examples do this), rescaled on logging steps from that step's samples
        per ray (summed over ranks, so every rank takes the same global batch); at most 16x
        the configured ``data.batch_size``. Off (null) on the CPU presets."""
        target = self.render_cfg.get("target_samples")
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if not target or dm is None or not hasattr(dm, "set_batch_size"):
            return
        world = self.trainer.world_size
        counts = torch.tensor([float(n_samples), float(n_rays)], device=self.device)
        if world > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        per_ray = max(float(counts[0]) / max(float(counts[1]), 1.0), 1e-3)
        new = int(min(max(int(target) / per_ray, world), 16 * int(dm.batch_size)))
        dm.set_batch_size(new)
        self.log("train/rays_per_batch", float(new), batch_size=1)

    def on_train_start(self) -> None:
        self.clock.start()
        size = getattr(self, "_resume_batch", None)
        dm = getattr(self.trainer, "datamodule", None)
        if size is not None and dm is not None and hasattr(dm, "set_batch_size"):
            dm.set_batch_size(int(size))  # an adapted batch continues as it was
        rng = getattr(self, "_resume_rng", None)
        if rng is not None:  # exact resume: jitter and occupancy sampling continue alike
            torch.set_rng_state(rng)
            self._resume_rng = None
