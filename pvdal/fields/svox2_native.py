"""svox2's own field (Plenoxels ``SparseGrid``, SH basis), computed as svox2 computes it.

Built by the svox2 importer (pvdal/io/importers/svox2.py) from a ``.npz`` file; the tensors keep
svox2's names (``links``, ``density_data``, ``sh_data``, ``radius``, ``center``), so the file's
arrays load 1:1. What differs from pvdal's own PlenoxelsField (pvdal/fields/plenoxels.py):

* **Values at voxel centres.** svox2's ``world2grid``: ``g = w * (0.5 / radius * R) + (0.5 *
  (1 - center / radius) * R - 0.5)`` per axis; ``g`` is clamped to [0, R - 1], the lower corner
  to [0, R - 2], then trilinear over the 8 ``links`` (x-major, -1 = empty voxel = zero value).
  Points outside the grid box (``g`` outside [-0.5, R - 0.5]) are not sampled by svox2: zero.
* **Density.** Raw, ReLU-like: svox2 skips samples with ``sigma <= sigma_thresh`` and uses
  ``sigma`` per world unit. pvdal's one activation is exp (pvdal/fields/activation.py), so the
  field hands out the exact reparametrisation ``sigma_raw = log(sigma * world_scale)`` (density
  per pvdal unit) and ``EMPTY_RAW`` where svox2's density is zero.
* **Colour.** ``max(SH(d) . c + 0.5, 0)`` per channel (no sigmoid, no upper clamp), ``sh_data``
  as R, G, B blocks of ``basis_dim`` coefficients; pvdal's SH basis is svox2's.
* **Frame.** ``w = x * world_scale + world_offset`` (svox2's synthetic world is Blender x 2/3,
  which is pvdal's normalised Blender scene: ``world_scale = 1``); directions are unchanged.

``features(x)`` = ``[sigma, 3 * basis_dim SH coefficients, inside]`` (interpolated); there is no
colour feature (like pvdal's Plenoxels). ``svox2_outputs`` gives svox2's own values.

**Training as svox2 trains** (all off by default; ``experiment=ref_svox2`` turns them on):
``sphere_init`` (svox2's ``use_sphere_bound``: only voxels inside the unit sphere are linked),
``upsample_reso`` / ``upsample_steps`` (svox2's ``resample``: the field sampled at the new voxel
centres, voxels kept where a sample's opacity reaches ``weight_thresh / R_z``, dilated
``prune_dilate`` times), svox2's sparse TV (``tv_density``, ``tv_sh``: on a contiguous random
``tv_*_sparsity`` of the cells, off after the first upsample with ``tv_early_only``),
``split_groups`` (param groups ``density`` and ``sh``, for per-table learning rates) and
``pvdal.optim.svox2_rmsprop.Svox2RMSprop`` (svox2's ``rmsprop_step``).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvdal.encodings.sh import sh_basis
from pvdal.fields.base import FieldOutput, RadianceField

EMPTY_RAW = -100.0  # sigma_raw of zero density: exp(-100) underflows to 0 in float32 alphas
CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
log = logging.getLogger("pvdal")


def _cube(r) -> list[int]:
    return [int(r)] * 3 if isinstance(r, int | float) else [int(v) for v in r]


class Svox2NativeField(RadianceField):
    has_color_feature = False

    def __init__(
        self,
        reso: list[int],
        n_rows: int,
        basis_dim: int = 9,
        radius: tuple[float, float, float] = (1.0, 1.0, 1.0),
        center: tuple[float, float, float] = (0.0, 0.0, 0.0),
        sigma_thresh: float = 1e-10,
        world_scale: float = 1.0,
        world_offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
        dense: bool = False,
        init_density: float = 1.0,
        density_clamp: tuple[float, float] | None = None,
        sphere_init: bool = False,
        upsample_reso: list | tuple = (),
        upsample_steps: list[int] | tuple[int, ...] = (),
        weight_thresh: float = 0.256,
        prune_dilate: int = 2,
        tv_density: float = 0.0,
        tv_sh: float = 0.0,
        tv_sparsity: float = 0.01,
        tv_sh_sparsity: float = 0.01,
        tv_early_only: bool = True,
        split_groups: bool = False,
    ) -> None:
        """``reso`` = ``links.shape`` (each >= 2), ``n_rows`` = rows of ``density_data`` /
        ``sh_data``, ``basis_dim`` = SH coefficients per channel (1, 4, 9, 16 or 25);
        ``radius``/``center`` = svox2's grid box; ``world_scale``/``world_offset``: pvdal field
        coordinates -> svox2 world. ``dense``: a student under svox2's conventions
        (``student=svox2``): every voxel linked (``n_rows`` = Rx * Ry * Rz), density
        ``init_density`` per world unit, grey colour (SH 0).

        svox2's training (opt/opt.py), all off by default: ``sphere_init`` links only the voxels
        inside the unit sphere (``use_sphere_bound``); ``upsample_reso`` (a size or 3 sizes per
        stage) starts at schedule step ``upsample_steps[i]``, keeping voxels where the resampled
        opacity over half a new voxel reaches ``weight_thresh / R_z``, dilated ``prune_dilate``
        times; ``tv_density`` / ``tv_sh``: svox2's TV on a ``tv_*sparsity`` share of the cells,
        off after the first upsample when ``tv_early_only``; ``split_groups``: param groups
        ``density`` and ``sh`` (instead of one ``features``)."""
        super().__init__(density_clamp)
        degree = math.isqrt(int(basis_dim))
        if degree * degree != basis_dim or not 1 <= degree <= 5:
            raise ValueError(f"svox2 basis_dim must be 1, 4, 9, 16 or 25, got {basis_dim}")
        if len(reso) != 3 or min(reso) < 2:
            raise ValueError(f"svox2 grid resolution must be 3 sizes >= 2, got {reso}")
        self.reso = [int(r) for r in reso]
        self.basis_dim, self.sh_degree = int(basis_dim), degree
        self.sigma_thresh, self.world_scale = float(sigma_thresh), float(world_scale)
        n_rows = math.prod(self.reso) if dense else int(n_rows)
        links = (torch.arange(n_rows, dtype=torch.int32).view(self.reso) if dense
                 else torch.full(self.reso, -1, dtype=torch.int32))
        self.register_buffer("links", links)
        self.density_data = nn.Parameter(torch.full((n_rows, 1), float(init_density) if dense
                                                    else 0.0))
        self.sh_data = nn.Parameter(torch.zeros(int(n_rows), 3 * self.basis_dim))
        self.register_buffer("radius", torch.tensor(radius, dtype=torch.float32).view(3))
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32).view(3))
        self.register_buffer("world_offset", torch.tensor(world_offset, dtype=torch.float32))
        self.feature_dim = 1 + 3 * self.basis_dim + 1
        self.upsample_reso = [_cube(r) for r in upsample_reso]
        self.upsample_steps = [int(v) for v in upsample_steps]
        if len(self.upsample_reso) != len(self.upsample_steps):
            raise ValueError("svox2: need one upsample_steps entry per upsample_reso entry")
        self.weight_thresh, self.prune_dilate = float(weight_thresh), int(prune_dilate)
        self.tv_density, self.tv_sh = float(tv_density), float(tv_sh)
        self.tv_sparsity, self.tv_sh_sparsity = float(tv_sparsity), float(tv_sh_sparsity)
        self.tv_early_only, self.split_groups = bool(tv_early_only), bool(split_groups)
        self.stage = 0  # upsamples done
        self.sphere_init = bool(sphere_init)
        if sphere_init:
            self._sphere_bound()

    # --- svox2's training -----------------------------------------------------------------------
    @torch.no_grad()
    def _sphere_bound(self) -> None:
        """svox2's ``use_sphere_bound`` (SparseGrid.__init__): voxel i at ``2 i / R - 1`` is
        linked when within ``1 + sqrt(3) / max(R)`` of the centre."""
        axes = [torch.arange(r, dtype=torch.float32) * 2.0 / r - 1.0 for r in self.reso]
        pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        keep = (pts.norm(dim=-1) <= 1.0 + 3**0.5 / max(self.reso)).flatten()
        self._relink(self.reso, keep, self.density_data.flatten()[self.links.flatten()[keep]
                                                                   .long()][:, None],
                     self.sh_data[self.links.flatten()[keep].long()])

    def _relink(self, reso: list[int], keep: Tensor, density: Tensor, sh: Tensor) -> None:
        """New layout: voxels ``keep`` (flat, x-major over ``reso``) hold rows in order."""
        dev = self.links.device
        links = torch.full((math.prod(reso),), -1, dtype=torch.int32, device=dev)
        links[keep] = torch.arange(int(keep.sum()), dtype=torch.int32, device=dev)
        self.links = links.view(reso)
        self.reso = list(reso)
        self.density_data = nn.Parameter(density.contiguous())
        self.sh_data = nn.Parameter(sh.contiguous())

    @property
    def tv_on(self) -> bool:
        return not (self.tv_early_only and self.stage > 0)

    def on_step(self, step: int, grid=None, prev_step: int | None = None) -> bool:
        """svox2's upsampling (opt/opt.py: ``grid.resample`` every ``upsamp_every``): the stage
        follows the schedule step, so a resumed run stays on schedule."""
        target = sum(step >= s for s in self.upsample_steps)
        changed = False
        while self.stage < target:
            self.resample(self.upsample_reso[self.stage])
            self.stage += 1
            changed = True
        return changed

    @torch.no_grad()
    def resample(self, reso: list[int], chunk: int = 1 << 18) -> None:
        """svox2's ``SparseGrid.resample`` with its weight threshold taken on opacity alone:
        sample at the new voxel centres (grid coordinates ``linspace(f - 0.5, R - f - 0.5, R')``,
        ``f = R / 2R'``), keep voxels whose opacity over svox2's render step (half a new voxel)
        reaches ``weight_thresh / R'_z`` (svox2 renders every training camera and thresholds the
        max weight, transmittance included: this keeps a superset, also occluded voxels),
        dilate ``prune_dilate`` times (3x3x3), and sample the SH there."""
        reso = _cube(reso)
        dev = self.links.device
        axes = [torch.linspace(0.5 * r / n - 0.5, r - 0.5 * r / n - 0.5, n, device=dev)
                for r, n in zip(self.reso, reso, strict=True)]
        pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).view(-1, 3)
        dens = self.density_data
        sigma = torch.cat([self._interp(c, dens)[:, 0] for c in pts.split(chunk)])
        # svox2's world step over half a new voxel (cubic cells: any axis)
        step = 0.5 * 2.0 * float(self.radius.max()) / max(reso)
        alpha = 1.0 - torch.exp(-sigma.clamp_min(0.0) * step)
        mask = (alpha >= self.weight_thresh / reso[2]).view(1, 1, *reso).float()
        for _ in range(self.prune_dilate):
            mask = F.max_pool3d(mask, 3, stride=1, padding=1)
        keep = mask.flatten() > 0
        kept = pts[keep]
        sh = (torch.cat([self._interp(c, self.sh_data) for c in kept.split(chunk)])
              if len(kept) else self.sh_data.new_zeros(0, self.sh_data.shape[1]))
        log.info("svox2: resampled %s -> %s (%d of %d voxels kept)", self.reso, reso,
                 int(keep.sum()), keep.numel())
        self._relink(reso, keep, sigma[keep][:, None], sh)

    def regularizer(self, x: Tensor | None = None) -> Tensor | None:
        """svox2's sparse TV (svox2/csrc/loss_kernel.cu ``tv_grad_sparse_kernel``): on a
        contiguous run of ``sparsity * R^3`` cells from a random start, per channel
        ``sqrt(1e-9 + dx^2 + dy^2 + dz^2)`` to the +x/+y/+z neighbours (an empty voxel counts
        as 0), averaged over the cells, times the weight."""
        if not self.tv_on or (self.tv_density <= 0 and self.tv_sh <= 0):
            return None
        out = self.density_data.new_zeros(())
        if self.tv_density > 0:
            out = out + self.tv_density * self._tv(self.density_data, self.tv_sparsity)
        if self.tv_sh > 0:
            out = out + self.tv_sh * self._tv(self.sh_data, self.tv_sh_sparsity)
        return out

    def _tv(self, data: Tensor, frac: float) -> Tensor:
        X, Y, Z = self.reso
        n = X * Y * Z
        k = max(int(frac * n), 1)
        start = int(torch.randint(0, n, ()))
        cells = (torch.arange(start, start + k, device=data.device)) % n
        x, y, z = cells // (Y * Z), (cells // Z) % Y, cells % Z
        flat = self.links.flatten()

        def value(idx: Tensor, ok: Tensor) -> Tensor:
            rows = torch.where(ok, flat[idx.clamp(0, n - 1)], -1).long()
            return data[rows.clamp_min(0)] * (rows >= 0)[:, None]

        v0 = value(cells, torch.ones_like(cells, dtype=torch.bool))
        sq = v0.new_zeros(v0.shape)
        for nb, ok in ((cells + Y * Z, x + 1 < X), (cells + Z, y + 1 < Y), (cells + 1, z + 1 < Z)):
            sq = sq + ((value(nb, ok) - v0) * ok[:, None]).square()
        return torch.sqrt(sq + 1e-9).sum() / k

    # --- svox2's own computations --------------------------------------------------------------
    def to_world(self, x: Tensor) -> Tensor:
        """pvdal field coordinates -> svox2 world."""
        return x * self.world_scale + self.world_offset

    def world2grid(self, w: Tensor) -> Tensor:
        """svox2's ``world2grid`` (an ``addcmul`` of its ``_offset``/``_scaling`` times R)."""
        gsz = w.new_tensor(self.reso)
        offset = 0.5 * (1.0 - self.center / self.radius) * gsz - 0.5
        scaling = 0.5 / self.radius * gsz
        return torch.addcmul(offset, w, scaling)

    def features_world(self, w: Tensor, *tables: Tensor) -> Tensor:
        """``[interpolated tables (default: density, SH), inside]`` at world points ``w``."""
        g = self.world2grid(w)
        gsz = g.new_tensor(self.reso)
        inside = ((g >= -0.5) & (g <= gsz - 0.5)).all(dim=-1)
        out = self._interp(g, *(tables or (self.density_data, self.sh_data)))
        return torch.cat([out, inside.to(out.dtype)[:, None]], dim=-1)

    def _interp(self, g: Tensor, *tables: Tensor) -> Tensor:
        """Trilinear interpolation of the rows of ``tables`` (concatenated) at grid coordinates
        ``g`` (svox2's ``sample``: clamped to [0, R - 1], empty voxels 0)."""
        gsz = g.new_tensor(self.reso)
        pos = torch.minimum(g.clamp_min(0.0), gsz - 1)
        low = torch.minimum(pos.long().clamp_min(0), torch.tensor(self.reso, device=g.device) - 2)
        f = pos - low
        _, Y, Z = self.reso
        base = (low[:, 0] * Y + low[:, 1]) * Z + low[:, 2]
        offs = torch.tensor([(a * Y + b) * Z + c for a, b, c in CORNERS], device=g.device)
        rows = self.links.flatten()[base[:, None] + offs]  # [M, 8]
        wx, wy, wz = (torch.stack([1.0 - f[:, i], f[:, i]], dim=-1) for i in range(3))
        w = (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :]).reshape(-1, 8)
        w = (w * (rows >= 0))[:, None, :]
        idx = rows.clamp_min(0).long().reshape(-1)
        outs = [torch.bmm(w, t.index_select(0, idx).view(-1, 8, t.shape[1]))[:, 0]
                for t in tables]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def density(self, x: Tensor) -> Tensor:
        """Activated density (occupancy updates, the no-grad early-stop pass): the density
        table alone is interpolated."""
        feat = self.features_world(self.to_world(x), self.density_data)  # [sigma, inside]
        return self.activate(self.density_raw(feat))

    def sigma_world(self, feat: Tensor) -> Tensor:
        """svox2's density per world unit: ReLU, zero at or below ``sigma_thresh`` and outside
        the grid box."""
        s = feat[:, 0]
        return torch.where((feat[:, -1] > 0) & (s > self.sigma_thresh), s, torch.zeros_like(s))

    def rgb(self, feat: Tensor, d: Tensor) -> Tensor:
        coeffs = feat[:, 1:-1].reshape(-1, 3, self.basis_dim)
        sh = sh_basis(d, self.sh_degree)[:, None, :]
        return ((coeffs * sh).sum(-1) + 0.5).clamp_min(0.0)

    @torch.no_grad()
    def svox2_outputs(self, w: Tensor, d: Tensor) -> dict[str, Tensor]:
        """svox2's per-point values at world points: ``sigma`` (per world unit, as its renderer
        uses it), ``rgb``, ``inside`` (in the grid box)."""
        feat = self.features_world(w)
        return {"sigma": self.sigma_world(feat), "rgb": self.rgb(feat, d),
                "inside": feat[:, -1] > 0}

    # --- the RadianceField halves ---------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        return self.features_world(self.to_world(x))

    def density_raw(self, feat: Tensor) -> Tensor:
        sigma = self.sigma_world(feat) * self.world_scale  # per pvdal unit
        raw = torch.log(sigma.clamp_min(torch.finfo(sigma.dtype).tiny))
        return torch.where(sigma > 0, raw, torch.full_like(raw, EMPTY_RAW))

    def volume_parts(self, feat: Tensor) -> tuple[Tensor, None]:
        return self.density_raw(feat), None

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        return FieldOutput(self.density_raw(feat), None, self.rgb(feat, d))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        if self.split_groups:  # per-table learning rates (svox2's lr_sigma, lr_sh)
            return {"density": [self.density_data], "sh": [self.sh_data], "decoder": []}
        return {"features": [self.density_data, self.sh_data], "decoder": []}

    def extra_state_for_checkpoint(self) -> dict:
        if not (self.upsample_steps or self.sphere_init or self.stage):
            return {}  # the constructor's layout
        return {"reso": list(self.reso), "n_rows": int(self.density_data.shape[0]),
                "stage": self.stage}

    def prepare_load(self, extra: dict) -> None:
        if not extra:
            return
        reso, n = [int(v) for v in extra["reso"]], int(extra["n_rows"])
        dev = self.links.device
        self.links = torch.full(reso, -1, dtype=torch.int32, device=dev)
        self.reso = reso
        self.density_data = nn.Parameter(torch.zeros(n, 1, device=dev))
        self.sh_data = nn.Parameter(torch.zeros(n, 3 * self.basis_dim, device=dev))
        self.stage = int(extra.get("stage", 0))
