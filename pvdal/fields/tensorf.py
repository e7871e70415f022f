"""TensoRF (VM) field: density / appearance VM tensors (explicit) + basis matrix and MLP (decoder).

features(x) = [density components (sum(density_comp)), appearance components (sum(app_comp))]
decode      = sigma_raw = sum(density components) + density_shift;
              color_feat = basis matrix (Linear, no bias) of the appearance components -> 15;
              rgb = sigmoid(MLP(color_feat, PE(color_feat), d, PE(d)))   (TensoRF's MLP_Fea)
``decoder="shared"`` swaps that MLP for the shared SH colour MLP (pvdal/fields/decoder.py), as the
paper's code does, so an ngp or mlp teacher's colour head can be copied into it.

Training follows TensoRF: the grid grows from ``n_voxel_init`` to ``n_voxel_final`` voxels at
``upsample_steps`` (log-spaced counts), and at ``shrink_steps`` the planes/lines are cropped to
the bounding box of the density above ``shrink_threshold`` (``aabb`` buffer); points outside
the box get zero features, i.e. ``sigma_raw = density_shift`` (empty).

TensoRF's density is ``25 * softplus(feat - 10)`` in a box 1.5x ours; under the shared ``exp``
activation the same shift gives 37.5x smaller photometric gradients in near-empty space, so the
L1 weights are TensoRF's / 37.5 (with 8e-5 the L1 wins and a TensoRF-initialised density never
grows). ``init_density`` starts the box semi-transparent instead of at ``exp(density_shift)``.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from pvdal.encodings.frequency import FrequencyEncoding
from pvdal.encodings.vm import VMEncoding
from pvdal.fields.base import COLOR_FEATURE_DIM, FieldOutput, RadianceField
from pvdal.fields.decoder import color_head, shade
from pvdal.fields.layers import mlp

log = logging.getLogger("pvdal")


def n_to_reso(n_voxels: int, aabb: Tensor) -> list[int]:
    """Grid points per axis giving ~``n_voxels`` cubic voxels in ``aabb`` [2, 3] (TensoRF)."""
    size = aabb[1] - aabb[0]
    voxel = float(size.prod() / n_voxels) ** (1.0 / 3.0)
    return [max(round(s / voxel), 2) for s in size.tolist()]


class TensoRFField(RadianceField):
    def __init__(
        self,
        density_comp: tuple[int, int, int] = (8, 8, 8),
        app_comp: tuple[int, int, int] = (24, 24, 24),
        n_voxel_init: int = 32**3,
        n_voxel_final: int = 128**3,
        upsample_steps: tuple[int, ...] = (300, 600, 1000, 1500),
        shrink_steps: tuple[int, ...] = (500,),
        shrink_threshold: float = 0.1,
        density_shift: float = -10.0,
        init_density: float | None = 0.3,
        mlp_hidden: int = 64,
        fea_pe: int = 2,
        view_pe: int = 2,
        init_scale: float = 0.1,
        l1_weight: float = 2e-6,
        l1_weight_rest: float = 1e-6,
        tv_density: float = 0.0,
        tv_app: float = 0.0,
        decoder: str = "tensorf",
        color_hidden_dim: int = 64,
        color_layers: int = 2,
        sh_degree: int = 4,
        density_clamp: tuple[float, float] | None = None,
    ) -> None:
        """``*_comp``: components per plane; ``shrink_threshold``: activated density bounding the
        crop; ``l1_weight`` switches to ``l1_weight_rest`` after the first shrink (TensoRF);
        ``tv_*``: plane TV weights (TensoRF: 0 on synthetic scenes, ~1e-2 forward-facing);
        ``init_density``: activated density the box starts at (semi-transparent, and inside
        PVD's [-2, 7] sigma_raw clamp, where a hard clamp passes gradients), None = TensoRF's;
        ``decoder``: ``tensorf`` (MLP_Fea, ``mlp_hidden``) or ``shared`` (the SH colour MLP,
        ``color_hidden_dim`` x ``color_layers``, ``sh_degree`` bands)."""
        super().__init__(density_clamp)
        if decoder not in ("tensorf", "shared"):
            raise ValueError(f"decoder must be tensorf|shared, got {decoder!r}")
        self.shared = decoder == "shared"
        steps = [int(s) for s in upsample_steps]
        self.upsample_steps = steps
        self.n_voxel_list = [round(math.exp(v)) for v in torch.linspace(
            math.log(n_voxel_init), math.log(n_voxel_final), len(steps) + 1).tolist()][1:]
        self.shrink_steps = {int(s) for s in shrink_steps}
        self.shrink_threshold, self.density_shift = shrink_threshold, density_shift
        self.l1_weight, self.l1_weight_rest = l1_weight, l1_weight_rest
        self.tv_density, self.tv_app = tv_density, tv_app
        self.stage, self.shrunk = 0, False
        self.register_buffer("aabb", torch.tensor([[-1.0] * 3, [1.0] * 3]))
        reso = n_to_reso(n_voxel_init, self.aabb)
        offset = 0.0  # TensoRF: random planes, so sigma_raw starts at ~density_shift
        if init_density is not None and math.log(init_density) > density_shift:
            offset = math.sqrt((math.log(init_density) - density_shift) / sum(density_comp))
        self.density_enc = VMEncoding(density_comp, reso, init_scale, offset)
        self.app_enc = VMEncoding(app_comp, reso, init_scale)
        self.n_sigma = self.density_enc.out_dim
        self.feature_dim = self.n_sigma + self.app_enc.out_dim
        self.basis_mat = nn.Linear(self.app_enc.out_dim, COLOR_FEATURE_DIM, bias=False)
        if self.shared:
            self.dir_encoding, self.color_net = color_head(sh_degree, color_hidden_dim,
                                                           color_layers)
        else:
            self.fea_encoding = FrequencyEncoding(COLOR_FEATURE_DIM, fea_pe)
            self.view_encoding = FrequencyEncoding(3, view_pe)
            self.render_mlp = mlp(self.fea_encoding.out_dim + self.view_encoding.out_dim,
                                  mlp_hidden, 3, 2)
            nn.init.zeros_(self.render_mlp[-1].bias)

    @property
    def resolution(self) -> list[int]:
        return self.density_enc.resolution

    # --- the two halves -------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * 2.0 - 1.0
        inside = (u.abs() <= 1.0 + 1e-6).all(dim=-1, keepdim=True)
        feat = torch.cat([self.density_enc(u), self.app_enc(u)], dim=-1)
        return feat * inside

    def density_raw(self, feat: Tensor) -> Tensor:
        return feat[:, :self.n_sigma].sum(dim=-1) + self.density_shift

    def volume_parts(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        return self.density_raw(feat), self.basis_mat(feat[:, self.n_sigma:])

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        sigma_raw, color_feat = self.volume_parts(feat)
        if self.shared:
            return FieldOutput(sigma_raw, color_feat,
                               shade(self.color_net, self.dir_encoding, color_feat, d))
        h = torch.cat([self.fea_encoding(color_feat), self.view_encoding(d)], dim=-1)
        return FieldOutput(sigma_raw, color_feat, torch.sigmoid(self.render_mlp(h)))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        head = self.color_net if self.shared else self.render_mlp
        return {
            "features": list(self.density_enc.parameters()) + list(self.app_enc.parameters()),
            "decoder": list(self.basis_mat.parameters()) + list(head.parameters()),
        }

    # --- training hooks ---------------------------------------------------------------------
    def regularizer(self, x: Tensor | None = None) -> Tensor | None:
        """L1 on the density components plus TV on the density / appearance planes."""
        l1_w = self.l1_weight_rest if self.shrunk else self.l1_weight
        loss = None
        for w, fn in ((l1_w, self.density_enc.l1), (self.tv_density, self.density_enc.tv),
                      (self.tv_app, self.app_enc.tv)):
            if w > 0:
                loss = w * fn() if loss is None else loss + w * fn()
        return loss

    def on_step(self, step: int, density_fn_grid=None, prev_step: int | None = None) -> bool:
        """Shrink when ``step`` reaches a ``shrink_steps`` entry, then upsample when it passes
        the next ``upsample_steps`` entry (to that stage's voxel count in the current box)."""
        changed = False
        prev = step - 1 if prev_step is None else prev_step
        if any(prev < s <= step for s in self.shrink_steps):
            changed |= self.shrink()
        stage = sum(step >= s for s in self.upsample_steps)
        if stage > self.stage:
            self.upsample(n_to_reso(self.n_voxel_list[stage - 1], self.aabb))
            self.stage = stage
            changed = True
        return changed

    @torch.no_grad()
    def upsample(self, resolution: list[int]) -> None:
        log.info("tensorf: upsampling %s -> %s", self.resolution, resolution)
        self.density_enc.resize(resolution)
        self.app_enc.resize(resolution)

    @torch.no_grad()
    def shrink(self, chunk: int = 1 << 18) -> bool:
        """Crop to the grid-aligned bounding box (+1 point margin) of density > threshold."""
        reso = self.resolution
        axes = [torch.linspace(-1.0, 1.0, r, device=self.aabb.device) for r in reso]
        u = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).view(-1, 3)
        dens = torch.cat([self.activate(self.density_enc(c).sum(-1) + self.density_shift)
                          for c in u.split(chunk)]).view(*reso)
        occ = torch.nonzero(dens > self.shrink_threshold)
        if occ.numel() == 0:
            log.warning("tensorf: no density above shrink_threshold; shrink skipped")
            return False
        top = torch.tensor(reso, device=occ.device) - 1
        lo = (occ.amin(0) - 1).clamp_min(0)
        hi = torch.maximum((occ.amax(0) + 1).clamp(max=top), lo + 1)
        lo = torch.minimum(lo, hi - 1)
        if bool((lo == 0).all() and (hi == top).all()):
            self.shrunk = True
            return False
        units = (self.aabb[1] - self.aabb[0]) / top
        new_aabb = torch.stack([self.aabb[0] + lo * units, self.aabb[0] + hi * units])
        log.info("tensorf: shrinking aabb %s -> %s", self.aabb.tolist(), new_aabb.tolist())
        self.density_enc.crop(lo.tolist(), hi.tolist())
        self.app_enc.crop(lo.tolist(), hi.tolist())
        self.aabb.copy_(new_aabb)
        self.shrunk = True
        return True

    def extra_state_for_checkpoint(self) -> dict:
        return {"resolution": self.resolution, "aabb": self.aabb.tolist(), "stage": self.stage,
                "shrunk": self.shrunk}

    def prepare_load(self, extra: dict) -> None:
        if not extra:
            return
        self.density_enc.reset_shape(extra["resolution"])
        self.app_enc.reset_shape(extra["resolution"])
        self.aabb.copy_(torch.tensor(extra["aabb"]))
        self.stage, self.shrunk = int(extra["stage"]), bool(extra["shrunk"])
