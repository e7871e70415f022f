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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pvdal.encodings.sh import sh_basis
from pvdal.fields.base import FieldOutput, RadianceField

EMPTY_RAW = -100.0  # sigma_raw of zero density: exp(-100) underflows to 0 in float32 alphas
CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]


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
    ) -> None:
        """``reso`` = ``links.shape`` (each >= 2), ``n_rows`` = rows of ``density_data`` /
        ``sh_data``, ``basis_dim`` = SH coefficients per channel (1, 4, 9, 16 or 25);
        ``radius``/``center`` = svox2's grid box; ``world_scale``/``world_offset``: pvdal field
        coordinates -> svox2 world. ``dense``: a student under svox2's conventions
        (``student=svox2``): every voxel linked (``n_rows`` = Rx * Ry * Rz), density
        ``init_density`` per world unit, grey colour (SH 0)."""
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

    def features_world(self, w: Tensor) -> Tensor:
        g = self.world2grid(w)
        gsz = g.new_tensor(self.reso)
        inside = ((g >= -0.5) & (g <= gsz - 0.5)).all(dim=-1)
        pos = torch.minimum(g.clamp_min(0.0), gsz - 1)
        low = torch.minimum(pos.long().clamp_min(0), torch.tensor(self.reso, device=g.device) - 2)
        f = pos - low
        table = torch.cat([self.density_data, self.sh_data], dim=-1)
        out = g.new_zeros(g.shape[0], table.shape[1])
        for a, b, c in CORNERS:
            rows = self.links[low[:, 0] + a, low[:, 1] + b, low[:, 2] + c].long()
            wt = ((f[:, 0] if a else 1 - f[:, 0]) * (f[:, 1] if b else 1 - f[:, 1])
                  * (f[:, 2] if c else 1 - f[:, 2]))
            vals = table[rows.clamp_min(0)] * (rows >= 0)[:, None]
            out = out + vals * wt[:, None]
        return torch.cat([out, inside.to(out.dtype)[:, None]], dim=-1)

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
        return {"features": [self.density_data, self.sh_data], "decoder": []}
