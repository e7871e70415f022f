"""TensoRF's own field (``TensorVMSplit`` + ``MLP_Fea``), computed as TensoRF computes it.

Built by the TensoRF importer (pvdal/io/importers/tensorf.py) from a ``.th`` file; the parameter
names are TensoRF's (``density_plane.0``, ``renderModule.mlp.0.weight``, ...), so its state dict
loads 1:1. What differs from pvdal's own TensoRFField (pvdal/fields/tensorf.py):

* **Frame.** TensoRF works in its dataset's world (Blender world, unchanged, box +-1.5). pvdal's
  field coordinates ``x`` (the normalised scene of pvdal's parser) map to it by
  ``w = x * world_scale + world_offset`` (Blender parser: ``world_scale = 1 / data.scale = 1.5``);
  inside, positions are normalised as TensoRF does, ``u = (w - aabb_min) * 2 / aabb_size - 1``.
* **Density.** TensoRF's ``sigma = softplus(sum(plane * line) + density_shift)`` (or relu) per
  world unit, times ``distance_scale`` in its alpha; zero outside ``aabb`` and where the alpha
  mask (``grid_sample`` of its 0/1 volume, ``align_corners=True``) is 0. pvdal's renderer and
  distillation share one activation (exp, pvdal/fields/activation.py) so that every field's
  ``sigma_raw`` means the same thing; this field hands out the exact reparametrisation
  ``sigma_raw = log(sigma * distance_scale * world_scale)`` (density per pvdal unit), and
  ``EMPTY_RAW`` where TensoRF's density is zero. ``tensorf_outputs`` gives TensoRF's own values.
* **Widths.** Colour feature ``app_dim`` wide (27: the basis matrix's output), colour MLP
  ``featureC`` wide on ``[f, d, PE(f), PE(d)]`` (TensoRF's order, frequencies 2^k, no pi).
* **Features.** ``features(x)`` = the per-component plane x line products (density, then
  appearance) and a last 0/1 column: inside ``aabb`` and the alpha mask (TensoRF's ray_valid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvdal.fields.base import FieldOutput, RadianceField

EMPTY_RAW = -100.0  # sigma_raw of zero density: exp(-100) underflows to 0 in float32 alphas
MAT_MODE = ((0, 1), (0, 2), (1, 2))  # TensoRF's matMode: plane i spans these axes
VEC_MODE = (2, 1, 0)  # TensoRF's vecMode: line i runs along this axis


def positional_encoding(x: Tensor, freqs: int) -> Tensor:
    """TensoRF's PE: [sin(x_j 2^k), cos(x_j 2^k)], index j * freqs + k."""
    bands = 2.0 ** torch.arange(freqs, device=x.device, dtype=x.dtype)
    pts = (x[..., None] * bands).reshape(*x.shape[:-1], freqs * x.shape[-1])
    return torch.cat([torch.sin(pts), torch.cos(pts)], dim=-1)


class MLPRenderFea(nn.Module):
    """TensoRF's ``MLPRender_Fea``: ``mlp`` = Linear, ReLU, Linear, ReLU, Linear; sigmoid."""

    def __init__(self, in_dim: int, view_pe: int, fea_pe: int, feature_c: int) -> None:
        super().__init__()
        self.view_pe, self.fea_pe = view_pe, fea_pe
        n_in = 2 * view_pe * 3 + 2 * fea_pe * in_dim + 3 + in_dim
        self.mlp = nn.Sequential(nn.Linear(n_in, feature_c), nn.ReLU(inplace=True),
                                 nn.Linear(feature_c, feature_c), nn.ReLU(inplace=True),
                                 nn.Linear(feature_c, 3))

    def forward(self, viewdirs: Tensor, features: Tensor) -> Tensor:
        parts = [features, viewdirs]
        if self.fea_pe > 0:
            parts.append(positional_encoding(features, self.fea_pe))
        if self.view_pe > 0:
            parts.append(positional_encoding(viewdirs, self.view_pe))
        return torch.sigmoid(self.mlp(torch.cat(parts, dim=-1)))


