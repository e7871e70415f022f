"""torch-ngp's own NeRF network (ashawkey/torch-ngp ``nerf/network.py``), computed as torch-ngp
computes it.

Built by the torch-ngp importer (pvdal/io/importers/torch_ngp.py) from a ``.pth`` file; the
parameter names are torch-ngp's (``encoder.embeddings``, ``sigma_net.0.weight``, ...), so its
``model`` state dict loads 1:1. What differs from pvdal's NGPField and from instant-ngp:

* **Grid encoder** (torch-ngp's ``gridencoder``, not tcnn's layout): ``u = (p + bound) / (2 *
  bound)``; per level ``scale = exp2f(l * S) * base - 1`` (``S = float(log2(b))``), ``res =
  ceil(scale) + 1``, ``pos = u * scale + 0.5``; a level is dense while ``(res + 1)^3`` fits its
  size, with stride ``res + 1`` (tcnn: ``res``); else the same prime hash; then ``% level size``.
  Level sizes come from the file's ``encoder.offsets``.
* **Network.** Bias-free ``sigma_net`` (ReLU between layers; output 0 raw density, 1.. the
  geometry feature) and ``color_net`` on ``[SH16(d), geo_feat]``; density ``exp(raw)``
  (trunc_exp) per torch-ngp unit, colour sigmoid.
* **Frame.** torch-ngp's space is the NeRF world with axes cycled to (y, z, x), times ``scale``,
  plus ``offset`` (its command-line ``--scale``/``--offset``; not in the file), box ``+-bound``.
  ``p = cycle(x * world_scale) * ngp_scale + ngp_offset``; pvdal's density per its unit is
  ``exp(raw) * world_scale * ngp_scale``. Density is zero outside ``aabb_infer`` and where
  torch-ngp's ``density_bitfield`` skips the sample (cascade ``mip_from_pos``, cells
  ``clamp(0.5 * (p / mip_bound + 1) * 128)``, Morton order).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pvdal.encodings.hashgrid import PRIMES
from pvdal.encodings.sh import sh_basis
from pvdal.fields.ingp_native import GRID_SIZE, NgpLikeHalves


class TorchNgpGridEncoder(nn.Module):
    """torch-ngp's ``GridEncoder`` (hash grid type, ``align_corners=False``), forward only in
    float32 as its CUDA kernel computes it."""

    def __init__(self, offsets: list[int], n_features: int = 2, base_resolution: int = 16,
                 per_level_scale: float = 2.0) -> None:
        super().__init__()
        self.n_levels, self.n_features = len(offsets) - 1, int(n_features)
        self.base_resolution = int(base_resolution)
        self.per_level_scale = float(per_level_scale)
        s = torch.tensor(math.log2(per_level_scale), dtype=torch.float32)  # S, a C++ float
        lv = torch.arange(self.n_levels, dtype=torch.float32)
        scales = torch.exp2(lv * s) * float(base_resolution) - 1.0
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int32))
        self.register_buffer("scales", scales, persistent=False)
        self.embeddings = nn.Parameter(torch.zeros(int(offsets[-1]), self.n_features))
        corners = [[(i >> d) & 1 for d in range(3)] for i in range(8)]
        self.register_buffer("corners", torch.tensor(corners), persistent=False)

    def forward(self, u: Tensor) -> Tensor:
        """u: [M, 3] in [0, 1] -> [M, L * C]."""
        M = u.shape[0]
        outs = []
        for lvl in range(self.n_levels):
            scale = self.scales[lvl]
            res = int(math.ceil(float(scale))) + 1
            off = int(self.offsets[lvl])
            size = int(self.offsets[lvl + 1]) - off
            pos = (u.double() * scale.double() + 0.5).float()
            grid = pos.floor()
            frac = pos - grid
            grid = grid.long()
            dense = (res + 1) ** 3 <= size
            c = grid[:, None, :] + self.corners  # [M, 8, 3]
            if dense:
                index = c[..., 0] + c[..., 1] * (res + 1) + c[..., 2] * (res + 1) ** 2
            else:
                index = (c[..., 0] * PRIMES[0]) ^ ((c[..., 1] * PRIMES[1]) & 0xFFFFFFFF) ^ (
                    (c[..., 2] * PRIMES[2]) & 0xFFFFFFFF)
            w = torch.where(self.corners.bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1)
            rows = (off + index % size).reshape(-1)
            vals = self.embeddings.index_select(0, rows).view(M, 8, self.n_features)
            acc = (vals * w[..., None]).sum(dim=1)
            outs.append(acc)
        return torch.cat(outs, dim=-1)


def bias_free(widths: list[tuple[int, int]]) -> nn.ModuleList:
    """torch-ngp's ``nn.ModuleList`` of bias-free Linear layers, ``widths`` = [(out, in)]."""
    return nn.ModuleList(nn.Linear(i, o, bias=False) for o, i in widths)


