"""View-level active learning: train on new camera poses, focusing on those the student fails.

Distillation needs no images (the teacher renders the targets), so each AL epoch (= one
datamodule epoch, ``data.steps_per_epoch`` steps) after ``warmup_epochs`` trains on the real
poses (``include_real``) plus ``n_views`` drawn poses: random poses on the band of the real
cameras (``CameraBand``), part of them (``pool_share``) replaced, once the hard-view pool is
full, by pool views perturbed by a random rotation of at most ``perturb_angle`` (pi/20).
After the epoch each drawn pose gets a student-vs-teacher PSNR from the rays trained on it; the
hardest ``hard_fraction`` of the random ones enter the pool, a pool view's PSNR is refreshed by
its perturbed copies, and the pool keeps the ``pool_size`` lowest-PSNR views.
``mode: resample`` instead keeps every measured view and draws pool views with probability
softmax((c - PSNR) / T) (c = max PSNR, for stability only), T annealed per epoch.

Multi-process: poses are drawn from a generator seeded by (seed, epoch) and the per-view error
sums and counts are all-reduced before ranking, so every rank holds the same pool and poses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor

from pvdal.data.frames import Frames


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def rotation(axis: Tensor, angle: Tensor) -> Tensor:
    """Rodrigues: unit axes [n, 3], angles [n] -> rotation matrices [n, 3, 3]."""
    x, y, z = axis.unbind(-1)
    o = torch.zeros_like(x)
    K = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).view(-1, 3, 3)
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return torch.eye(3, dtype=K.dtype).expand_as(K) + s * K + (1 - c) * (K @ K)


def radius_elevation(t: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Camera centres [n, 3] -> distance to the origin, elevation above the plane normal to up."""
    r = t.double().norm(dim=-1)
    return r, torch.asin((t.double() / r[:, None].clamp_min(1e-12) @ up).clamp(-1, 1))


def look(z: Tensor, up: Tensor) -> Tensor:
    """Camera rotations [n, 3, 3] (OpenGL: columns x, y, z; the camera looks along -z)."""
    x = _unit(torch.cross(up.expand_as(z), z, dim=-1))
    return torch.stack([x, torch.cross(z, x, dim=-1), z], -1)


@dataclass
class CameraBand:
    """Where real cameras are. Orbit: radius range and elevation percentiles about the mean up
    vector, looking at the origin. Forward-facing: a box around the centres (expanded by
    ``expand`` x its size), looking along the mean view direction."""

    forward_facing: bool
    up: Tensor
    r_lo: float = 0.0
    r_hi: float = 0.0
    el_lo: float = 0.0
    el_hi: float = 0.0
    lo: Tensor | None = None
    hi: Tensor | None = None
    view_dir: Tensor | None = None

    @classmethod
    def from_frames(cls, c2w: Tensor, forward_facing: bool = False,
                    percentiles: tuple[float, float] = (5.0, 95.0),
                    expand: float = 0.1) -> CameraBand:
        c2w = c2w.double()
        up, t = _unit(c2w[:, :, 1].mean(0)), c2w[:, :, 3]
        if forward_facing:
            lo, hi = t.min(0).values, t.max(0).values
            pad = expand * (hi - lo).clamp_min(1e-3)
            return cls(True, up, lo=lo - pad, hi=hi + pad, view_dir=_unit(-c2w[:, :, 2].mean(0)))
        r, el = radius_elevation(t, up)
        q = torch.quantile(el, torch.tensor(percentiles, dtype=el.dtype) / 100)
        lim = math.radians(89.0)  # a camera straight above looks at the origin along up
        return cls(False, up, float(r.min()), float(r.max()), max(float(q[0]), -lim),
                   min(float(q[1]), lim))

    def contains(self, c2w: Tensor, tol: float = 1e-4) -> Tensor:
        if self.forward_facing:
            t = c2w[:, :, 3].double()
            return ((t >= self.lo - tol) & (t <= self.hi + tol)).all(-1)
        r, el = radius_elevation(c2w[:, :, 3], self.up)
        return ((r >= self.r_lo - tol) & (r <= self.r_hi + tol) & (el >= self.el_lo - tol)
                & (el <= self.el_hi + tol))

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        """``n`` random poses [n, 3, 4] on the band (float32)."""
        u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
        if self.forward_facing:
            t = self.lo + u * (self.hi - self.lo)
            R = look(-self.view_dir.expand(n, 3), self.up)
        else:
            r = self.r_lo + u[:, 0] * (self.r_hi - self.r_lo)
            s_lo, s_hi = math.sin(self.el_lo), math.sin(self.el_hi)  # uniform on the sphere
            el = torch.asin(s_lo + u[:, 1] * (s_hi - s_lo))
            az = 2 * math.pi * u[:, 2]
            e1 = _unit(torch.linalg.cross(self.up, torch.eye(3, dtype=self.up.dtype)[
                int(self.up.abs().argmin())]))
            e2 = torch.linalg.cross(self.up, e1)
            d = (el.cos()[:, None] * (az.cos()[:, None] * e1 + az.sin()[:, None] * e2)
                 + el.sin()[:, None] * self.up)
            t, R = r[:, None] * d, look(d, self.up)
        return torch.cat([R, t[:, :, None]], -1).float()

    def perturb(self, c2w: Tensor, angle: float, gen: torch.Generator,
                tries: int = 8) -> Tensor:
        """Rotate poses [n, 3, 4] by a random rotation of at most ``angle`` radians: about the
        origin for orbits (rejecting rotations that leave the band; the last fallback turns about
        ``up``, which keeps radius and elevation), about the camera centre when forward-facing."""
        c2w = c2w.double()
        n, out = c2w.shape[0], c2w.clone()
        todo = torch.ones(n, dtype=torch.bool)
        for i in range(tries + 1):
            axis = (_unit(torch.randn(n, 3, generator=gen, dtype=torch.float64)) if i < tries
                    else self.up.expand(n, 3))
            ang = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * angle
            R = rotation(axis, ang)
            new = torch.cat([R @ c2w[:, :, :3], c2w[:, :, 3:] if self.forward_facing
                             else R @ c2w[:, :, 3:]], -1)
            ok = todo & (self.contains(new) | (i == tries))
            out[ok], todo = new[ok], todo & ~ok
            if not todo.any():
                break
        return out.float()


