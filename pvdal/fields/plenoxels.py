"""Plenoxels field: a sparse voxel grid of density + SH coefficients, trilinearly interpolated.

features(x) = the 28 interpolated values (sigma_raw, 27 SH coefficients); decode has no learned
parameters: sigma_raw = feat[:, 0], rgb = sigmoid(SH(d) . coeffs). There is no colour feature.

Storage is sparse: ``index`` [(R+1)^3] maps lattice points (the corners of R^3 cells spanning
[-1, 1]^3) to rows of the compact ``table`` [N, 28]; -1 marks a pruned point, which contributes
zero SH and ``empty_sigma_raw`` density. Memory follows the occupied volume. Coarse-to-fine:
upsampling resamples the field at the new lattice points (doubling R keeps the field exactly);
pruning drops points whose whole 3x3x3 neighbourhood is below ``prune_threshold``.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvdal.encodings.sh import sh_basis
from pvdal.fields.base import FieldOutput, RadianceField

log = logging.getLogger("pvdal")


def _refresh_after_load(module: PlenoxelsField, _keys) -> None:
    module._refresh_rows()  # module-level (not a lambda) so the field pickles for ddp_spawn


class PlenoxelsField(RadianceField):
    has_color_feature = False

    def __init__(
        self,
        resolution: tuple[int, ...] = (32, 64, 128),
        upsample_steps: tuple[int, ...] = (500, 1500),
        prune_steps: tuple[int, ...] = (500, 1500),
        prune_threshold: float = 0.5,
        prune_with_grid: bool = True,
        init_density: float = 0.2,
        empty_sigma_raw: float = -10.0,
        sh_degree: int = 3,
        tv_density: float = 1e-3,
        tv_sh: float = 1e-3,
        tv_samples: int = 16384,
        density_clamp: tuple[float, float] | None = None,
    ) -> None:
        """``resolution``: cells per axis for each stage (one more than ``upsample_steps``);
        ``prune_threshold``: on the activated density; ``init_density``: activated density of the
        initial (semi-transparent) volume; ``sh_degree``: SH bands (3 -> 9 coefficients);
        ``tv_*``: weights of the squared-difference TV on a random ``tv_samples`` points."""
        super().__init__(density_clamp)
        self.resolutions = [int(r) for r in resolution]
        self.upsample_steps = [int(s) for s in upsample_steps]
        if len(self.resolutions) != len(self.upsample_steps) + 1:
            raise ValueError("plenoxels: need len(resolution) == len(upsample_steps) + 1")
        self.prune_steps = {int(s) for s in prune_steps}
        self.prune_threshold, self.prune_with_grid = prune_threshold, prune_with_grid
        self.empty_sigma_raw = empty_sigma_raw
        self.sh_degree = sh_degree
        self.n_sh = sh_degree**2
        self.feature_dim = 1 + 3 * self.n_sh
        self.tv_density, self.tv_sh, self.tv_samples = tv_density, tv_sh, tv_samples
        n = (self.resolutions[0] + 1) ** 3
        table = torch.zeros(n, self.feature_dim)
        # a little noise: a perfectly uniform field sits exactly at the occupancy grid's
        # mean-opacity threshold, and nothing would be marked occupied
        table[:, 0] = math.log(init_density) + 0.01 * torch.randn(n)
        self.table = nn.Parameter(table)
        self.register_buffer("corners", torch.zeros(8, dtype=torch.long), persistent=False)
        self._set_resolution(self.resolutions[0])
        self.register_buffer("index", torch.arange(n, dtype=torch.int32))
        self.register_buffer("row_vertex", torch.arange(n), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # --- layout helpers -------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return self.table.shape[0]

    def _set_resolution(self, resolution: int) -> None:
        self.resolution = resolution
        V = resolution + 1
        corners = itertools.product((0, 1), repeat=3)
        self.corners = torch.tensor([(a * V + b) * V + c for a, b, c in corners],
                                    device=self.table.device)

    def _refresh_rows(self) -> None:
        """Rebuild ``row_vertex`` (row -> flat lattice index), the inverse of ``index``."""
        verts = torch.nonzero(self.index >= 0).flatten()
        rv = torch.empty(self.n_rows, dtype=torch.long, device=self.index.device)
        rv[self.index[verts].long()] = verts
        self.row_vertex = rv

    def _set_layout(self, resolution: int, values: Tensor, verts: Tensor) -> None:
        """Replace the grid: ``values`` [N, C] become the rows of lattice points ``verts`` [N]."""
        index = torch.full(((resolution + 1) ** 3,), -1, dtype=torch.int32, device=values.device)
        index[verts] = torch.arange(verts.numel(), dtype=torch.int32, device=values.device)
        self.index = index
        self.table = nn.Parameter(values.contiguous())
        self._set_resolution(resolution)
        self._refresh_rows()

    def _lattice_points(self, verts: Tensor, resolution: int) -> Tensor:
        """Flat lattice indices [N] -> positions [N, 3] in [-1, 1]."""
        V = resolution + 1
        ijk = torch.stack([verts // (V * V), (verts // V) % V, verts % V], dim=-1)
        return ijk.float() / resolution * 2.0 - 1.0

    # --- the two halves -------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        R, M = self.resolution, x.shape[0]
        V = R + 1
        p = ((x + 1.0) * 0.5 * R).clamp(0.0, float(R))
        p0 = p.floor().clamp(max=R - 1)
        f = p - p0
        p0 = p0.long()
        base = (p0[:, 0] * V + p0[:, 1]) * V + p0[:, 2]
        rows = self.index[base[:, None] + self.corners]  # [M, 8]
        live = rows >= 0
        wx, wy, wz = (torch.stack([1.0 - f[:, i], f[:, i]], dim=-1) for i in range(3))
        w = (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :]).reshape(M, 8)
        vals = self.table.index_select(0, rows.clamp_min(0).reshape(-1))
        vals = vals.view(M, 8, self.feature_dim)
        out = torch.bmm((w * live)[:, None, :], vals)[:, 0]  # [M, C]
        empty = (w * ~live).sum(dim=1, keepdim=True) * self.empty_sigma_raw
        return torch.cat([out[:, :1] + empty, out[:, 1:]], dim=-1)

    def density_raw(self, feat: Tensor) -> Tensor:
        return feat[:, 0]

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        coeffs = feat[:, 1:].view(-1, 3, self.n_sh)
        rgb = torch.sigmoid((coeffs * sh_basis(d, self.sh_degree)[:, None, :]).sum(-1))
        return FieldOutput(feat[:, 0], None, rgb)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"features": [self.table], "decoder": []}

    # --- training hooks ---------------------------------------------------------------------
    def regularizer(self, x: Tensor | None = None) -> Tensor | None:
        """Squared-difference TV to the +x/+y/+z neighbours of random live lattice points."""
        if (self.tv_density <= 0 and self.tv_sh <= 0) or self.n_rows == 0:
            return None
        R, V = self.resolution, self.resolution + 1
        rows = torch.randint(0, self.n_rows, (min(self.tv_samples, self.n_rows),),
                             device=self.table.device)
        v = self.row_vertex[rows]
        ijk = torch.stack([v // (V * V), (v // V) % V, v % V], dim=-1)
        here = self.table[rows]
        tv_d = tv_s = here.new_zeros(())
        for axis, stride in enumerate((V * V, V, 1)):
            inside = ijk[:, axis] < R
            nb = self.index[torch.where(inside, v + stride, v)]
            ok = (inside & (nb >= 0)).float()[:, None]
            sq = (self.table[nb.clamp_min(0).long()] - here).square() * ok
            tv_d = tv_d + sq[:, 0].mean()
            tv_s = tv_s + sq[:, 1:].mean()
        return self.tv_density * tv_d + self.tv_sh * tv_s

    def on_step(self, step: int, density_fn_grid=None, prev_step: int | None = None) -> bool:
        """Prune when ``step`` reaches a ``prune_steps`` entry, then upsample once it reaches an
        ``upsample_steps`` entry (the resolution follows the step, so a resumed run stays on
        schedule)."""
        changed = False
        prev = step - 1 if prev_step is None else prev_step
        if any(prev < s <= step for s in self.prune_steps):
            changed |= self.prune(density_fn_grid)
        target = self.resolutions[sum(step >= s for s in self.upsample_steps)]
        if target > self.resolution:
            self.upsample(target)
            changed = True
        return changed

    @torch.no_grad()
    def prune(self, grid=None) -> bool:
        """Drop lattice points whose 3x3x3 neighbourhood is all below ``prune_threshold``
        (and, when ``grid`` is given and ``prune_with_grid``, that the grid marks empty)."""
        V = self.resolution + 1
        above = self.activate(self.table[:, 0]) >= self.prune_threshold
        if not bool(above.any()):
            log.warning("plenoxels: no voxel above prune_threshold; pruning skipped")
            return False
        mask = torch.zeros(V**3, device=self.table.device)
        mask[self.row_vertex[above]] = 1.0
        near = F.max_pool3d(mask.view(1, 1, V, V, V), 3, stride=1, padding=1).flatten() > 0
        keep_rows = near[self.row_vertex]
        if grid is not None and self.prune_with_grid:
            pts = self._lattice_points(self.row_vertex, self.resolution)
            keep_rows |= grid.occupied(pts)
        if bool(keep_rows.all()):
            return False
        log.info("plenoxels: pruned %d of %d voxels", int((~keep_rows).sum()), self.n_rows)
        self._set_layout(self.resolution, self.table[keep_rows], self.row_vertex[keep_rows])
        return True

    @torch.no_grad()
    def upsample(self, resolution: int, chunk: int = 1 << 18) -> None:
        """Resample the field at the lattice of ``resolution``, keeping points in live cells."""
        R, V, Vn = self.resolution, self.resolution + 1, resolution + 1
        live = (self.index >= 0).float().view(1, 1, V, V, V)
        cell_live = F.max_pool3d(live, 2, stride=1).flatten() > 0  # [R^3], any live corner
        verts = torch.arange(Vn**3, device=self.table.device)
        ijk = torch.stack([verts // (Vn * Vn), (verts // Vn) % Vn, verts % Vn], dim=-1)
        cell = (ijk * R // resolution).clamp(max=R - 1)
        keep = cell_live[(cell[:, 0] * R + cell[:, 1]) * R + cell[:, 2]]
        verts = verts[keep]
        pts = self._lattice_points(verts, resolution)
        values = torch.cat([self.features(c) for c in pts.split(chunk)]) if len(pts) else \
            self.table.new_zeros(0, self.feature_dim)
        log.info("plenoxels: upsampled %d^3 -> %d^3 (%d of %d voxels kept)", R, resolution,
                 len(verts), Vn**3)
        self._set_layout(resolution, values, verts)

    def extra_state_for_checkpoint(self) -> dict:
        return {"resolution": self.resolution, "n_rows": self.n_rows}

    def prepare_load(self, extra: dict) -> None:
        if not extra:
            return
        dev = self.table.device
        R, n = int(extra["resolution"]), int(extra["n_rows"])
        self.index = torch.full(((R + 1) ** 3,), -1, dtype=torch.int32, device=dev)
        self.table = nn.Parameter(torch.zeros(n, self.feature_dim, device=dev))
        self.row_vertex = torch.zeros(n, dtype=torch.long, device=dev)
        self._set_resolution(R)
