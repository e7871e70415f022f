"""The tiny-cuda-nn modules of nerfstudio's nerfacto field (``implementation: tcnn``), computed on
any device as tcnn computes them; used by ``NerfactoNativeField(implementation="tcnn")``.

What nerfstudio 1.1.x builds (``field_components/mlp.py`` ``MLPWithHashEncoding`` / ``MLP``,
``encodings.py`` ``HashEncoding.get_tcnn_encoding_config`` / ``SHEncoding``) and tcnn computes
(``network_with_input_encoding.h``, ``fully_fused_mlp.cu``, ``encodings/{grid,identity,
spherical_harmonics}.h``, ``cpp_api.cu``):

* ``mlp_base.model`` = ``tcnn.NetworkWithInputEncoding(HashGrid, FullyFusedMLP)``: HashGrid with
  ``base_resolution = base_res`` and ``per_level_scale = exp((ln max_res - ln base_res) / (L -
  1))``, output padded with **zeros** to a multiple of 16; FullyFusedMLP (ReLU, no biases, output
  width padded to 16, output activation None). Its flat ``params``: the network's weight matrices
  (``[out, in]`` row-major, layer by layer), **then** the grid (tcnn layout, pvdal's
  ``HashGridEncoding``).
* ``mlp_head.tcnn_encoding`` = ``tcnn.Network`` = a NetworkWithInputEncoding with an Identity
  encoding, whose padding columns are **ones** (so the pad column acts as a bias); ReLU hidden
  layers, Sigmoid output activation, rows 0..2 kept.
* ``direction_encoding.tcnn_encoding`` = tcnn ``SphericalHarmonics`` (degree 4, 16 outputs) fed
  nerfstudio's ``(d + 1) / 2``; tcnn maps its input back with ``* 2 - 1``, so the head sees the
  SH of ``d`` itself in tcnn's sign convention (pvdal's ``sh_basis``), unlike the torch branch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from pvdal.encodings.hashgrid import HashGridEncoding
from pvdal.encodings.sh import sh_basis

ALIGN = 16  # FullyFusedMLP's required input alignment and output padding
FUSED_WIDTHS = (16, 32, 64, 128)  # nerfstudio uses FullyFusedMLP for these, CutlassMLP otherwise


def padded(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def ns_per_level_scale(num_levels: int, base_res: int, max_res: int) -> float:
    """nerfstudio's ``growth_factor`` (float64; tcnn reads it as float32)."""
    if num_levels <= 1:
        return 1.0
    return float(np.exp((np.log(max_res) - np.log(base_res)) / (num_levels - 1)))


class TcnnMLP(nn.Module):
    """tcnn's FullyFusedMLP behind an input encoding that pads with ``pad_value``: input padded to
    a multiple of 16, ``num_layers - 1`` ReLU layers of ``width``, a last layer of 16-padded
    width, optional Sigmoid, the first ``out_dim`` outputs. Parameters ``layers.{i}.weight``."""

    def __init__(self, in_dim: int, num_layers: int, width: int, out_dim: int,
                 pad_value: float, out_sigmoid: bool = False) -> None:
        super().__init__()
        if width not in FUSED_WIDTHS or num_layers < 2:
            raise ValueError(f"an MLP of {num_layers} layers x {width} is not a tcnn "
                             f"FullyFusedMLP (widths {FUSED_WIDTHS}, >= 1 hidden layer)")
        self.in_dim, self.out_dim, self.pad_value = in_dim, out_dim, float(pad_value)
        dims = [padded(in_dim)] + [width] * (num_layers - 1) + [padded(out_dim)]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False)
                                    for a, b in zip(dims[:-1], dims[1:]))
        self.out_sigmoid = out_sigmoid

    def forward(self, x: Tensor) -> Tensor:
        pad = self.layers[0].in_features - x.shape[-1]
        if pad:
            x = torch.cat([x, x.new_full((*x.shape[:-1], pad), self.pad_value)], dim=-1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        x = x[..., :self.out_dim]
        return torch.sigmoid(x) if self.out_sigmoid else x


class TcnnHashMLP(nn.Module):
    """``tcnn.NetworkWithInputEncoding(HashGrid, FullyFusedMLP)``: ``encoding`` (pvdal's
    HashGridEncoding, tcnn's indexing and layout) and ``network`` (TcnnMLP, zero padding)."""

    def __init__(self, num_levels: int, base_res: int, max_res: int, log2_hashmap_size: int,
                 features_per_level: int, num_layers: int, width: int, out_dim: int) -> None:
        super().__init__()
        pls = float(np.float32(ns_per_level_scale(num_levels, base_res, max_res)))
        self.encoding = HashGridEncoding(num_levels, features_per_level, log2_hashmap_size,
                                         base_res, base_res * pls ** (num_levels - 1),
                                         implementation="torch")
        if np.float32(self.encoding.per_level_scale) != np.float32(pls):
            raise ValueError(f"per_level_scale {pls} does not round-trip")
        self.out_dim = self.encoding.out_dim
        self.network = TcnnMLP(self.out_dim, num_layers, width, out_dim, pad_value=0.0)

    def encode(self, u: Tensor) -> Tensor:
        """u in [0, 1]^3 (nerfstudio's hash input) -> the grid features."""
        return self.encoding._torch_forward(u.float())

    def n_params(self) -> int:
        return sum(m.weight.numel() for m in self.network.layers) + \
            self.encoding.n_rows * self.encoding.n_features


def tcnn_sh16(d: Tensor) -> Tensor:
    """What tcnn's SH encoding returns for nerfstudio's input ``(d + 1) / 2``."""
    return sh_basis((d + 1.0) / 2.0 * 2.0 - 1.0, 4)


def split_params(flat: Tensor, layers: nn.ModuleList, prefix: str) -> tuple[dict, Tensor]:
    """tcnn's flat vector -> ``{prefix}layers.{i}.weight`` ([out, in] row-major, in order) and
    the rest (a NetworkWithInputEncoding's encoding parameters)."""
    state, off = {}, 0
    for i, layer in enumerate(layers):
        n = layer.weight.numel()
        state[f"{prefix}layers.{i}.weight"] = flat[off:off + n].reshape(layer.weight.shape)
        off += n
    return state, flat[off:]
