"""Train any RadianceField from images (``train.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from pvdal import metrics
from pvdal.modules.base import RadianceModule
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.renderer import render_rays

EARLY_STOP_KEEP = 0.75  # early termination runs while it keeps fewer than this share of samples


class FieldModule(RadianceModule):
    def __init__(self, arch, render, grid, scene, background, output_dir=None,
                 schedule_steps: int = 10000, data_cfg=None, nan_policy: str = "stop") -> None:
        super().__init__(arch, render, grid, scene, background, output_dir, schedule_steps,
                         data_cfg, nan_policy)
        # plain containers only, so Lightning's weights-only resume can read them
        self.save_hyperparameters({"arch": self.arch, "render": self.render_cfg,
                                   "grid": self.grid_cfg, "scene": self.scene.as_dict(),
                                   "background": [float(v) for v in background],
                                   "schedule_steps": self.schedule_steps,
                                   "data": self.data_cfg, "nan_policy": nan_policy})
        self.random_background = bool(self.render_cfg.get("random_background", True))
        self.field = instantiate(self.arch["field"], _convert_="all")
        self.grid = OccupancyGrid(**self.grid_cfg)
        self._early_stop_pays = False  # a young field hides little: the first log decides

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.field_hooks()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["early_stop_pays"] = self._early_stop_pays  # a resumed run decides alike

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._early_stop_pays = bool(checkpoint.get("early_stop_pays", False))

    def training_step(self, batch, batch_idx):
        bg, target = self.background, batch["rgb"]
        if self.random_background and "alpha" in batch:
            # re-composite the ground truth on a random colour per ray (instant-ngp): empty
            # space can then only match every background with zero density
            bg = torch.rand_like(target)
            target = target + (bg - self.background) * (1.0 - batch["alpha"][:, None])
        eps, write_logs = float(self.render_cfg.get("early_stop_eps") or 0.0), self.log_step()
        # the no-grad density pass costs ~1/3 of a training pass: it runs while it drops enough
        # (measured on logging steps, which always run it)
        out = render_rays(self.field, batch["rays_o"], batch["rays_d"], self.scene, self.grid,
                          self.n_samples, bg, perturb=True,
                          early_stop_eps=eps if (write_logs or self._early_stop_pays) else 0.0)
        mse = F.mse_loss(out.rgb, target)
        loss, terms = mse, {"rgb": mse}
        reg = self.field.regularizer(out.samples.positions)
        if reg is not None:
            loss, terms["reg"] = loss + reg, reg
        checked = self.finite_or_none(loss, terms)
        if checked is not loss:  # skipped: None, or under DDP a zero loss with no update
            return checked
        if write_logs:
            n = batch["rays_o"].shape[0]
            if eps > 0.0 and out.n_marched:
                kept = len(out.samples) / out.n_marched
                self._early_stop_pays = kept < EARLY_STOP_KEEP
                self.log("train/early_stop_kept", kept, batch_size=n)
            if reg is not None:
                self.log("train/reg", reg.detach())
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n, sync_dist=True)
            self.log("train/psnr", -10 * torch.log10(mse.detach()), prog_bar=True, batch_size=n)
            self.log("train/samples_per_ray", out.samples.positions.shape[0] / n, batch_size=n)
            self.adapt_batch(len(out.samples), n)
        return loss

    def validation_step(self, batch, batch_idx):
        out = self.render_image(self.field, self.grid, batch)
        gt = batch["rgb"].view_as(out["rgb"])
        m = self.image_metrics(out["rgb"], gt)
        self.log("val/psnr", m["psnr"], sync_dist=True, batch_size=1, prog_bar=True)
        self.log("val/ssim", m["ssim"], sync_dist=True, batch_size=1)
        if batch_idx == 0:
            self.log_panel({"ground truth": gt, "render": out["rgb"]}, out["depth"])

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch, batch_idx):
        out, dt = self.timed_render(self.field, self.grid, batch)
        gt = batch["rgb"].view_as(out["rgb"])
        m = self.image_metrics(out["rgb"], gt)
        m["lpips"] = metrics.lpips(out["rgb"], gt)
        self._test_rows.append({**m, "time": dt, "rays": self.n_rays(batch)})
        self.log("test/psnr", m["psnr"], sync_dist=True, batch_size=1)
        self.log("test/ssim", m["ssim"], sync_dist=True, batch_size=1)
        self.save_image(f"test_images/{int(batch['index']):03d}.png", out["rgb"])
