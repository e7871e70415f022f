"""nerfstudio's nerfacto field (``NerfactoField``), computed as nerfstudio computes it: the torch
implementation here, the tcnn one with ``implementation="tcnn"`` (pvdal/fields/nerfacto_tcnn.py:
a tcnn hash grid, bias-free fully fused MLPs, tcnn's SH of ``d``; density and the rest as below).

Built by the nerfstudio importer (pvdal/io/importers/nerfstudio.py) from a run's checkpoint; the
parameter names are nerfstudio's (``mlp_base.model.0.hash_table``, ``mlp_head.layers.0.weight``,
``embedding_appearance.embedding.weight``, ...), so the ``_model.field.*`` state loads 1:1.
What nerfstudio 1.1.x does, and this field repeats (``nerfstudio/fields/nerfacto_field.py``,
``field_components/encodings.py``, ``utils/math.py``):

* **Frame.** pvdal field coordinates ``x`` map to nerfstudio's frame by one affine map,
  ``p = ns_from_scene[:, :3] @ x + ns_from_scene[:, 3]`` (the importer composes pvdal's parser
  scale with the run's dataparser transform and scale); directions by its linear part,
  renormalised. ``length_scale`` = nerfstudio units per pvdal unit.
* **Position.** Scene contraction (L-inf: ``|p| <= 1`` kept, else ``(2 - 1/|p|) p/|p|``), then
  ``(p + 2) / 4`` into [0, 1]; points not strictly inside (0, 1) are set to 0 and get density 0
  (``selector``). Without contraction: ``(p - aabb_min) / aabb_size``.
* **Hash encoding** (torch implementation): level scales ``floor(base_res * b^l)``, corners
  ``floor``/``ceil`` of ``p * scale`` (no +0.5, no dense levels), hash ``x ^ y*2654435761 ^
  z*805459861`` mod ``2^T`` plus ``l * 2^T``, nerfstudio's interpolation order.
* **Density.** ``average_init_density * trunc_exp(raw)`` per nerfstudio unit. pvdal's shared
  activation is ``exp``, so ``sigma_raw = raw + log(average_init_density * length_scale)``
  (density per pvdal unit); ``EMPTY_RAW`` where nerfstudio's selector zeroes it.
* **Colour.** ``sigmoid(mlp_head([SH16((d + 1) / 2), geo15, appearance]))``: the torch SH
  encoding is evaluated at ``(d + 1) / 2`` as is; the appearance code at inference is the mean of
  the per-image embeddings (``use_average_appearance_embedding``) or zeros.
* **tcnn.** Parameter names are pvdal's split of tcnn's flat vectors (``mlp_base.encoding.params``
  [rows, F], ``mlp_base.network.layers.{i}.weight``, ``mlp_head.layers.{i}.weight``; the importer
  splits them); fp16 checkpoints are held as float32.
* **Features.** ``features(x)`` = the hash encoding and a last 0/1 column (the selector); the
  colour feature is nerfacto's 15-dim geo feature.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from pvdal.fields.base import FieldOutput, RadianceField
from pvdal.fields.nerfacto_tcnn import TcnnHashMLP, TcnnMLP, tcnn_sh16

EMPTY_RAW = -100.0  # sigma_raw of zero density: exp(-100) underflows to 0 in float32 alphas
PRIMES = (1, 2654435761, 805459861)
SH_C = (0.28209479177387814, 0.4886025119029199, 1.0925484305920792, 0.9461746957575601,
        0.31539156525251999, 0.5462742152960396, 0.5900435899266435, 2.890611442640554,
        0.4570457994644658, 0.3731763325901154, 1.445305721320277)


def sh16(v: Tensor) -> Tensor:
    """nerfstudio's ``components_from_spherical_harmonics(4, v)`` (v is not renormalised)."""
    x, y, z = v.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    c = SH_C
    return torch.stack([
        torch.full_like(x, c[0]), c[1] * y, c[1] * z, c[1] * x,
        c[2] * x * y, c[2] * y * z, c[3] * zz - c[4], c[2] * x * z, c[5] * (xx - yy),
        c[6] * y * (3 * xx - yy), c[7] * x * y * z, c[8] * y * (5 * zz - 1),
        c[9] * z * (5 * zz - 3), c[8] * x * (5 * zz - 1), c[10] * z * (xx - yy),
        c[6] * x * (xx - 3 * yy)], dim=-1)


