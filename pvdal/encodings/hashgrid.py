"""Multiresolution hash encoding (Instant-NGP) in pure torch, with the tiny-cuda-nn layout.

The torch path mirrors tcnn's conventions (per-level scale, ``pos = x * scale + 0.5``, dense
levels while ``res^3 <= T``, coherent prime hash, flat parameter table with 8-aligned level
offsets) so that the same parameter vector means the same field on both backends.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from pvdal.encodings.backend import resolve_implementation

PRIMES = (1, 2654435761, 805459861)


def _level_layout(n_levels: int, log2_T: int, base_res: int, per_level_scale: float):
    scales, resolutions, offsets, dense = [], [], [0], []
    T = 2**log2_T
    for lvl in range(n_levels):
        scale = base_res * per_level_scale**lvl - 1.0
        res = int(math.ceil(scale)) + 1
        n = res**3
        n = (n + 7) // 8 * 8
        size = min(n, T)
        scales.append(scale)
        resolutions.append(res)
        dense.append(n <= T)
        offsets.append(offsets[-1] + size)
    return scales, resolutions, offsets, dense


class HashGridEncoding(nn.Module):
    """x in [-1, 1]^3 -> [M, n_levels * n_features]."""

    def __init__(
        self,
        n_levels: int = 12,
        n_features: int = 2,
        log2_hashmap_size: int = 17,
        base_resolution: int = 16,
        max_resolution: int = 512,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        self.n_levels, self.n_features = n_levels, n_features
        self.log2_T = log2_hashmap_size
        self.per_level_scale = (
            math.exp(math.log(max_resolution / base_resolution) / (n_levels - 1))
            if n_levels > 1 else 1.0
        )
        self.base_resolution = base_resolution
        scales, res, offsets, dense = _level_layout(
            n_levels, log2_hashmap_size, base_resolution, self.per_level_scale
        )
        self.out_dim = n_levels * n_features
        self.implementation = resolve_implementation(implementation, "hash grid")
        if self.implementation == "tcnn":
            import tinycudann as tcnn

            self.tcnn = tcnn.Encoding(3, self._tcnn_config(), dtype=torch.float32)
            return
        self.params = nn.Parameter(torch.empty(offsets[-1], n_features).uniform_(-1e-4, 1e-4))
        self.register_buffer("scales", torch.tensor(scales), persistent=False)
        self.register_buffer("res", torch.tensor(res, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1]), persistent=False)
        self.register_buffer("sizes", torch.tensor(np.diff(offsets)), persistent=False)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES, dtype=torch.int64), persistent=False)

    def _tcnn_config(self) -> dict:
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features,
            "log2_hashmap_size": self.log2_T,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
        }

    def forward(self, x: Tensor) -> Tensor:
        u = ((x + 1.0) * 0.5).clamp(0.0, 1.0)  # [M, 3] in [0, 1]
        if self.implementation == "tcnn":
            return self.tcnn(u).float()
        return self._torch_forward(u)

    def _torch_forward(self, u: Tensor) -> Tensor:
        M, L = u.shape[0], self.n_levels
        pos = u[:, None, :] * self.scales[None, :, None] + 0.5  # [M, L, 3]
        p0 = pos.floor()
        frac = pos - p0
        p0 = p0.long()
        corner = torch.stack([p0, p0 + 1], dim=-1)  # [M, L, 3, 2]
        w = torch.stack([1.0 - frac, frac], dim=-1)  # [M, L, 3, 2]
        cx, cy, cz = corner.unbind(2)  # each [M, L, 2]
        wx, wy, wz = w.unbind(2)
        # dense index: x + y*res + z*res^2 ; hashed: XOR of prime products mod T
        res = self.res.view(1, L, 1, 1, 1)
        dense_idx = (cx[..., :, None, None] + cy[..., None, :, None] * res
                     + cz[..., None, None, :] * (res * res))
        hash_idx = (cx[..., :, None, None] * self.primes[0]) ^ (cy[..., None, :, None]
                    * self.primes[1]) ^ (cz[..., None, None, :] * self.primes[2])
        idx = torch.where(self.dense.view(1, L, 1, 1, 1), dense_idx, hash_idx)
        idx = idx % self.sizes.view(1, L, 1, 1, 1) + self.offsets.view(1, L, 1, 1, 1)
        weight = wx[..., :, None, None] * wy[..., None, :, None] * wz[..., None, None, :]
        feats = self.params.index_select(0, idx.reshape(-1)).view(M, L, 8, self.n_features)
        out = (feats * weight.reshape(M, L, 8, 1)).sum(dim=2)  # [M, L, F]
        return out.reshape(M, L * self.n_features)