def run(layers: nn.ModuleList, h: Tensor) -> Tensor:
    for i, layer in enumerate(layers):
        h = layer(h)
        if i != len(layers) - 1:
            h = torch.relu(h)
    return h


class TorchNgpNativeField(NgpLikeHalves):
    def __init__(
        self,
        offsets: list[int],
        n_features: int = 2,
        base_resolution: int = 16,
        per_level_scale: float = 2.0,
        bound: float = 1.0,
        sigma_widths: list[tuple[int, int]] = ((64, 32), (16, 64)),
        color_widths: list[tuple[int, int]] = ((64, 31), (64, 64), (3, 64)),
        sh_degree: int = 4,
        aabb: list[float] = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0),
        ngp_scale: float = 0.33,
        ngp_offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
        world_scale: float = 1.5,
        n_cascades: int = 1,
        density_clamp: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(density_clamp)
        self.encoder = TorchNgpGridEncoder(offsets, n_features, base_resolution, per_level_scale)
        self.sigma_net = bias_free([tuple(w) for w in sigma_widths])
        self.color_net = bias_free([tuple(w) for w in color_widths])
        self.sh_degree, self.bound = int(sh_degree), float(bound)
        self.ngp_scale, self.world_scale = float(ngp_scale), float(world_scale)
        self.raw_shift = math.log(self.world_scale * self.ngp_scale)
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32).view(2, 3))
        self.register_buffer("ngp_offset", torch.tensor(ngp_offset, dtype=torch.float32))
        self.n_cascades = int(n_cascades)
        self.register_buffer("bitfield", torch.ones(self.n_cascades, GRID_SIZE, GRID_SIZE,
                                                    GRID_SIZE, dtype=torch.bool))
        self.feature_dim = self.encoder.n_levels * self.encoder.n_features + 1
        self.color_feature_dim = int(sigma_widths[-1][0]) - 1

    # --- torch-ngp's own computations ----------------------------------------------------------
    def sampled(self, p: Tensor) -> Tensor:
        """Would torch-ngp sample ``p``: inside ``aabb_infer`` and its bitfield occupied."""
        inside = ((p >= self.aabb[0]) & (p <= self.aabb[1])).all(dim=-1)
        _, e = torch.frexp(p.abs().amax(dim=-1))
        level = e.clamp(0, self.n_cascades - 1).long()
        mip_bound = torch.ldexp(torch.ones_like(p[:, 0]), level).clamp(max=self.bound)
        cell = (0.5 * (p / mip_bound[:, None] + 1) * GRID_SIZE).clamp(0, GRID_SIZE - 1).long()
        return inside & self.bitfield[level, cell[:, 0], cell[:, 1], cell[:, 2]]

    def features_ngp(self, p: Tensor) -> Tensor:
        u = (p + self.bound) / (2 * self.bound)
        enc = self.encoder(u.float())
        return torch.cat([enc, self.sampled(p).to(enc.dtype)[:, None]], dim=-1)

    def network(self, feat: Tensor, d_ngp: Tensor) -> tuple[Tensor, Tensor]:
        h = run(self.sigma_net, feat[:, :-1])
        rgb = torch.sigmoid(run(self.color_net, torch.cat([sh_basis(d_ngp, self.sh_degree),
                                                           h[:, 1:]], dim=-1)))
        return h, rgb

    @torch.no_grad()
    def torch_ngp_outputs(self, p: Tensor, d_ngp: Tensor) -> dict[str, Tensor]:
        """torch-ngp's per-point values at its own positions/directions: ``sigma`` (trunc_exp
        of the raw output, per torch-ngp unit), ``rgb``, ``sampled``."""
        feat = self.features_ngp(p)
        h, rgb = self.network(feat, d_ngp)
        return {"sigma": torch.exp(h[:, 0]), "rgb": rgb, "sampled": feat[:, -1] > 0}

    def density_head(self, enc: Tensor) -> Tensor:
        """The sigma network's outputs [M, 16] (raw density first) on grid features."""
        return run(self.sigma_net, enc)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"features": [self.encoder.embeddings],
                "decoder": [*self.sigma_net.parameters(), *self.color_net.parameters()]}
