"""Multiresolution hash encoding (Instant-NGP): one field, one parameter layout, two backends.

The torch path indexes exactly as tiny-cuda-nn's ``GridEncoding`` does (``grid.h`` and
``common_device.h``), so the same parameters give the same field on either backend:

- per-level scale ``exp2f(level * log2f(per_level_scale)) * base - 1`` and resolution
  ``ceilf(scale) + 1``, computed in float32 (``tcnn_layout``);
- ``pos = fmaf(scale, u, 0.5)`` in float32, corners ``floor(pos)`` and ``floor(pos) + 1``;
- dense levels (``res^3 <= T``) index ``x + y*res + z*res^2`` and wrap it ``% level_size`` (a
  corner at the far faces can reach ``res``), finer levels use the coherent prime hash;
- level sizes padded to multiples of 8, levels stacked in one ``[N, F]`` table.

The canonical parameter is ``params [N, F]`` whatever the backend. On a CUDA device with
tiny-cuda-nn the table moves into a ``tcnn.Encoding`` (its flat ``params`` is ``[N * F]``, the same
memory order); ``state_dict`` / ``load_state_dict`` hooks map between the two, so a checkpoint from
either backend loads into the other, strictly. The backend follows the module's device
(``_apply``): a CPU module runs torch even on a CUDA machine.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pvdal.encodings.backend import hash_grid_backend

PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class LevelLayout:
    scales: list[float]  # float32 values, as tcnn computes them
    resolutions: list[int]
    offsets: list[int]  # first row of each level; offsets[-1] = rows in all
    dense: list[bool]

    @property
    def sizes(self) -> list[int]:
        return list(np.diff(self.offsets))


def tcnn_layout(n_levels: int, log2_T: int, base_res: int, per_level_scale: float) -> LevelLayout:
    """Per-level scale, resolution and table offsets as tcnn computes them (float32 steps)."""
    f32 = np.float32
    log2_pls = f32(math.log2(float(f32(per_level_scale))))  # std::log2(float)
    scales, resolutions, offsets, dense = [], [], [0], []
    T = 2**log2_T
    for lvl in range(n_levels):
        e = f32(f32(lvl) * log2_pls)
        scale = f32(f32(2.0 ** float(e)) * f32(base_res)) - f32(1.0)  # exp2f(...) * base - 1
        res = int(math.ceil(float(scale))) + 1
        n = (res**3 + 7) // 8 * 8  # next_multiple(res^3, 8)
        scales.append(float(scale))
        resolutions.append(res)
        dense.append(res**3 <= T)
        offsets.append(offsets[-1] + min(n, T))
    return LevelLayout(scales, resolutions, offsets, dense)


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
        if implementation not in ("auto", "torch", "tcnn"):
            raise ValueError(f"implementation must be auto|torch|tcnn, got {implementation!r}")
        self.n_levels, self.n_features = n_levels, n_features
        self.log2_T = log2_hashmap_size
        self.per_level_scale = (
            math.exp(math.log(max_resolution / base_resolution) / (n_levels - 1))
            if n_levels > 1 else 1.0
        )
        self.base_resolution = base_resolution
        self.layout = tcnn_layout(n_levels, log2_hashmap_size, base_resolution,
                                  self.per_level_scale)
        lay = self.layout
        self.out_dim = n_levels * n_features
        self.n_rows = lay.offsets[-1]
        self.requested = implementation
        self.implementation = "torch"  # what runs now; follows the device (see _apply)
        self.params = nn.Parameter(torch.empty(self.n_rows, n_features).uniform_(-1e-4, 1e-4))
        self.tcnn: nn.Module | None = None
        self.register_buffer("scales", torch.tensor(lay.scales, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("res", torch.tensor(lay.resolutions, dtype=torch.int64),
                             persistent=False)
        self.register_buffer("offsets", torch.tensor(lay.offsets[:-1]), persistent=False)
        self.register_buffer("sizes", torch.tensor(lay.sizes), persistent=False)
        self.register_buffer("dense", torch.tensor(lay.dense), persistent=False)
        self.n_dense = sum(lay.dense)  # dense levels come first (resolution grows with level)
        self._register_state_dict_hook(HashGridEncoding._save_canonical)
        self._register_load_state_dict_pre_hook(self._load_canonical)
        self._select_backend()

    # --- backend: follows the device ----------------------------------------------------------
    def tcnn_config(self) -> dict:
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features,
            "log2_hashmap_size": self.log2_T,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
        }

    def table(self) -> Tensor:
        """The canonical table [N, F] (a view of tcnn's flat vector when tcnn runs)."""
        if self.tcnn is not None:
            return self.tcnn.params.view(self.n_rows, self.n_features)
        return self.params

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .cpu(), ...
        super()._apply(fn, recurse)
        self._select_backend()
        return self

    def _select_backend(self) -> None:
        table = self.table()
        want = hash_grid_backend(self.requested, table.device)
        if want == self.implementation:
            return
        data, grad = table.detach(), table.requires_grad
        if want == "tcnn":
            import tinycudann as tcnn

            on_gpu = data.device.type == "cuda"
            with torch.cuda.device(data.device) if on_gpu else contextlib.nullcontext():
                mod = tcnn.Encoding(3, self.tcnn_config(), dtype=torch.float32)
            mod.to(data.device)
            with torch.no_grad():
                mod.params.copy_(data.reshape(-1))
            mod.params.requires_grad_(grad)
            del self.params
            self.tcnn = mod
        else:
            self.tcnn = None
            self.params = nn.Parameter(data.clone(), requires_grad=grad)
        self.implementation = want

    @staticmethod
    def _save_canonical(module, state: dict, prefix: str, local_metadata) -> None:
        """tcnn's flat ``tcnn.params`` [N*F] is saved as ``params`` [N, F]."""
        flat = state.pop(prefix + "tcnn.params", None)
        if flat is not None:
            state[prefix + "params"] = flat.view(module.n_rows, module.n_features)

    def _load_canonical(self, state: dict, prefix: str, *args) -> None:
        self.canonicalize_state(state, prefix)
        if self.tcnn is not None and prefix + "params" in state:
            state[prefix + "tcnn.params"] = state.pop(prefix + "params").reshape(-1)

    def canonicalize_state(self, state: dict, prefix: str = "") -> None:
        """Rename a checkpoint's tcnn layout (``tcnn.params`` [N*F]) to ``params`` [N, F]."""
        flat = state.pop(prefix + "tcnn.params", None)
        if flat is not None:
            state[prefix + "params"] = flat.reshape(-1, self.n_features)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        u = ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)  # [M, 3] in [0, 1]
        if self.tcnn is not None:
            return self.tcnn(u.contiguous()).float()
        return self._torch_forward(u)

    def _torch_forward(self, u: Tensor) -> Tensor:
        M, L = u.shape[0], self.n_levels
        # fmaf(scale, u, 0.5) in float32: the float64 product of two float32 is exact
        pos = (u.double()[:, None, :] * self.scales.double()[None, :, None] + 0.5).float()
        p0 = pos.floor()
        frac = pos - p0  # [M, L, 3]
        # int64 indices while training (int32 slows the backward), int32 for inference
        p0 = p0.to(torch.int64 if torch.is_grad_enabled() else torch.int32)
        corner = torch.stack([p0, p0 + 1], dim=-1)  # [M, L, 3, 2]
        w = torch.stack([1.0 - frac, frac], dim=-1)  # [M, L, 3, 2]
        k = self.n_dense
        parts = []
        if k:  # dense levels (first k): x + y*res + z*res^2, wrapped % level size as tcnn does
            cx, cy, cz = corner[:, :k].unbind(2)
            res = self.res[:k].view(1, k, 1, 1, 1).to(p0.dtype)
            idx = (cx[..., :, None, None] + cy[..., None, :, None] * res
                   + cz[..., None, None, :] * (res * res))
            parts.append(idx % self.sizes[:k].view(1, k, 1, 1, 1).to(p0.dtype))
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