class NSHashEncoding(nn.Module):
    """nerfstudio's ``HashEncoding`` (torch implementation); parameter ``hash_table``."""

    def __init__(self, num_levels: int, min_res: int, max_res: int, log2_hashmap_size: int,
                 features_per_level: int) -> None:
        super().__init__()
        self.table_size = 2**log2_hashmap_size
        levels = torch.arange(num_levels)
        growth = np.exp((np.log(max_res) - np.log(min_res)) / (num_levels - 1)) \
            if num_levels > 1 else 1
        self.register_buffer("scalings", torch.floor(min_res * growth**levels).float(),
                             persistent=False)
        self.register_buffer("hash_offset", levels * self.table_size, persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES), persistent=False)
        self.hash_table = nn.Parameter(torch.zeros(self.table_size * num_levels,
                                                   features_per_level))
        self.out_dim = num_levels * features_per_level

    def forward(self, p: Tensor) -> Tensor:
        """Same integers and float operations as nerfstudio's ``pytorch_fwd``; the hash is
        computed per axis once (``c * prime``) and ``% 2^T`` as ``& (2^T - 1)`` (the inputs are
        in [0, 1], so every product is non-negative)."""
        scaled = p[..., None, :] * self.scalings.view(-1, 1)  # [M, L, 3]
        sc, sf = torch.ceil(scaled).int(), torch.floor(scaled).int()
        off = scaled - sf
        hc, hf = sc * self.primes, sf * self.primes  # int64 [M, L, 3]
        cx, cy, cz = hc.unbind(-1)
        fx, fy, fz = hf.unbind(-1)
        mask = self.table_size - 1

        def f(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
            idx = ((a ^ b ^ c) & mask) + self.hash_offset
            return self.hash_table.index_select(0, idx.view(-1)).view(*idx.shape, -1)

        f0, f1, f2, f3 = f(cx, cy, cz), f(cx, fy, cz), f(fx, fy, cz), f(fx, cy, cz)
        f4, f5, f6, f7 = f(cx, cy, fz), f(cx, fy, fz), f(fx, fy, fz), f(fx, cy, fz)
        ox, oy, oz = off[..., 0:1], off[..., 1:2], off[..., 2:3]
        f03, f12 = f0 * ox + f3 * (1 - ox), f1 * ox + f2 * (1 - ox)
        f56, f47 = f5 * ox + f6 * (1 - ox), f4 * ox + f7 * (1 - ox)
        f0312, f4756 = f03 * oy + f12 * (1 - oy), f47 * oy + f56 * (1 - oy)
        return torch.flatten(f0312 * oz + f4756 * (1 - oz), start_dim=-2)


class NSMLP(nn.Module):
    """nerfstudio's ``MLP`` (torch implementation, no skips): ``layers.{i}`` Linear, ReLU
    between them, optional output activation."""

    def __init__(self, in_dim: int, num_layers: int, width: int, out_dim: int,
                 out_sigmoid: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [width] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out_sigmoid = out_sigmoid

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return torch.sigmoid(x) if self.out_sigmoid else x


class NSEmbedding(nn.Module):
    """nerfstudio's ``Embedding``: parameter ``embedding.weight`` [num_images, dim]."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, dim)


class NerfactoNativeField(RadianceField):
    has_color_feature = True

    def __init__(
        self,
        num_images: int,
        num_levels: int = 16,
        base_res: int = 16,
        max_res: int = 2048,
        log2_hashmap_size: int = 19,
        features_per_level: int = 2,
        num_layers: int = 2,
        hidden_dim: int = 64,
        geo_feat_dim: int = 15,
        num_layers_color: int = 3,
        hidden_dim_color: int = 64,
        appearance_embedding_dim: int = 32,
        use_average_appearance_embedding: bool = True,
        average_init_density: float = 1.0,
        contraction: bool = True,
        aabb: list[list[float]] | None = None,
        ns_from_scene: list[list[float]] | None = None,
        density_clamp: tuple[float, float] | None = None,
        implementation: str = "torch",
    ) -> None:
        """Arguments are nerfacto's config fields; ``aabb`` the scene box (used without
        contraction); ``ns_from_scene`` the 3x4 map pvdal field coordinates -> nerfstudio;
        ``implementation`` the layout of the checkpoint's modules (torch or tcnn)."""
        super().__init__(density_clamp)
        box = aabb if aabb is not None else [[-1.0] * 3, [1.0] * 3]
        eye = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]
        self.register_buffer("aabb", torch.tensor(box, dtype=torch.float32).view(2, 3))
        self.register_buffer("max_res", torch.tensor(int(max_res)))
        self.register_buffer("num_levels", torch.tensor(int(num_levels)))
        self.register_buffer("log2_hashmap_size", torch.tensor(int(log2_hashmap_size)))
        self.register_buffer("ns_from_scene", torch.tensor(
            ns_from_scene if ns_from_scene is not None else eye, dtype=torch.float32))
        self.length_scale = float(abs(np.linalg.det(np.asarray(
            ns_from_scene if ns_from_scene is not None else eye, dtype=np.float64)[:, :3]))
            ** (1 / 3))
        self.contraction, self.geo_feat_dim = bool(contraction), int(geo_feat_dim)
        self.average_init_density = float(average_init_density)
        self.use_average_appearance_embedding = bool(use_average_appearance_embedding)
        self.appearance_dim = int(appearance_embedding_dim)
        self.embedding_appearance = (NSEmbedding(num_images, self.appearance_dim)
                                     if self.appearance_dim > 0 else None)
        if implementation not in ("torch", "tcnn"):
            raise ValueError(f"implementation must be torch|tcnn, got {implementation!r}")
        self.tcnn = implementation == "tcnn"
        head_in = 16 + self.geo_feat_dim + self.appearance_dim
        if self.tcnn:
            self.mlp_base = TcnnHashMLP(num_levels, base_res, max_res, log2_hashmap_size,
                                        features_per_level, num_layers, hidden_dim,
                                        1 + self.geo_feat_dim)
            self.mlp_head = TcnnMLP(head_in, num_layers_color, hidden_dim_color, 3,
                                    pad_value=1.0, out_sigmoid=True)
            enc = self.mlp_base
        else:
            enc = NSHashEncoding(num_levels, base_res, max_res, log2_hashmap_size,
                                 features_per_level)
            self.mlp_base = nn.Module()
            self.mlp_base.model = nn.Sequential(enc, NSMLP(enc.out_dim, num_layers, hidden_dim,
                                                           1 + self.geo_feat_dim))
            self.mlp_head = NSMLP(head_in, num_layers_color, hidden_dim_color, 3,
                                  out_sigmoid=True)
        self.enc_dim = enc.out_dim
        self.feature_dim = enc.out_dim + 1
        self.color_feature_dim = self.geo_feat_dim

    # --- nerfstudio's own computations ----------------------------------------------------------
    def encode(self, u: Tensor) -> Tensor:
        return self.mlp_base.encode(u) if self.tcnn else self.mlp_base.model[0](u)

    def base_mlp(self, enc: Tensor) -> Tensor:
        return self.mlp_base.network(enc) if self.tcnn else self.mlp_base.model[1](enc)

    def to_ns(self, x: Tensor) -> Tensor:
        """pvdal field coordinates -> nerfstudio frame."""
        return x @ self.ns_from_scene[:, :3].T + self.ns_from_scene[:, 3]

    def dirs_to_ns(self, d: Tensor) -> Tensor:
        v = d @ self.ns_from_scene[:, :3].T
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def normalized_positions(self, p: Tensor) -> Tensor:
        """nerfacto's hash input in [0, 1] and its selector (before zeroing)."""
        if self.contraction:
            mag = p.abs().amax(dim=-1, keepdim=True)
            p = torch.where(mag < 1, p, (2 - 1 / mag) * (p / mag))
            return (p + 2.0) / 4.0
        return (p - self.aabb[0]) / (self.aabb[1] - self.aabb[0])

    def features_ns(self, p: Tensor) -> Tensor:
        u = self.normalized_positions(p)
        sel = ((u > 0.0) & (u < 1.0)).all(dim=-1)
        u = u * sel[..., None]
        return torch.cat([self.encode(u), sel[:, None].to(u.dtype)], dim=-1)

    def appearance(self, n: int, like: Tensor) -> Tensor | None:
        if self.embedding_appearance is None:
            return None
        if self.use_average_appearance_embedding:
            mean = self.embedding_appearance.embedding.weight.mean(dim=0)
            return mean.to(like.dtype).expand(n, -1)
        return like.new_zeros(n, self.appearance_dim)

    def rgb_ns(self, geo: Tensor, d_ns: Tensor) -> Tensor:
        parts = [tcnn_sh16(d_ns) if self.tcnn else sh16((d_ns + 1.0) / 2.0), geo]
        app = self.appearance(geo.shape[0], geo)
        return self.mlp_head(torch.cat(parts if app is None else [*parts, app], dim=-1))

    @torch.no_grad()
    def nerfstudio_outputs(self, p: Tensor, d: Tensor) -> dict[str, Tensor]:
        """nerfstudio's per-point values at nerfstudio-frame points / unit directions:
        ``density`` (per nerfstudio unit, selector applied) and ``rgb``."""
        feat = self.features_ns(p)
        h = self.base_mlp(feat[:, :-1])
        density = self.average_init_density * torch.exp(h[:, 0]) * feat[:, -1]
        return {"density": density, "rgb": self.rgb_ns(h[:, 1:], d)}

    # --- the RadianceField halves ---------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        return self.features_ns(self.to_ns(x))

    def _base(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        h = self.base_mlp(feat[:, :-1])
        raw = h[:, 0] + float(np.log(self.average_init_density * self.length_scale))
        raw = torch.where(feat[:, -1] > 0, raw, torch.full_like(raw, EMPTY_RAW))
        return raw, h[:, 1:]

    def density_raw(self, feat: Tensor) -> Tensor:
        return self._base(feat)[0]

    def volume_parts(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        return self._base(feat)

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        sigma_raw, geo = self._base(feat)
        return FieldOutput(sigma_raw, geo, self.rgb_ns(geo, self.dirs_to_ns(d)))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        base = self.mlp_base if self.tcnn else self.mlp_base.model
        net = base.network if self.tcnn else base[1]
        head = [*net.parameters(), *self.mlp_head.parameters()]
        if self.embedding_appearance is not None:
            head += list(self.embedding_appearance.parameters())
        grid = base.encoding if self.tcnn else base[0]
        return {"features": list(grid.parameters()), "decoder": head}
