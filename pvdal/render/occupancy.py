"""Occupancy grid over the field domain [-1, 1]^3: density EMA, threshold, periodic update.

State (``density``) is a persistent buffer, so it is checkpointed; the boolean ``binary`` is
derived from it and rebuilt after loading. Under DDP the EMA is all-reduced (max) so every
rank marches the same samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _refresh_after_load(module: OccupancyGrid, _keys) -> None:
    module.refresh()  # module-level (not a lambda) so the grid pickles for ddp_spawn


class OccupancyGrid(nn.Module):
    def __init__(
        self,
        resolution: int = 64,
        threshold: float = 0.01,  # on opacity = density * step_size, as nerfacc
        ema_decay: float = 0.95,
        update_every: int = 16,
        warmup_steps: int = 256,
        sample_fraction: float = 0.25,  # share of cells re-evaluated after warm-up (+ occupied)
    ) -> None:
        super().__init__()
        if resolution < 2:
            raise ValueError(f"occupancy grid resolution must be >= 2, got {resolution}")
        self.resolution, self.threshold, self.ema_decay = resolution, threshold, ema_decay
        self.update_every, self.warmup_steps = update_every, warmup_steps
        self.sample_fraction = sample_fraction
        n = resolution**3
        self.register_buffer("density", torch.full((n,), -1.0))  # -1: never evaluated
        self.register_buffer("binary", torch.ones(n, dtype=torch.bool), persistent=False)
        self.register_buffer("step_size", torch.tensor(1.0))  # marching step the EMA refers to
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # --- lookup --------------------------------------------------------------------------
    def cell_index(self, x: Tensor) -> Tensor:
        """x: [..., 3] in [-1, 1] -> flat cell index [...]."""
        R = self.resolution
        ijk = ((x + 1.0) * 0.5 * R).long().clamp(0, R - 1)
        return (ijk[..., 0] * R + ijk[..., 1]) * R + ijk[..., 2]

    def occupied(self, x: Tensor) -> Tensor:
        """x: [..., 3] -> bool [...]; points outside [-1, 1]^3 are empty."""
        inside = (x.abs() <= 1.0).all(dim=-1)
        return self.binary[self.cell_index(x)] & inside

    def cell_centers(self, idx: Tensor | None = None) -> Tensor:
        R = self.resolution
        if idx is None:
            idx = torch.arange(R**3, device=self.density.device)
        ijk = torch.stack([idx // (R * R), (idx // R) % R, idx % R], dim=-1).float()
        return (ijk + 0.5) / R * 2.0 - 1.0

    # --- update ----------------------------------------------------------------------------
    def should_update(self, step: int) -> bool:
        return self.update_every > 0 and step > 0 and step % self.update_every == 0

    @torch.no_grad()
    def update(self, step: int, density_fn: Callable[[Tensor], Tensor], step_size: float,
               chunk: int = 65536) -> None:
        """Re-evaluate cells at a random point inside each and fold into the EMA."""
        self.step_size.fill_(step_size)
        n, R = self.density.numel(), self.resolution
        dev = self.density.device
        if step < self.warmup_steps:
            idx = torch.arange(n, device=dev)
        else:
            occ = torch.nonzero(self.density * step_size > self.threshold).flatten()
            rnd = torch.randint(0, n, (int(n * self.sample_fraction),), device=dev)
            idx = torch.unique(torch.cat([occ, rnd]))
        x = self.cell_centers(idx) + (torch.rand(idx.numel(), 3, device=dev) - 0.5) * (2.0 / R)
        vals = torch.cat([density_fn(c) for c in x.split(chunk)]) if idx.numel() else x[:, 0]
        new = self.density.clone()
        decayed = torch.where(new[idx] < 0, torch.zeros_like(vals), new[idx] * self.ema_decay)
        new[idx] = torch.maximum(decayed, vals.float())
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(new, op=dist.ReduceOp.MAX)
        self.density.copy_(new)
        self.refresh()

    @torch.no_grad()
    def refresh(self, step_size: float | None = None) -> None:
        """Rebuild ``binary`` from the EMA (never-evaluated cells count as occupied)."""
        if step_size is not None:
            self.step_size.fill_(step_size)
        opacity = self.density.clamp_min(0) * self.step_size
        evaluated = self.density >= 0
        thre = min(self.threshold, float(opacity[evaluated].mean())) if evaluated.any() else 0.0
        self.binary = (opacity >= thre) | ~evaluated  # >=: a uniform field stays occupied

    def occupancy_fraction(self) -> float:
        return float(self.binary.float().mean())
