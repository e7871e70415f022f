"""Instant-NGP field: multiresolution hash grid (explicit) + tiny density and colour MLPs (decoder).

features(x) = hash-grid encoding [M, levels * features_per_level]
decode      = density MLP -> (sigma_raw, 15-dim colour feature); colour MLP on (SH(d), feature)
The decoder is the shared design of pvdal/fields/decoder.py (mlp and tensorf can adopt it).
"""

from __future__ import annotations

from torch import Tensor

from pvdal.encodings.hashgrid import HashGridEncoding
from pvdal.fields.base import FieldOutput, RadianceField
from pvdal.fields.decoder import color_head, density_head, shade


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
        self.density_net = density_head(self.feature_dim, hidden_dim)
        self.dir_encoding, self.color_net = color_head(sh_degree, color_hidden_dim, color_layers)

    def features(self, x: Tensor) -> Tensor:
        return self.encoding(x)

    def density_raw(self, feat: Tensor) -> Tensor:
        return self.density_net(feat)[:, 0]

    def volume_parts(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        h = self.density_net(feat)
        return h[:, 0], h[:, 1:]

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        sigma_raw, color_feat = self.volume_parts(feat)
        rgb = shade(self.color_net, self.dir_encoding, color_feat, d)
        return FieldOutput(sigma_raw, color_feat, rgb)

    def param_groups(self):
        return {
            "features": list(self.encoding.parameters()),
            "decoder": list(self.density_net.parameters()) + list(self.color_net.parameters()),
        }
