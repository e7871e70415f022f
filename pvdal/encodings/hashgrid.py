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
        self.n_dense = sum(dense)  # dense levels come first (resolution grows with the level)

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
        # int64 indices while training (int32 slows the backward), int32 for inference
        p0 = p0.to(torch.int64 if torch.is_grad_enabled() else torch.int32)
        corner = torch.stack([p0, p0 + 1], dim=-1)  # [M, L, 3, 2]
        w = torch.stack([1.0 - frac, frac], dim=-1)  # [M, L, 3, 2]
        k = self.n_dense
        parts = []
        if k:  # dense levels (first k): x + y*res + z*res^2, no collisions
            cx, cy, cz = corner[:, :k].unbind(2)
            res = self.res[:k].view(1, k, 1, 1, 1).to(p0.dtype)
            parts.append(cx[..., :, None, None] + cy[..., None, :, None] * res
                         + cz[..., None, None, :] * (res * res))
        if k < L:  # hashed levels: XOR of prime products, T is a power of two
            cx, cy, cz = corner[:, k:].unbind(2)
            T = 2**self.log2_T
            h = (cx[..., :, None, None] ^ (cy[..., None, :, None] * PRIMES[1])
                 ^ (cz[..., None, None, :] * PRIMES[2])) & (T - 1)
            parts.append(h)
        idx = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [M, L, 2, 2, 2]
        idx = idx + self.offsets.view(1, L, 1, 1, 1).to(idx.dtype)
        wx, wy, wz = w.unbind(2)
        weight = wx[..., :, None, None] * wy[..., None, :, None] * wz[..., None, None, :]
        feats = self.params.index_select(0, idx.reshape(-1)).view(M, L, 8, self.n_features)
        out = (feats * weight.reshape(M, L, 8, 1)).sum(dim=2)  # [M, L, F]
        return out.reshape(M, L * self.n_features)
