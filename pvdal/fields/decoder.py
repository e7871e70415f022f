"""The shared decoder design of the paper's code: one density MLP and one SH colour MLP.

Instant-NGP's heads, which the authors reuse for the NeRF MLP (its trunk ends in a
``feature_dim``-wide layer) and, for the colour part, TensoRF:

    density_net: feat [M, feature_dim] -> [sigma_raw, 15-dim colour feature]
    color_net:   [SH(d), colour feature] -> rgb (after a sigmoid)

Fields built from these helpers name the modules ``density_net``, ``dir_encoding`` and
``color_net``, so equal sizes give equal state-dict keys and shapes: that is what lets a
student's decoder start as a copy of its teacher's (``distill.init_decoder``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pvdal.encodings.sh import SHEncoding
from pvdal.fields.base import COLOR_FEATURE_DIM
from pvdal.fields.layers import mlp


def density_head(feature_dim: int, hidden_dim: int) -> nn.Sequential:
    """features -> [sigma_raw, colour feature] (one hidden ReLU layer)."""
    return mlp(feature_dim, hidden_dim, 1 + COLOR_FEATURE_DIM, 1)


def color_head(sh_degree: int, hidden_dim: int, n_layers: int) -> tuple[SHEncoding, nn.Sequential]:
    """The direction encoding and the colour MLP on ``[SH(d), colour feature]``."""
    enc = SHEncoding(sh_degree)
    return enc, mlp(enc.out_dim + COLOR_FEATURE_DIM, hidden_dim, 3, n_layers)


def shade(color_net: nn.Module, dir_encoding: nn.Module, color_feat: Tensor, d: Tensor) -> Tensor:
    """Per-point rgb in [0, 1] from the colour feature and the view direction."""
    return torch.sigmoid(color_net(torch.cat([dir_encoding(d), color_feat], dim=-1)))