def _planes(n_comp: list[int], grid: list[int]) -> tuple[nn.ParameterList, nn.ParameterList]:
    planes = [nn.Parameter(torch.zeros(1, c, grid[b], grid[a]))
              for c, (a, b) in zip(n_comp, MAT_MODE)]
    lines = [nn.Parameter(torch.zeros(1, c, grid[k], 1)) for c, k in zip(n_comp, VEC_MODE)]
    return nn.ParameterList(planes), nn.ParameterList(lines)


class TensoRFNativeField(RadianceField):
    has_color_feature = True

    def __init__(
        self,
        aabb: list[list[float]],
        grid_size: list[int],
        density_n_comp: list[int],
        appearance_n_comp: list[int],
        app_dim: int = 27,
        density_shift: float = -10.0,
        distance_scale: float = 25.0,
        fea2dense_act: str = "softplus",
        view_pe: int = 2,
        fea_pe: int = 2,
        feature_c: int = 128,
        alpha_mask_shape: list[int] | None = None,
        alpha_mask_aabb: list[list[float]] | None = None,
        world_scale: float = 1.5,
        world_offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
        init_std: float = 0.0,
        density_clamp: tuple[float, float] | None = None,
    ) -> None:
        """Arguments are TensoRF's ``kwargs`` (``gridSize`` = [X, Y, Z]); ``alpha_mask_shape``
        (Z, Y, X) and ``alpha_mask_aabb`` describe its alpha mask (None: no mask);
        ``world_scale``/``world_offset``: pvdal field coordinates -> TensoRF world;
        ``init_std``: a student under TensoRF's conventions (``student=tensorf_native``) starts
        its planes and lines at ``init_std * randn``, as TensoRF does (0.1); 0: zeros (import)."""
        super().__init__(density_clamp)
        if fea2dense_act not in ("softplus", "relu"):
            raise ValueError(f"fea2dense_act must be softplus|relu, got {fea2dense_act!r}")
        self.density_shift, self.distance_scale = float(density_shift), float(distance_scale)
        self.fea2dense_act = fea2dense_act
        self.world_scale = float(world_scale)
        self.density_n_comp, self.app_n_comp = list(density_n_comp), list(appearance_n_comp)
        self.grid_size = [int(g) for g in grid_size]
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32).view(2, 3))
        self.register_buffer("world_offset", torch.tensor(world_offset, dtype=torch.float32))
        self.density_plane, self.density_line = _planes(self.density_n_comp, self.grid_size)
        self.app_plane, self.app_line = _planes(self.app_n_comp, self.grid_size)
        if init_std > 0:
            with torch.no_grad():
                for p in (*self.density_plane, *self.density_line, *self.app_plane,
                          *self.app_line):
                    p.normal_(0.0, float(init_std))
        self.basis_mat = nn.Linear(sum(self.app_n_comp), app_dim, bias=False)
        self.renderModule = MLPRenderFea(app_dim, view_pe, fea_pe, feature_c)
        self.has_alpha_mask = alpha_mask_shape is not None
        shape = [int(s) for s in alpha_mask_shape] if self.has_alpha_mask else [1, 1, 1]
        self.register_buffer("alpha_volume", torch.ones(1, 1, *shape[-3:]))
        mask_aabb = alpha_mask_aabb if alpha_mask_aabb is not None else aabb
        self.register_buffer("alpha_aabb", torch.tensor(mask_aabb, dtype=torch.float32).view(2, 3))
        self.n_sigma = sum(self.density_n_comp)
        self.color_feature_dim = int(app_dim)
        self.feature_dim = self.n_sigma + sum(self.app_n_comp) + 1

    # --- TensoRF's own computations -------------------------------------------------------------
    def to_world(self, x: Tensor) -> Tensor:
        """pvdal field coordinates -> TensoRF world."""
        return x * self.world_scale + self.world_offset

    def normalize_coord(self, w: Tensor) -> Tensor:
        return (w - self.aabb[0]) * (2.0 / (self.aabb[1] - self.aabb[0])) - 1

    def alpha_mask(self, w: Tensor) -> Tensor:
        """TensoRF's AlphaGridMask verdict at world points [M, 3] -> bool [M] (alpha > 0)."""
        if not self.has_alpha_mask:
            return torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
        box = self.alpha_aabb
        u = (w - box[0]) * (1.0 / (box[1] - box[0]) * 2) - 1
        vals = F.grid_sample(self.alpha_volume, u.view(1, -1, 1, 1, 3), align_corners=True)
        return vals.view(-1) > 0

    def valid(self, w: Tensor) -> Tensor:
        """TensoRF's ray_valid at world points: inside ``aabb`` and the alpha mask."""
        inside = ~((self.aabb[0] > w) | (w > self.aabb[1])).any(dim=-1)
        return inside & self.alpha_mask(w)

    @staticmethod
    def _products(planes: nn.ParameterList, lines: nn.ParameterList, u: Tensor) -> list[Tensor]:
        """Per plane i: plane coefficient x line coefficient [C_i, M] (TensoRF's sampling)."""
        cp = torch.stack((torch.stack([u[..., a] for a, _ in MAT_MODE]),
                          torch.stack([u[..., b] for _, b in MAT_MODE])), dim=-1)
        cp = cp.view(3, -1, 1, 2)
        cl = torch.stack([u[..., k] for k in VEC_MODE])
        cl = torch.stack((torch.zeros_like(cl), cl), dim=-1).view(3, -1, 1, 2)
        out = []
        for i in range(len(planes)):
            p = F.grid_sample(planes[i], cp[[i]], align_corners=True).view(-1, u.shape[0])
            line = F.grid_sample(lines[i], cl[[i]], align_corners=True).view(-1, u.shape[0])
            out.append(p * line)
        return out

    def feature2density(self, density_features: Tensor) -> Tensor:
        if self.fea2dense_act == "softplus":
            return F.softplus(density_features + self.density_shift)
        return F.relu(density_features)  # TensoRF's relu ignores density_shift

    def _sigma_feature(self, feat: Tensor) -> Tensor:
        """Sum of the density products, in TensoRF's order (plane by plane)."""
        s = torch.zeros(feat.shape[0], device=feat.device, dtype=feat.dtype)
        off = 0
        for c in self.density_n_comp:
            s = s + feat[:, off:off + c].sum(dim=-1)
            off += c
        return s

    @torch.no_grad()
    def tensorf_outputs(self, w: Tensor, d: Tensor) -> dict[str, Tensor]:
        """TensoRF's per-point values at world points: ``sigma`` (feature2density output, no
        mask applied), ``rgb`` (the colour MLP), ``alpha_mask`` (bool), ``valid`` (ray_valid)."""
        feat = self.features_world(w)
        return {"sigma": self.feature2density(self._sigma_feature(feat)),
                "rgb": self.decode(feat, d).rgb, "alpha_mask": self.alpha_mask(w),
                "valid": feat[:, -1] > 0}

    # --- the RadianceField halves ---------------------------------------------------------------
    def features_world(self, w: Tensor) -> Tensor:
        u = self.normalize_coord(w)
        dens = self._products(self.density_plane, self.density_line, u)
        app = self._products(self.app_plane, self.app_line, u)
        valid = self.valid(w).to(u.dtype)
        return torch.cat([torch.cat(dens).T, torch.cat(app).T, valid[:, None]], dim=-1)

    def features(self, x: Tensor) -> Tensor:
        return self.features_world(self.to_world(x))

    def density_raw(self, feat: Tensor) -> Tensor:
        sigma = self.feature2density(self._sigma_feature(feat))
        sigma = sigma * (self.distance_scale * self.world_scale)  # per pvdal unit
        raw = torch.log(sigma.clamp_min(torch.finfo(sigma.dtype).tiny))
        return torch.where((feat[:, -1] > 0) & (sigma > 0), raw, torch.full_like(raw, EMPTY_RAW))

    def volume_parts(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        return self.density_raw(feat), self.basis_mat(feat[:, self.n_sigma:-1])

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        sigma_raw, color_feat = self.volume_parts(feat)
        return FieldOutput(sigma_raw, color_feat, self.renderModule(d, color_feat))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"features": [*self.density_plane, *self.density_line, *self.app_plane,
                             *self.app_line],
                "decoder": [*self.basis_mat.parameters(), *self.renderModule.parameters()]}
