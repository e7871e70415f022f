"""Ray-level active learning: replay the rays the student renders worst.

After each stage-3 step the batch's rays are ranked by the student-vs-teacher error; the top
``hard_fraction`` enters a bounded hard-ray pool of ``pool_batches`` batches' worth. Once the pool
is full, every batch gets ``add_fraction`` x batch-size rays sampled from the pool appended (the
teacher gives their targets, so no ground truth is needed); those pool slots are freed and the
step's new hard rays (re-measured replayed rays included) take their place. The pool is always
the ``capacity`` worst of (pool minus replayed) + (this step's hard rays).

Multi-process: the pool is per rank and is not synchronised. Each rank draws a disjoint shard of
every global batch (see ``RayDataModule``), so each rank's pool is the hardest part of its shard
and the union of the per-rank pools is the hard set of the global batches; every rank replays
its own hard rays, and since DDP all-reduces gradients, the global step sees the union, as a
single process with the global batch would. A checkpoint stores rank 0's pool; after a resume
every rank starts from it, which is still a valid set of hard rays of the same scene.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import Tensor


class RayLevel(pl.Callback):
    """Hard-ray pool. ``augment`` before the teacher pass, ``observe`` after it (stage 3)."""

    def __init__(self, hard_fraction: float = 0.1, pool_batches: int = 150,
                 add_fraction: float = 0.1, warmup_steps: int = 0, seed: int = 0) -> None:
        self.hard_fraction, self.add_fraction = float(hard_fraction), float(add_fraction)
        self.pool_batches, self.warmup_steps = int(pool_batches), int(warmup_steps)
        self.seed = int(seed)
        self.batch_size = 0  # real rays per batch, learnt from the first batch
        self.o = self.d = self.err = None  # pool [P, 3], [P, 3], [P]
        self._drawn: Tensor | None = None  # pool slots replayed in the current batch
        self._step = 0
        self._gen: torch.Generator | None = None
        self.last_share = 0.0

    # --- sizes --------------------------------------------------------------------------------
    def per_batch(self, n: int) -> int:
        return math.ceil(self.hard_fraction * n) if n else 0

    @property
    def capacity(self) -> int:
        return self.pool_batches * self.per_batch(self.batch_size)

    @property
    def fill(self) -> int:
        return 0 if self.err is None else int(self.err.shape[0])

    @property
    def full(self) -> bool:
        return self.capacity > 0 and self.fill >= self.capacity

    # --- the two calls the module makes ----------------------------------------------------------
    def augment(self, rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``add_fraction`` x batch rays drawn from the pool once it is full."""
        if not self.batch_size:
            self.batch_size = rays_o.shape[0]
        self._drawn, self.last_share = None, 0.0
        m = min(round(self.add_fraction * rays_o.shape[0]), self.fill)
        if not self.full or m == 0:
            return rays_o, rays_d
        if self._gen is None:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self._gen = torch.Generator().manual_seed(self.seed * 7919 + rank)
        idx = torch.randperm(self.fill, generator=self._gen)[:m].to(self.err.device)
        self._drawn = idx
        self.last_share = m / (rays_o.shape[0] + m)
        o, d = self.o[idx].to(rays_o), self.d[idx].to(rays_d)
        return torch.cat([rays_o, o]), torch.cat([rays_d, d])

    @torch.no_grad()
    def observe(self, rays_o: Tensor, rays_d: Tensor, err: Tensor) -> None:
        """Merge the step's hardest rays into the pool (``err`` [n_rays], higher = harder)."""
        if self._step < self.warmup_steps or self.capacity == 0:
            return
        n_real = rays_o.shape[0] - (0 if self._drawn is None else len(self._drawn))
        k = min(self.per_batch(n_real), err.shape[0])
        top = torch.topk(err.detach(), k).indices
        o, d, e = rays_o.detach()[top], rays_d.detach()[top], err.detach()[top].float()
        if self.err is not None:
            keep = torch.ones(self.fill, dtype=torch.bool, device=self.err.device)
            if self._drawn is not None:
                keep[self._drawn] = False
            o = torch.cat([self.o[keep].to(o), o])
            d = torch.cat([self.d[keep].to(d), d])
            e = torch.cat([self.err[keep].to(e), e])
        if e.shape[0] > self.capacity:
            best = torch.topk(e, self.capacity).indices
            o, d, e = o[best], d[best], e[best]
        self.o, self.d, self.err = o, d, e
        self._drawn = None

    # --- Lightning hooks -----------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = int(getattr(pl_module, "schedule_step", trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        cap = self.capacity
        pl_module.log("al/ray_pool_fill", self.fill / cap if cap else 0.0, batch_size=1)
        pl_module.log("al/ray_hard_share", self.last_share, batch_size=1)

    def state_dict(self) -> dict:
        cpu = (lambda t: None if t is None else t.detach().cpu())
        return {"batch_size": self.batch_size, "o": cpu(self.o), "d": cpu(self.d),
                "err": cpu(self.err)}

    def load_state_dict(self, state: dict) -> None:
        self.batch_size = int(state["batch_size"])
        self.o, self.d, self.err = state["o"], state["d"], state["err"]
        self._drawn = None
