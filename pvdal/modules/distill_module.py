"""Progressive volume distillation: a frozen teacher field trains a student field.

The student reuses the teacher's samples (positions, directions, intervals from the teacher's
occupancy grid), so both see the same volume. The teacher is kept outside the module's
submodules: it is never saved in the student's checkpoint (its path and hash are), never
optimised, and runs under ``no_grad`` in eval mode.
"""

from __future__ import annotations

import logging

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from pvdal.distill.decoder_init import freeze_decoder, transfer_decoder
from pvdal.distill.losses import clamp_raw, match_loss, per_ray_error, psnr_from_mse
from pvdal.distill.recipe import check_options, student_optim
from pvdal.distill.stages import StageSchedule
from pvdal.fields.base import volume_from
from pvdal.io.checkpoint import LoadedField
from pvdal.modules.base import RadianceModule, as_dict
from pvdal.render.march import Samples, march_rays
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.renderer import RenderOutput, composite_output, render_samples

log = logging.getLogger("pvdal")


class DistillModule(RadianceModule):
    def __init__(self, teacher: LoadedField, student_arch, distill, render, grid,
                 output_dir: str | None = None, schedule_steps: int = 10000, data_cfg=None,
                 al_levels: dict | None = None, nan_policy: str = "stop") -> None:
        distill = as_dict(distill)
        check_options(distill)
        student_arch = student_optim(as_dict(student_arch), distill)  # distill.optim wins
        clamp = distill.get("density_clamp")
        self.clamp = tuple(clamp) if clamp is not None else None
        self.early_stop_eps = float(distill.get("early_stop_eps") or 0.0)
        student_arch["field"]["density_clamp"] = list(self.clamp) if self.clamp else None
        render = {**as_dict(render), "n_samples": teacher.n_samples}
        super().__init__(student_arch, render, grid, teacher.scene.as_dict(),
                         teacher.background.tolist(), output_dir, schedule_steps, data_cfg,
                         nan_policy)
        self.save_hyperparameters({"teacher_path": teacher.path, "teacher_sha256": teacher.sha256,
                                   "teacher_arch": teacher.arch, "student_arch": student_arch,
                                   "distill": distill})
        self.cfg = distill
        self.field = instantiate(student_arch["field"], _convert_="all")
        # the student's grid covers the teacher's cells (same resolution, see after_grid_update)
        self.grid_cfg["resolution"] = teacher.grid.resolution
        self.grid = OccupancyGrid(**self.grid_cfg)
        self.grid.load_state_dict(teacher.grid.state_dict())  # start from the teacher's volume
        teacher.field.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # plain attribute: not a submodule, not saved
        t_field = teacher.field
        pair = f"{teacher.arch.get('name')}2{student_arch.get('name')}"
        copied = transfer_decoder(t_field, self.field, distill.get("init_decoder"), pair)
        self._frozen = (freeze_decoder(self.field, copied) if distill.get("freeze_decoder")
                        else set())
        # stage 1 aligns V(x) (16 dims on every side, no projection) or the raw explicit
        # features (through a learned projection where the widths differ)
        self.align = distill.get("align", "features")
        skip = not (t_field.has_color_feature and self.field.has_color_feature)
        if self.align == "features":
            skip = skip or not (t_field.feature_dim and self.field.feature_dim)
        widths = (t_field.color_feature_dim, self.field.color_feature_dim)
        if not skip and widths[0] != widths[1]:  # an imported teacher's width (TensoRF: 27)
            skip = self.align == "volume"  # no common V(x)
            log.info("distill: colour features %d (teacher) and %d (student) wide: the "
                     "per-point colour loss compares RGB%s", *widths,
                     "; no V(x) to align, stage 1 is skipped" if skip else "")
        self.proj = (None if skip or self.align == "volume"
                     or t_field.feature_dim == self.field.feature_dim
                     else nn.Linear(self.field.feature_dim, t_field.feature_dim))
        st = distill["stages"]
        self.schedule = StageSchedule.from_config(st["feat_end"], st["point_end"],
                                                  self.schedule_steps, skip,
                                                  st.get("rgb_ramp") or 0)
        if skip:
            log.info("distill: plenoxels on one side has no intermediate feature; stage 1 "
                     "(feature loss) is skipped")
        self.al = al_levels or {}
        for name, level in self.al.items():
            if isinstance(level, nn.Module):
                self.add_module(f"al_{name}", level)
        self._teacher_val: dict[int, Tensor] = {}

    teacher: LoadedField

    # --- plumbing -----------------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list]:
        """The student's param groups without the frozen decoder tensors (freeze_decoder)."""
        return {k: [p for p in ps if id(p) not in self._frozen]
                for k, ps in self.field.param_groups().items()}

    def extra_param_groups(self) -> list[dict]:
        if self.proj is None:
            return []
        return [{"params": list(self.proj.parameters()), "lr": float(self.arch["lr"]["decoder"]),
                 "name": "projection"}]

    def _teacher_to_device(self) -> None:
        self.teacher.field.to(self.device)
        self.teacher.grid.to(self.device)

    def on_fit_start(self) -> None:
        self._teacher_to_device()

    def on_validation_start(self) -> None:
        self._teacher_to_device()

    def on_test_start(self) -> None:
        self._teacher_to_device()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.field_hooks()

    @torch.no_grad()
    def after_grid_update(self) -> None:
        """The student is only supervised where the teacher samples (the teacher's occupied
        cells); its density elsewhere is untrained, so its saved grid never marks a cell the
        teacher's grid leaves empty (that would render floaters)."""
        keep = self.teacher.grid.binary.to(self.grid.density.device)
        self.grid.density.copy_(torch.where(keep, self.grid.density,
                                            torch.zeros_like(self.grid.density)))
        self.grid.refresh()

    # --- one step -----------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_pass(self, rays_o: Tensor, rays_d: Tensor,
                     background: Tensor | None = None) -> tuple[Samples, RenderOutput]:
        """The teacher's samples and render: the renderer's one path (march -> field -> clamp
        -> composite). With ``early_stop_eps`` > 0 the samples behind the teacher's surfaces
        (transmittance below eps, as nerfacc's early stop) are dropped after its density pass:
        they cannot change a pixel by more than eps, so neither the teacher's colour nor the
        student is evaluated there (on an object about half of all samples). The returned
        ``sigma_raw`` is clamped: the density range constraint is the target's range."""
        T = self.teacher
        samples = march_rays(rays_o, rays_d, T.scene, T.grid, T.n_samples, perturb=True)
        bg = self.background if background is None else background
        t = render_samples(T.field, samples, bg, self.clamp, self.early_stop_eps)
        t.field.sigma_raw = clamp_raw(t.field.sigma_raw, self.clamp)
        return t.samples, t

    def training_step(self, batch, batch_idx):
        step = self.schedule_step  # paced by steps or by budget
        stage = self.schedule.stage(step)
        rays_o, rays_d = batch["rays_o"], batch["rays_d"]  # + replayed hard rays (ray AL)
        # targets: a random background per ray (as in training) makes empty space match exactly
        bg = (torch.rand_like(rays_o) if self.render_cfg.get("random_background", True)
              else self.background)
        samples, t = self.teacher_pass(rays_o, rays_d, bg)
        # losses
        losses, s_rgb, point_mask = self.stage_losses(stage, step, samples, t, bg)
        loss = sum(losses.values())
        reg = self.field.regularizer(samples.positions)
        if reg is not None:
            loss = loss + reg
            losses["reg"] = reg
        checked = self.finite_or_none(loss, losses)
        if checked is not loss:  # skipped: None, or under DDP a zero loss with no update
            return checked
        n, write_logs = rays_o.shape[0], self.log_step()
        if write_logs:
            for k, v in losses.items():
                self.log(f"distill/loss_{k}", v.detach(), batch_size=n)
            self.log("distill/stage", float(stage), batch_size=n)
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n, sync_dist=True)
            self.log("train/samples_per_ray", len(samples) / n, batch_size=n)
            self.adapt_batch(len(samples), n)
            if point_mask is not None:
                self.log("al/point_kept", point_mask.float().mean(), batch_size=1)
        # feedback: the per-ray and per-view errors rank the hard rays and views
        if s_rgb is not None:
            self.feedback(batch, s_rgb.detach(), t.rgb, write_logs)
        return loss

    def feedback(self, batch: dict, s_rgb: Tensor, t_rgb: Tensor, write_logs: bool) -> None:
        """Hand the step's student-vs-teacher errors to the AL levels (stage 3)."""
        if write_logs:
            n = s_rgb.shape[0]
            self.log("train/psnr", psnr_from_mse((s_rgb - t_rgb).square().mean()),
                     prog_bar=True, batch_size=n)
        ray_al = self.al.get("ray")
        if ray_al is not None:
            ray_al.observe(batch["rays_o"], batch["rays_d"], per_ray_error(s_rgb, t_rgb))
        view_al = self.al.get("view")
        if view_al is not None and "cam" in batch:
            m = batch["cam"].shape[0]  # the drawn rays come first
            view_al.observe(batch["cam"], (s_rgb[:m] - t_rgb[:m]).square().mean(-1))

    def stage_losses(self, stage: int, step: int, samples: Samples, t: RenderOutput,
                     bg: Tensor) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
        """The weighted losses of ``stage`` against the teacher's pass ``t``, the student's
        render (stage 3, else None) and the point-level AL mask (or None).

        Stage 1 aligns V(x) (``align=volume``) or the projected explicit features; stage 2
        adds sigma and, per point, the colour feature (features) or the RGB (volume, and
        whenever plenoxels is on a side); stage 3 adds the rendered RGB (MSE, or norm_l2
        when that is the loss type, as in the paper's code)."""
        w, kind = self.cfg["weights"], self.cfg.get("loss_type", "mse")
        s_feat = self.field.features(samples.positions)
        losses: dict[str, Tensor] = {}
        s_out = s_rgb = point_mask = None
        if stage >= 2:
            s_out = self.field.decode(s_feat, samples.dirs)
            if stage == 3:
                s_res, s_w, _, _ = composite_output(samples, s_out, bg, self.clamp)
                s_rgb = s_res["rgb"]
                point_al = self.al.get("point")
                if point_al is not None:
                    point_mask = point_al.select(t.weights, s_w.detach(), samples)
                rgb_kind = "norm_l2" if kind == "norm_l2" else "mse"
                losses["rgb"] = match_loss(s_rgb, t.rgb, rgb_kind) * (
                    float(w["rgb"]) * self.schedule.rgb_scale(step))
            # the raw student density against the clamped teacher: the constraint is the
            # target's range, and a student outside it still gets a gradient back into it
            losses["sigma"] = match_loss(s_out.sigma_raw, t.field.sigma_raw, kind,
                                         point_mask) * float(w["sigma"])
            both_feat = (s_out.color_feat is not None and t.field.color_feat is not None
                         and s_out.color_feat.shape[-1] == t.field.color_feat.shape[-1])
            s_c, t_c = ((s_out.color_feat, t.field.color_feat)
                        if both_feat and self.align == "features" else (s_out.rgb, t.field.rgb))
            losses["color"] = match_loss(s_c, t_c, kind, point_mask) * float(w["color"])
        if not self.schedule.skip_features:
            decay = float(self.cfg.get("feat_decay", 1.0)) ** step
            if self.align == "volume":  # the teacher's sigma_raw is already clamped
                t_vol = volume_from(t.field.sigma_raw, t.field.color_feat)
                s_vol = (self.field.volume(s_feat, self.clamp) if s_out is None else
                         volume_from(s_out.sigma_raw, s_out.color_feat, self.clamp))
                losses["volume"] = match_loss(s_vol, t_vol, kind, point_mask) * float(
                    w["feat"]) * decay
            else:
                proj = self.proj(s_feat) if self.proj is not None else s_feat
                losses["feat"] = match_loss(proj, t.features, kind, point_mask) * float(
                    w["feat"]) * decay
        return losses, s_rgb, point_mask

    # --- evaluation ---------------------------------------------------------------------------
    def _teacher_image(self, batch, cache: bool) -> tuple[dict, float]:
        idx = int(batch["index"])
        if cache and idx in self._teacher_val:
            return self._teacher_val[idx], 0.0
        out, dt = self.timed_render(self.teacher.field, self.teacher.grid, batch)
        if cache:
            self._teacher_val[idx] = out
        return out, dt

    def validation_step(self, batch, batch_idx):
        s = self.render_image(self.field, self.grid, batch)
        t, _ = self._teacher_image(batch, cache=True)
        self.log("val/psnr_vs_teacher", self.image_metrics(s["rgb"], t["rgb"])["psnr"],
                 sync_dist=True, batch_size=1, prog_bar=True)
        tiles = {"teacher": t["rgb"], "student": s["rgb"]}
        if "rgb" in batch:
            gt = batch["rgb"].view_as(s["rgb"])
            m = self.image_metrics(s["rgb"], gt)
            self.log("val/psnr", m["psnr"], sync_dist=True, batch_size=1, prog_bar=True)
            self.log("val/ssim", m["ssim"], sync_dist=True, batch_size=1)
            tiles = {"ground truth": gt, **tiles}
        if batch_idx == 0:
            self.log_panel(tiles, s["depth"])

    def on_test_epoch_start(self) -> None:
        self._test_rows, self._teacher_rows = [], []

    def test_step(self, batch, batch_idx):
        from pvdal import metrics

        s, dt_s = self.timed_render(self.field, self.grid, batch)
        t, dt_t = self._teacher_image(batch, cache=False)
        rays = self.n_rays(batch)
        row_s = {"time": dt_s, "rays": rays,
                 "vs_teacher": self.image_metrics(s["rgb"], t["rgb"])["psnr"]}
        row_t = {"time": dt_t, "rays": rays}
        if "rgb" in batch:
            gt = batch["rgb"].view_as(s["rgb"])
            row_s.update(self.image_metrics(s["rgb"], gt), lpips=metrics.lpips(s["rgb"], gt))
            row_t.update(self.image_metrics(t["rgb"], gt), lpips=metrics.lpips(t["rgb"], gt))
            self.log("test/psnr", row_s["psnr"], sync_dist=True, batch_size=1)
            self.log("test/teacher_psnr", row_t["psnr"], sync_dist=True, batch_size=1)
        self.log("test/psnr_vs_teacher", row_s["vs_teacher"], sync_dist=True, batch_size=1)
        self._test_rows.append(row_s)
        self._teacher_rows.append(row_t)
        self.save_image(f"test_images/{int(batch['index']):03d}.png", s["rgb"])

    def test_summary(self) -> dict:
        import numpy as np

        rows = self._test_rows
        student = self.summarize_test()
        teacher = self.summarize_test(self._teacher_rows, self.teacher.field)
        vs = float(np.mean([r["vs_teacher"] for r in rows])) if rows else None
        return {"student": student, "teacher": teacher, "student_vs_teacher_psnr": vs,
                "teacher_ckpt": self.teacher.path,
                "pair": f"{self.teacher.arch['name']}2{self.arch['name']}"}
