"""Instant-NGP field: multiresolution hash grid (explicit) + tiny density and colour MLPs (decoder).

features(x) = hash-grid encoding [M, levels * features_per_level]
decode      = density MLP -> (sigma_raw, 15-dim colour feature); colour MLP on (SH(d), feature)
"""

from __future__ import annotations

import torch
from torch import Tensor

from pvdal.encodings.hashgrid import HashGridEncoding
from pvdal.encodings.sh import SHEncoding
from pvdal.fields.base import COLOR_FEATURE_DIM, FieldOutput, RadianceField
from pvdal.fields.layers import mlp


class NGPField(RadianceField):
    def __init__(
        self,
        n_levels: int = 12,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 17,
        base_resolution: int = 16,
        max_resolution: int = 512,
        hidden_dim: int = 64,
        color_hidden_dim: int = 64,
        color_layers: int = 2,
        sh_degree: int = 4,
        implementation: str = "auto",
        density_clamp: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(density_clamp)
        self.encoding = HashGridEncoding(n_levels, n_features_per_level, log2_hashmap_size,
                                         base_resolution, max_resolution, implementation)
        self.feature_dim = self.encoding.out_dim
        self.density_net = mlp(self.feature_dim, hidden_dim, 1 + COLOR_FEATURE_DIM, 1)
        self.dir_encoding = SHEncoding(sh_degree)
        self.color_net = mlp(self.dir_encoding.out_dim + COLOR_FEATURE_DIM, color_hidden_dim, 3,
                             color_layers)

    def features(self, x: Tensor) -> Tensor:
        return self.encoding(x)

    def density_raw(self, feat: Tensor) -> Tensor:
        return self.density_net(feat)[:, 0]

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        h = self.density_net(feat)
        sigma_raw, color_feat = h[:, 0], h[:, 1:]
        rgb = torch.sigmoid(self.color_net(torch.cat([self.dir_encoding(d), color_feat], -1)))
        return FieldOutput(sigma_raw, color_feat, rgb)

    def param_groups(self):
        return {
            "features": list(self.encoding.parameters()),
            "decoder": list(self.density_net.parameters()) + list(self.color_net.parameters()),
        }