def with_drawn_views(real: Frames, include_real: bool, c2w: Tensor, intrinsics: Tensor,
                     hw: Tensor) -> Frames:
    """Pose-only frames: the real ones (if ``include_real``), then the drawn ``c2w`` [n, 3, 4]
    with their ``intrinsics`` [n, 4] and ``hw`` [n, 2] (drawn views are undistorted)."""
    r = real if include_real else real.subset([])
    dist = None
    if r.distortion is not None:
        dist = torch.cat([r.distortion, torch.zeros(c2w.shape[0], 4)])
    return Frames(torch.cat([r.c2w, c2w]), torch.cat([r.intrinsics, intrinsics]),
                  torch.cat([r.hw, hw]), None, dist)


def schedule_epoch(trainer, pl_module) -> int:
    """The epoch of the run's schedule (data.steps_per_epoch schedule steps each): the real
    epoch unless a time budget paces the run (modules/clock.py), so warm-ups scale with it."""
    step = getattr(pl_module, "schedule_step", None)
    dm = getattr(trainer, "datamodule", None)
    per = getattr(dm, "steps", None)  # data.steps_per_epoch
    if step is None or not per:
        return int(trainer.current_epoch)
    return int(step) // int(per)


class ViewLevel(pl.Callback):
    """Hands the datamodule each AL epoch's frames (``set_train_frames``); ``observe``
    accumulates."""

    def __init__(self, band: CameraBand, real: Frames, mode: str = "pool",
                 include_real: bool = True, n_views: int = 100, warmup_epochs: int = 3,
                 hard_fraction: float = 0.1, pool_size: int = 30, pool_share: float = 0.5,
                 perturb_angle: float = math.pi / 20, temperature: float = 1.0,
                 temperature_decay: float = 0.9, temperature_min: float = 0.05,
                 seed: int = 0) -> None:
        self.band, self.mode = band, mode
        self.real = Frames(real.c2w, real.intrinsics, real.hw, None, real.distortion)
        self.include_real, self.n_views, self.warmup = include_real, n_views, warmup_epochs
        self.hard_fraction, self.pool_size, self.pool_share = hard_fraction, pool_size, pool_share
        self.angle, self.seed = perturb_angle, seed
        self.t0, self.t_decay, self.t_min = temperature, temperature_decay, temperature_min
        self.pool = {"c2w": torch.zeros(0, 3, 4), "intrinsics": torch.zeros(0, 4),  # hard views
                     "hw": torch.zeros(0, 2, dtype=torch.long), "psnr": torch.zeros(0)}
        self.epoch: int | None = None  # epoch whose drawn views are being measured
        self.frames: Frames | None = None
        self.parent = torch.zeros(0, dtype=torch.long)  # drawn view -> pool index, -1 = random
        self.sums = self.counts = None
        self.last_hard_psnr = float("nan")

    @property
    def fill(self) -> int:
        return int(self.pool["psnr"].shape[0])

    def temperature(self, epoch: int) -> float:
        return max(self.t_min, self.t0 * self.t_decay ** max(epoch - self.warmup, 0))

    # --- drawing ---------------------------------------------------------------------------
    def draw(self, epoch: int, sched_epoch: int | None = None) -> tuple[Frames, Tensor]:
        """This epoch's frames (real + drawn) and each drawn view's pool parent (-1: random);
        ``sched_epoch`` (default ``epoch``) sets the resampling temperature."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        ready = self.fill >= self.pool_size if self.mode == "pool" else self.fill > 0
        n_pool = round(self.pool_share * self.n_views) if ready and self.fill else 0
        if self.mode == "resample" and n_pool:
            psnr = self.pool["psnr"].double()
            t = self.temperature(epoch if sched_epoch is None else sched_epoch)
            p = torch.softmax((psnr.max() - psnr) / t, 0)
            parent = torch.multinomial(p, n_pool, replacement=True, generator=gen)
        else:
            parent = torch.randint(self.fill or 1, (n_pool,), generator=gen)
        src = torch.randint(len(self.real), (self.n_views - n_pool,), generator=gen)
        c2w = torch.cat([self.band.perturb(self.pool["c2w"][parent], self.angle, gen),
                         self.band.sample(self.n_views - n_pool, gen)])
        intr = torch.cat([self.pool["intrinsics"][parent], self.real.intrinsics[src]])
        hw = torch.cat([self.pool["hw"][parent], self.real.hw[src]])
        parent = torch.cat([parent, torch.full((len(src),), -1, dtype=torch.long)])
        frames = with_drawn_views(self.real, self.include_real, c2w, intr, hw)
        n_real = len(frames) - self.n_views
        return frames, torch.cat([torch.full((n_real,), -2, dtype=torch.long), parent])

    def observe(self, cam: Tensor, per_ray_mse: Tensor) -> None:
        """Accumulate per-view error of the real batch's rays (``cam`` indexes train_frames)."""
        if self.sums is None:
            return
        self.sums.index_add_(0, cam.to(self.sums.device), per_ray_mse.detach().to(self.sums))
        self.counts.index_add_(0, cam.to(self.sums.device),
                               torch.ones_like(per_ray_mse, dtype=self.counts.dtype))

    # --- ranking ---------------------------------------------------------------------------
    def update_pool(self, psnr: Tensor, seen: Tensor) -> None:
        """Merge one epoch's measurements (per frame of ``self.frames``) into the pool."""
        psnr, seen, parent = psnr.cpu().float(), seen.cpu(), self.parent
        pool = {k: v.clone() for k, v in self.pool.items()}
        for j in range(self.fill):  # refresh pool views by their perturbed copies
            kids = seen & (parent == j)
            if kids.any():
                pool["psnr"][j] = psnr[kids].mean()
        cand = torch.nonzero(seen & (parent == -1)).flatten()
        if self.mode == "pool":
            k = math.ceil(self.hard_fraction * len(cand))
            cand = cand[torch.argsort(psnr[cand], stable=True)[:k]]
        self.last_hard_psnr = float(psnr[cand].mean()) if len(cand) else float("nan")
        f = self.frames
        pool = {k: torch.cat([pool[k], new]) for k, new in (
            ("c2w", f.c2w[cand]), ("intrinsics", f.intrinsics[cand]), ("hw", f.hw[cand]),
            ("psnr", psnr[cand]))}
        keep = torch.argsort(pool["psnr"], stable=True)[:self.pool_size]
        self.pool = {k: v[keep] for k, v in pool.items()}

    # --- Lightning hooks -------------------------------------------------------------------
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        e, se = int(trainer.current_epoch), schedule_epoch(trainer, pl_module)
        if se < self.warmup:
            return
        if self.epoch != e or self.frames is None:  # else resumed mid-epoch: keep the sums
            self.frames, self.parent = self.draw(e, se)
            n = len(self.frames)
            self.sums = torch.zeros(n, dtype=torch.float64, device=pl_module.device)
            self.counts = torch.zeros(n, dtype=torch.float64, device=pl_module.device)
            self.epoch = e
        self.sums, self.counts = self.sums.to(pl_module.device), self.counts.to(pl_module.device)
        trainer.datamodule.set_train_frames(self.frames)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.sums is None or self.epoch != int(trainer.current_epoch):
            return
        sums, counts = self.sums.clone(), self.counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        seen = counts > 0
        psnr = -10 * torch.log10((sums / counts.clamp_min(1)).clamp_min(1e-10))
        self.update_pool(psnr, seen)
        self.epoch, self.sums, self.counts = None, None, None
        pl_module.log("al/view_pool_fill", self.fill / max(self.pool_size, 1), sync_dist=True)
        if not math.isnan(self.last_hard_psnr):
            pl_module.log("al/view_hard_psnr", self.last_hard_psnr, sync_dist=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.datamodule is not None and trainer.datamodule.data is not None:
            trainer.datamodule.set_train_frames(None)

    def state_dict(self) -> dict:
        """The pool, and the current epoch's views and sums (a mid-epoch resume keeps them)."""
        f, cur = self.frames, None
        if self.epoch is not None and f is not None:
            cur = {"epoch": self.epoch, "c2w": f.c2w, "intrinsics": f.intrinsics, "hw": f.hw,
                   "distortion": f.distortion, "parent": self.parent,
                   "sums": self.sums.cpu(), "counts": self.counts.cpu()}
        return {"pool": {k: v.clone() for k, v in self.pool.items()}, "current": cur}

    def load_state_dict(self, state: dict) -> None:
        self.pool = {k: v.clone() for k, v in state["pool"].items()}
        self.epoch = self.frames = self.sums = self.counts = None
        if (cur := state.get("current")) is not None:
            self.epoch, self.parent, self.sums, self.counts = (
                int(cur["epoch"]), cur["parent"], cur["sums"], cur["counts"])
            self.frames = Frames(cur["c2w"], cur["intrinsics"], cur["hw"], None,
                                 cur["distortion"])
