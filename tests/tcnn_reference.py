"""An independent, per-corner numpy model of tiny-cuda-nn's hash-grid indexing (grid.h,
common_device.h), written from tcnn's source rather than from pvdal's encoding, and a stand-in
``tinycudann`` package whose ``Encoding`` evaluates it (CPU), for tests of the backend switch."""

from __future__ import annotations

import math
import types

import numpy as np
import torch
from torch import nn

F32 = np.float32
U32 = np.uint32
HASH_PRIMES = (U32(1), U32(2654435761), U32(805459861))
MAX_BASE_3D = 0x659  # grid_index: above this resolution the stride would overflow uint32


def levels(n_levels: int, base: int, per_level_scale: float, log2_T: int):
    """[(scale, resolution, offset, hashmap_size)] as GridEncodingTemplated's constructor and
    the kernels compute them, all in float32."""
    # log2f / exp2f correctly rounded (glibc's std::log2f is; CUDA's exp2f is within 2 ulp,
    # checked against the real kernels by test_hashgrid's CUDA parity test). numpy's float32
    # log2 is 1 ulp off for some inputs in some versions (2.4.6: log2(1.486f)), which moved
    # the finest level's scale by 2e-5
    log2_pls = F32(math.log2(float(F32(per_level_scale))))
    out, offset = [], 0
    for lvl in range(n_levels):
        scale = F32(F32(2.0 ** float(F32(F32(lvl) * log2_pls))) * F32(base)) - F32(1.0)
        res = int(np.ceil(scale)) + 1
        size = min(int(math.ceil(res**3 / 8) * 8), 2**log2_T)
        out.append((scale, res, offset, size))
        offset += size
    return out


def corner_index(c: np.ndarray, res: int, size: int) -> np.ndarray:
    """grid_index for one corner of every point: c [M, 3] uint32 -> [M] uint32."""
    stride = U32(1)
    index = np.zeros(c.shape[0], dtype=U32)
    if res <= MAX_BASE_3D:
        for dim in range(3):
            index = index + c[:, dim] * stride
            stride = U32(stride * U32(res))
    else:
        stride = U32(0xFFFFFFFF)
    if size < stride:  # Hash grid: coherent prime hash
        index = (c[:, 0] * HASH_PRIMES[0]) ^ (c[:, 1] * HASH_PRIMES[1]) ^ (c[:, 2] * HASH_PRIMES[2])
    return index % U32(size)


def encode(u: np.ndarray, table: np.ndarray, n_levels: int, base: int, per_level_scale: float,
           log2_T: int) -> tuple[np.ndarray, list]:
    """u [M, 3] in [0, 1], table [N, F] -> features [M, L*F] and, per level, the 8 corners'
    (rows [M], weights [M]) for gradients."""
    M, F = u.shape[0], table.shape[1]
    out = np.zeros((M, n_levels * F), dtype=F32)
    corners = []
    with np.errstate(over="ignore"):
        for lvl, (scale, res, offset, size) in enumerate(levels(n_levels, base, per_level_scale,
                                                                log2_T)):
            pos = (np.float64(scale) * u.astype(np.float64) + 0.5).astype(F32)  # fmaf
            grid = np.floor(pos)
            frac = (pos - grid).astype(F32)
            grid = grid.astype(np.int64).astype(U32)
            acc = np.zeros((M, F), dtype=F32)
            level_corners = []
            for idx in range(8):
                bits = [(idx >> d) & 1 for d in range(3)]
                c = grid + np.array(bits, dtype=U32)
                w = np.ones(M, dtype=F32)
                for d in range(3):
                    w = w * (frac[:, d] if bits[d] else F32(1.0) - frac[:, d])
                rows = offset + corner_index(c, res, size).astype(np.int64)
                acc += w[:, None] * table[rows]
                level_corners.append((rows, w))
            out[:, lvl * F:(lvl + 1) * F] = acc
            corners.append(level_corners)
    return out, corners


def table_grad(corners: list, grad_out: np.ndarray, n_rows: int, F: int) -> np.ndarray:
    """d(sum(out * grad_out)) / d(table) from the corners of ``encode``."""
    g = np.zeros((n_rows, F), dtype=np.float64)
    for lvl, level_corners in enumerate(corners):
        go = grad_out[:, lvl * F:(lvl + 1) * F].astype(np.float64)
        for rows, w in level_corners:
            np.add.at(g, rows, w[:, None].astype(np.float64) * go)
    return g


def fake_tinycudann() -> types.ModuleType:
    """A ``tinycudann`` stand-in: ``Encoding`` holds tcnn's flat ``params`` and evaluates the
    numpy model above (forward only), on the CPU."""

    class Encoding(nn.Module):
        def __init__(self, n_input_dims: int, config: dict, seed: int = 1337, dtype=None):
            super().__init__()
            self.config = config
            lv = levels(config["n_levels"], config["base_resolution"],
                        config["per_level_scale"], config["log2_hashmap_size"])
            n_rows = lv[-1][2] + lv[-1][3]
            self.F = config["n_features_per_level"]
            self.n_output_dims = config["n_levels"] * self.F
            self.params = nn.Parameter(torch.zeros(n_rows * self.F))

        def forward(self, u: torch.Tensor) -> torch.Tensor:
            c = self.config
            table = self.params.detach().view(-1, self.F).numpy()
            out, _ = encode(u.detach().numpy(), table, c["n_levels"], c["base_resolution"],
                            c["per_level_scale"], c["log2_hashmap_size"])
            return torch.from_numpy(out)

    mod = types.ModuleType("tinycudann")
    mod.Encoding = Encoding
    return mod
