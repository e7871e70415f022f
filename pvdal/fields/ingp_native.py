"""instant-ngp's own NeRF network (``NerfNetwork``), computed as instant-ngp computes it.

Built by the instant-ngp importer (pvdal/io/importers/ingp.py) from a ``.msgpack`` / ``.ingp``
snapshot. What differs from pvdal's own NGPField (pvdal/fields/ngp.py):

* **Frame.** instant-ngp's space is the NeRF world with its axes cycled to (y, z, x), times
  ``ngp_scale`` (0.33 by default), plus ``ngp_offset`` (0.5); pvdal's normalised scene is the NeRF
  (Blender) world divided by ``world_scale`` (1.5). So ``p = cycle(x * world_scale) * ngp_scale
  + ngp_offset``, directions cycled likewise. The hash grid reads ``(p - aabb_min) / aabb_size``.
* **Network.** The tcnn layout of a snapshot's ``params_binary``: bias-free fully fused MLPs,
  density ``[64, n_pos] -> ReLU -> [16, 64]`` (output 0 = raw density), colour on ``[all 16
  density outputs, SH16(d)]``: ``[64, 32] -> ReLU -> [64, 64] -> ReLU -> [16, 64]`` (outputs 0..2,
  logistic). The hash grid is pvdal's HashGridEncoding, which indexes exactly as tcnn.
* **Density.** ``exp(raw)`` per instant-ngp unit, zero outside ``aabb`` and where instant-ngp's
  occupancy bitfield (``density_grid`` > min(0.01, its mean), per cascade, at the cascade of the
  point's position) skips the sample. pvdal's density per its own unit is ``exp(raw) *
  world_scale * ngp_scale``, i.e. ``sigma_raw = raw + log(world_scale * ngp_scale)``: exact, no
  refit. ``ingp_outputs`` gives instant-ngp's own values at instant-ngp positions.

Parameters are the snapshot's fp16 values held as float32; instant-ngp evaluates its MLPs in fp16,
pvdal in float32 (differences at fp16 precision).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from pvdal.encodings.hashgrid import HashGridEncoding
from pvdal.encodings.sh import sh_basis
from pvdal.fields.base import FieldOutput, RadianceField

EMPTY_RAW = -100.0  # sigma_raw of zero density
GRID_SIZE = 128  # instant-ngp's NERF_GRIDSIZE
CYCLE = (1, 2, 0)  # ngp axis k = NeRF axis CYCLE[k]


def morton3d(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """instant-ngp's ``morton3D``: bits of x, y, z interleaved (x lowest)."""
    def expand(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.uint32)
        v = (v * np.uint32(0x00010001)) & np.uint32(0xFF0000FF)
        v = (v * np.uint32(0x00000101)) & np.uint32(0x0F00F00F)
        v = (v * np.uint32(0x00000011)) & np.uint32(0xC30C30C3)
        v = (v * np.uint32(0x00000005)) & np.uint32(0x49249249)
        return v
    return expand(x) | (expand(y) << np.uint32(1)) | (expand(z) << np.uint32(2))


def ffmlp(n_in: int, width: int, n_hidden: int, n_out: int) -> nn.Sequential:
    """tcnn's FullyFusedMLP: ``n_hidden`` ReLU layers of ``width``, no biases, linear output."""
    layers: list[nn.Module] = []
    for i in range(n_hidden):
        layers += [nn.Linear(n_in if i == 0 else width, width, bias=False), nn.ReLU()]
    layers.append(nn.Linear(width if n_hidden else n_in, n_out, bias=False))
    return nn.Sequential(*layers)


def cascade_of(p: Tensor, n_cascades: int) -> Tensor:
    """instant-ngp's ``mip_from_pos``: the smallest cascade whose box ``0.5 +- 0.5 * 2^c`` holds
    ``p`` (frexp exponent of max |p - 0.5|, plus one), clamped to the last cascade."""
    m = (p - 0.5).abs().amax(dim=-1)
    _, e = torch.frexp(m)
    return (e + 1).clamp(0, n_cascades - 1).long()


