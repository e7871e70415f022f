"""Original NeRF field: frequency encoding + deep ReLU trunk with a skip (explicit) + small heads.

PVD's split for a pure MLP: the positional encoding has no parameters, so the "explicit" part is
the deep trunk itself, ``features(x) = trunk(PE(x))`` [M, width]; the decoder is the small heads:

    sigma_raw  = Linear(width, 1)
    color_feat = Linear(width, 15)
    rgb        = sigmoid(MLP(color_feat, enc(d)))   (one hidden layer of width // 2)

This puts nearly all capacity (and all the geometry) in the feature half, as for the grid fields,
so feature-level distillation aligns like with like.

``decoder="shared"`` is the paper's code instead: the trunk ends in a linear layer to
``feature_dim`` (the hash grid's width) and the decoder is Instant-NGP's density and SH colour
MLPs (pvdal/fields/decoder.py), so an ngp teacher's decoder can be copied into it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pvdal.encodings.frequency import FrequencyEncoding
from pvdal.encodings.sh import SHEncoding
from pvdal.fields.base import COLOR_FEATURE_DIM, FieldOutput, RadianceField
from pvdal.fields.decoder import color_head, density_head, shade
from pvdal.fields.layers import mlp


class MLPField(RadianceField):
    """NeRF MLP. CPU default 6 x 128; the paper's preset is ``depth=8, width=256``."""

    def __init__(
        self,
        depth: int = 6,
        width: int = 128,
        skip: int | None = None,
        pos_freqs: int = 10,
        dir_encoding: str = "frequency",
        dir_freqs: int = 4,
        sh_degree: int = 4,
        decoder: str = "nerf",
        feature_dim: int | None = None,
        hidden_dim: int = 64,
        color_hidden_dim: int = 64,
        color_layers: int = 2,
        density_clamp: tuple[float, float] | None = None,
    ) -> None:
        """``skip``: index of the trunk layer that also takes PE(x) (default ``depth // 2``);
        ``dir_encoding``: ``frequency`` (``dir_freqs``) or ``sh`` (``sh_degree`` bands).
        ``decoder``: ``nerf`` (the heads above) or ``shared`` (NGP's heads on a trunk output of
        ``feature_dim``; ``hidden_dim``, ``color_hidden_dim``, ``color_layers`` and
        ``sh_degree`` size them, the direction encoding is then SH)."""
        super().__init__(density_clamp)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if decoder not in ("nerf", "shared"):
            raise ValueError(f"decoder must be nerf|shared, got {decoder!r}")
        self.shared = decoder == "shared"
        self.skip = depth // 2 if skip is None else skip
        self.pos_encoding = FrequencyEncoding(3, pos_freqs)
        if dir_encoding == "frequency":
            self.dir_encoding: nn.Module = FrequencyEncoding(3, dir_freqs)
        elif dir_encoding == "sh":
            self.dir_encoding = SHEncoding(sh_degree)
        else:
            raise ValueError(f"dir_encoding must be frequency|sh, got {dir_encoding!r}")
        pe = self.pos_encoding.out_dim
        self.trunk = nn.ModuleList(
            nn.Linear(pe if i == 0 else width + (pe if i == self.skip else 0), width)
            for i in range(depth)
        )
        self.feature_dim = width
        if self.shared:
            self.feature_dim = int(feature_dim or width)
            self.out = nn.Linear(width, self.feature_dim)  # the original's last trunk layer
            self.density_net = density_head(self.feature_dim, hidden_dim)
            self.dir_encoding, self.color_net = color_head(sh_degree, color_hidden_dim,
                                                           color_layers)
        else:
            self.sigma_head = nn.Linear(width, 1)
            self.color_feat_head = nn.Linear(width, COLOR_FEATURE_DIM)
            self.color_net = mlp(COLOR_FEATURE_DIM + self.dir_encoding.out_dim,
                                 max(width // 2, 1), 3, 1)

    def features(self, x: Tensor) -> Tensor:
        pe = self.pos_encoding(x)
        h = pe
        for i, layer in enumerate(self.trunk):
            if i == self.skip and i > 0:
                h = torch.cat([pe, h], dim=-1)
            h = torch.relu(layer(h))
        return self.out(h) if self.shared else h

    def density_raw(self, feat: Tensor) -> Tensor:
        if self.shared:
            return self.density_net(feat)[:, 0]
        return self.sigma_head(feat)[:, 0]

    def volume_parts(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        if self.shared:
            h = self.density_net(feat)
            return h[:, 0], h[:, 1:]
        return self.sigma_head(feat)[:, 0], self.color_feat_head(feat)

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        sigma_raw, color_feat = self.volume_parts(feat)
        if self.shared:
            return FieldOutput(sigma_raw, color_feat,
                               shade(self.color_net, self.dir_encoding, color_feat, d))
        rgb = torch.sigmoid(self.color_net(torch.cat([color_feat, self.dir_encoding(d)], -1)))
        return FieldOutput(sigma_raw, color_feat, rgb)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        feats = [self.trunk, self.out] if self.shared else [self.trunk]
        heads = ((self.density_net, self.color_net) if self.shared else
                 (self.sigma_head, self.color_feat_head, self.color_net))
        return {
            "features": [p for m in feats for p in m.parameters()],
            "decoder": [p for m in heads for p in m.parameters()],
        }
