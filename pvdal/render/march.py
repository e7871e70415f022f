"""Ray marching: candidate samples along each ray, empty space skipped with the occupancy grid.

Bounded scenes use a fixed step (``step_size``) inside the unit box, as instant-ngp does, so a
sample's opacity means the same everywhere. Unbounded scenes march the same step in contracted
(field) space: linearly through the inner box (field = world / 2), then out to ``far``
(``contracted_table``), so the world step grows with distance (about as the squared distance
from the scene centre, the contraction's 1/r^2 slope) and a ray gets as many samples as its
field path is long. The step stays below one cell of the default 64^3 grid with 128 samples, so
the occupancy grid sees every cell a ray crosses (tests/test_sampling.py). Rays that miss the box
march this way from ``near``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.rays import ray_aabb_intersect
from pvdal.render.scene import SceneSpec, unit_aabb


@dataclass
class Samples:
    """Packed samples of a ray batch (nerfacc's layout: only kept samples exist).

    ``ray_indices`` is sorted; ``starts``/``ends`` are each kept sample's interval. The candidate
    layout the marcher drew them from stays available as ``mask``/``t_starts``/``t_ends``
    ([n_rays, S]) for the dense reference path and tests (``scatter``)."""

    mask: Tensor  # [n_rays, S] bool, sample evaluated
    t_starts: Tensor  # [n_rays, S]
    t_ends: Tensor  # [n_rays, S]
    positions: Tensor  # [M, 3] field coordinates of kept samples (in [-1, 1]^3)
    dirs: Tensor  # [M, 3] unit view directions of kept samples
    ray_indices: Tensor  # [M] ray of each kept sample, sorted
    starts: Tensor | None = None  # [M] interval start of each kept sample
    ends: Tensor | None = None  # [M] interval end

    def __post_init__(self) -> None:
        if self.starts is None:
            self.starts = self.t_starts[self.mask]
        if self.ends is None:
            self.ends = self.t_ends[self.mask]

    @property
    def n_rays(self) -> int:
        return self.mask.shape[0]

    @property
    def t_mid(self) -> Tensor:
        return 0.5 * (self.t_starts + self.t_ends)

    @property
    def deltas(self) -> Tensor:
        return self.t_ends - self.t_starts

    @property
    def mid(self) -> Tensor:
        """[M] midpoint of each kept sample's interval."""
        return 0.5 * (self.starts + self.ends)

    def __len__(self) -> int:
        return self.positions.shape[0]

    def scatter(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """Packed [M, ...] -> dense [n_rays, S, ...] with ``fill`` at skipped samples."""
        out = values.new_full((*self.mask.shape, *values.shape[1:]), fill)
        return out.index_put((*torch.nonzero(self.mask, as_tuple=True),), values)

    def keep(self, packed: Tensor) -> Samples:
        """The kept samples where ``packed`` ([M] bool) is True; the rest become skipped."""
        mask = self.mask.clone()
        mask[self.mask] = packed  # boolean indexing visits kept samples in packed order
        return Samples(mask, self.t_starts, self.t_ends, self.positions[packed],
                       self.dirs[packed], self.ray_indices[packed], self.starts[packed],
                       self.ends[packed])

    def select(self, ray_ids: Tensor) -> Samples:
        """The samples of a subset of rays, in the order of ``ray_ids`` (active learning)."""
        keep = torch.zeros(self.n_rays, dtype=torch.bool, device=self.mask.device)
        keep[ray_ids] = True
        pk = keep[self.ray_indices]
        remap = torch.full((self.n_rays,), -1, dtype=torch.long, device=self.mask.device)
        remap[ray_ids] = torch.arange(len(ray_ids), device=self.mask.device)
        ri = remap[self.ray_indices[pk]]
        order = torch.argsort(ri, stable=True)  # packed samples stay sorted by ray
        return Samples(self.mask[ray_ids], self.t_starts[ray_ids], self.t_ends[ray_ids],
                       self.positions[pk][order], self.dirs[pk][order], ri[order],
                       self.starts[pk][order], self.ends[pk][order])


def default_step_size(n_samples: int) -> float:
    """Step that crosses the unit box's diagonal in ``n_samples`` steps."""
    return 2.0 * math.sqrt(3.0) / n_samples


MAX_FIELD_PATH = 2.6  # field length of a ray through the contracted scene: the inner box's
# diagonal (sqrt 3) and a diagonal way out of the shell (sqrt 3 / 2); longer ones are rare


def unbounded_slots(n_samples: int) -> int:
    """Candidate slots per ray in a contracted scene: enough for ``MAX_FIELD_PATH`` at the
    bounded step (``default_step_size``); a ray uses as many as its field path needs."""
    return math.ceil(MAX_FIELD_PATH / default_step_size(n_samples))


def sample_t(
    rays_o: Tensor, rays_d: Tensor, scene: SceneSpec, n_samples: int, perturb: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate intervals. Returns t_starts, t_ends [n_rays, S] and valid [n_rays, S]."""
    n = rays_o.shape[0]
    dev = rays_o.device
    t_near, t_far = ray_aabb_intersect(rays_o, rays_d, unit_aabb(dev))
    t_near = t_near.clamp_min(scene.near)
    u = torch.rand(n, 1, device=dev) if perturb else torch.full((n, 1), 0.5, device=dev)
    if not scene.contraction:
        step = default_step_size(n_samples)
        edges = t_near[:, None] + (torch.arange(n_samples + 1, device=dev) + u - 0.5) * step
        edges = torch.maximum(edges, t_near[:, None])
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]
        valid = (t_starts < t_far[:, None]) & (t_far > t_near)[:, None]
        return t_starts, torch.minimum(t_ends, t_far[:, None].clamp_min(0)), valid
    # rays through the unit box: linear inside it, then out to ``far``, at one step of
    # contracted (field) space: the bounded scene's step (field = world / 2 inside the box), so
    # a ray gets as many samples as its field path is long. Rays that miss it: all past ``near``
    miss = t_far <= t_near
    t_lo = torch.where(miss, torch.full_like(t_near, scene.near), t_near)[:, None]
    t_box = torch.where(miss, t_lo[:, 0], torch.maximum(t_far, t_near + 1e-3))[:, None]
    t_tab, cum = contracted_table(rays_o, rays_d, scene, t_box)
    inner = torch.where(miss[:, None], 0.0, 0.5 * (t_box - t_lo))
    path = (inner + cum[:, -1:]).clamp_min(1e-9)  # [n_rays, 1] field length of the ray
    frac_in = inner / path
    n_slots = unbounded_slots(n_samples)
    # a ray longer than the slots (rare: grazing the box) takes a longer step to reach ``far``
    step = torch.clamp_min(path / n_slots, default_step_size(n_samples))
    s = ((torch.arange(n_slots + 1, device=dev) + u - 0.5).clamp_min(0) * step / path).clamp(max=1)
    lin = t_lo + (t_box - t_lo) * (s / frac_in.clamp_min(1e-9)).clamp(max=1.0)
    s_out = ((s - frac_in) / (1.0 - frac_in).clamp_min(1e-9)).clamp(0.0, 1.0)
    edges = torch.where(s <= frac_in, lin, invert_table(t_tab, cum, s_out))
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    return t_starts, t_ends, t_ends > t_starts


def contracted_table(
    rays_o: Tensor, rays_d: Tensor, scene: SceneSpec, t_start: Tensor, size: int = 512,
) -> tuple[Tensor, Tensor]:
    """A geometric table of distances from ``t_start`` [n_rays, 1] to ``far`` and the
    cumulative path length in contracted (field) space at each: ([n_rays, size], same)."""
    g = torch.linspace(0.0, 1.0, size, device=rays_o.device)
    t0 = t_start.clamp_min(1e-4)
    t_tab = t0 * (scene.far / t0).clamp_min(1.0 + 1e-6) ** g
    x = scene.to_field(rays_o[:, None] + t_tab[..., None] * rays_d[:, None])
    seg = (x[:, 1:] - x[:, :-1]).norm(dim=-1)
    return t_tab, torch.cat([torch.zeros_like(seg[:, :1]), torch.cumsum(seg, dim=-1)], dim=-1)


def invert_table(t_tab: Tensor, cum: Tensor, q: Tensor) -> Tensor:
    """Distances [n_rays, K] at fractions ``q`` [n_rays, K] of each ray's contracted path
    length (linear interpolation in the table): equal ``q`` steps are equal field steps."""
    target = (cum[:, -1:] * q).contiguous()
    i = torch.searchsorted(cum.contiguous(), target).clamp(1, cum.shape[1] - 1)
    c0, c1 = cum.gather(1, i - 1), cum.gather(1, i)
    ta, tb = t_tab.gather(1, i - 1), t_tab.gather(1, i)
    w = ((target - c0) / (c1 - c0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return ta + w * (tb - ta)


def march_rays(
    rays_o: Tensor,  # [n_rays, 3]
    rays_d: Tensor,  # [n_rays, 3] unit
    scene: SceneSpec,
    grid: OccupancyGrid | None,
    n_samples: int,
    perturb: bool = False,
) -> Samples:
    """Sample every ray and keep the samples that fall in occupied cells."""
    t_starts, t_ends, valid = sample_t(rays_o, rays_d, scene, n_samples, perturb)
    t_mid = 0.5 * (t_starts + t_ends)
    x = scene.to_field(rays_o[:, None, :] + t_mid[..., None] * rays_d[:, None, :])
    mask = valid & (x.abs() <= 1.0).all(dim=-1)
    if grid is not None:
        mask = mask & grid.occupied(x)
    ray_indices, sample_ids = torch.nonzero(mask, as_tuple=True)
    return Samples(mask, t_starts, t_ends, x[ray_indices, sample_ids],
                   rays_d[ray_indices], ray_indices)