class NgpLikeHalves(RadianceField):
    """The RadianceField halves shared by instant-ngp's and torch-ngp's own fields: features in
    the tool's frame (last column: inside its box and grid), raw density shifted to pvdal units
    (``EMPTY_RAW`` outside), the density net's other 15 outputs as the colour feature. Needs
    ``features_ngp``, ``network``, ``density_head``, ``raw_shift``, ``world_scale``,
    ``ngp_scale``, ``ngp_offset``."""

    def to_ngp(self, x: Tensor) -> Tensor:
        """pvdal field coordinates -> the tool's positions: NeRF axes cycled, scaled, offset."""
        return (x * self.world_scale)[..., list(CYCLE)] * self.ngp_scale + self.ngp_offset

    @staticmethod
    def dir_to_ngp(d: Tensor) -> Tensor:
        return d[..., list(CYCLE)]

    def features(self, x: Tensor) -> Tensor:
        return self.features_ngp(self.to_ngp(x))

    def _raw(self, h: Tensor, feat: Tensor) -> Tensor:
        return torch.where(feat[:, -1] > 0, h[:, 0] + self.raw_shift,
                           torch.full_like(h[:, 0], EMPTY_RAW))

    def density_raw(self, feat: Tensor) -> Tensor:
        return self._raw(self.density_head(feat[:, :-1]), feat)

    def volume_parts(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        h = self.density_head(feat[:, :-1])
        return self._raw(h, feat), h[:, 1:]

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        h, rgb = self.network(feat, self.dir_to_ngp(d))
        return FieldOutput(self._raw(h, feat), h[:, 1:], rgb)


class IngpNativeField(NgpLikeHalves):
    def __init__(
        self,
        n_levels: int = 8,
        n_features_per_level: int = 4,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 2.0,
        density_width: int = 64,
        density_hidden: int = 1,
        rgb_width: int = 64,
        rgb_hidden: int = 2,
        sh_degree: int = 4,
        aabb: list[list[float]] = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        ngp_scale: float = 0.33,
        ngp_offset: tuple[float, float, float] = (0.5, 0.5, 0.5),
        world_scale: float = 1.5,
        n_cascades: int = 1,
        density_clamp: tuple[float, float] | None = None,
    ) -> None:
        """Arguments are the snapshot's ``encoding`` / ``network`` / ``rgb_network`` config, its
        ``aabb`` (instant-ngp space), ``nerf.dataset`` ``scale``/``offset``; ``world_scale``:
        pvdal scene -> NeRF world; ``n_cascades``: density-grid cascades."""
        super().__init__(density_clamp)
        pls = float(np.float32(per_level_scale))
        max_res = base_resolution * pls ** (n_levels - 1)
        self.encoding = HashGridEncoding(n_levels, n_features_per_level, log2_hashmap_size,
                                         base_resolution, max_res, implementation="torch")
        if np.float32(self.encoding.per_level_scale) != np.float32(pls):
            raise ValueError(f"per_level_scale {per_level_scale} does not round-trip")
        n_pos = self.encoding.out_dim
        self.density_net = ffmlp(n_pos, density_width, density_hidden, 16)
        self.sh_degree = int(sh_degree)
        self.rgb_net = ffmlp(16 + self.sh_degree**2, rgb_width, rgb_hidden, 16)
        self.ngp_scale, self.world_scale = float(ngp_scale), float(world_scale)
        self.raw_shift = math.log(self.world_scale * self.ngp_scale)
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32).view(2, 3))
        self.register_buffer("ngp_offset", torch.tensor(ngp_offset, dtype=torch.float32))
        self.n_cascades = int(n_cascades)
        self.register_buffer("bitfield", torch.ones(self.n_cascades, GRID_SIZE, GRID_SIZE,
                                                    GRID_SIZE, dtype=torch.bool))
        self.feature_dim = n_pos + 1  # + "sampled by instant-ngp" (aabb and bitfield)

    # --- instant-ngp's own computations --------------------------------------------------------
    def sampled(self, p: Tensor) -> Tensor:
        """Would instant-ngp sample ``p``: inside ``aabb`` and its bitfield's cell occupied at
        the cascade of ``p``."""
        inside = ((p >= self.aabb[0]) & (p <= self.aabb[1])).all(dim=-1)
        c = cascade_of(p, self.n_cascades)
        size = torch.ldexp(torch.ones_like(p[:, 0]), c)  # 2^c
        cell = (((p - 0.5) / size[:, None] + 0.5) * GRID_SIZE).floor().long()
        cell = cell.clamp(0, GRID_SIZE - 1)
        return inside & self.bitfield[c, cell[:, 0], cell[:, 1], cell[:, 2]]

    def features_ngp(self, p: Tensor) -> Tensor:
        u = (p - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        enc = self.encoding._torch_forward(u.float())
        return torch.cat([enc, self.sampled(p).to(enc.dtype)[:, None]], dim=-1)

    def network(self, feat: Tensor, d_ngp: Tensor) -> tuple[Tensor, Tensor]:
        """(16 density-net outputs, rgb) from features and instant-ngp directions."""
        h = self.density_net(feat[:, :-1])
        rgb = torch.sigmoid(self.rgb_net(torch.cat([h, sh_basis(d_ngp, self.sh_degree)], -1)))
        return h, rgb[:, :3]

    @torch.no_grad()
    def ingp_outputs(self, p: Tensor, d_ngp: Tensor) -> dict[str, Tensor]:
        """instant-ngp's per-point values at its own positions/directions: ``density``
        (exp of the raw output, per instant-ngp unit), ``rgb``, ``sampled`` (aabb, bitfield)."""
        feat = self.features_ngp(p)
        h, rgb = self.network(feat, d_ngp)
        return {"density": torch.exp(h[:, 0]), "rgb": rgb, "sampled": feat[:, -1] > 0}

    def density_head(self, enc: Tensor) -> Tensor:
        """The density network's outputs [M, 16] (raw density first) on grid features."""
        return self.density_net(enc)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"features": list(self.encoding.parameters()),
                "decoder": [*self.density_net.parameters(), *self.rgb_net.parameters()]}
