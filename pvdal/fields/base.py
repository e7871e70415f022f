"""The ``RadianceField`` interface: an explicit feature part and an implicit decoder.

Every architecture implements ``features(x)`` (grid / plane / hash lookups, or the MLP trunk) and
``decode(feat, d)`` (the small heads). Distillation aligns the two halves separately, so the split
is part of the contract, not an implementation detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pvdal.fields.activation import activate_density

COLOR_FEATURE_DIM = 15
VOLUME_DIM = 1 + COLOR_FEATURE_DIM  # PVD's aligned volume V(x) = [clamp(sigma_raw), colour feature]


def clamp_raw(sigma_raw: Tensor, clamp: tuple[float, float] | None) -> Tensor:
    """PVD's density range constraint on pre-activation density (identity when off)."""
    return sigma_raw if clamp is None else sigma_raw.clamp(clamp[0], clamp[1])


def volume_from(sigma_raw: Tensor, color_feat: Tensor,
                clamp: tuple[float, float] | None = None) -> Tensor:
    """[M] pre-activation density and [M, 15] colour feature -> V(x) [M, 16]."""
    return torch.cat([clamp_raw(sigma_raw, clamp)[:, None], color_feat], dim=-1)


@dataclass
class FieldOutput:
    sigma_raw: Tensor  # [M] pre-activation density
    color_feat: Tensor | None  # [M, 15] colour feature (None for plenoxels)
    rgb: Tensor  # [M, 3] in [0, 1]


class RadianceField(nn.Module):
    """Base class. Positions ``x`` are normalised to [-1, 1]^3; directions ``d`` are unit."""

    #: width of ``features(x)``; distillation projects between fields of different widths
    feature_dim: int = 0
    #: False for fields whose decoder has no intermediate colour feature (plenoxels)
    has_color_feature: bool = True
    #: width of the colour feature (native imports differ: TensoRF's is 27)
    color_feature_dim: int = COLOR_FEATURE_DIM

    def __init__(self, density_clamp: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.density_clamp = tuple(density_clamp) if density_clamp is not None else None

    # --- the two halves -------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """x: [M, 3] in [-1, 1] -> explicit features [M, feature_dim]."""
        raise NotImplementedError

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        """feat: [M, feature_dim], d: [M, 3] -> pre-activation density, colour feature, rgb."""
        raise NotImplementedError

    def density_raw(self, feat: Tensor) -> Tensor:
        """Pre-activation density alone (no colour work); override where cheaper."""
        d = torch.zeros(feat.shape[0], 3, device=feat.device, dtype=feat.dtype)
        d[:, 2] = 1.0
        return self.decode(feat, d).sigma_raw

    def volume_parts(self, feat: Tensor) -> tuple[Tensor, Tensor | None]:
        """(sigma_raw [M], colour feature [M, 15] or None) without the view-dependent colour
        work; override where cheaper (the default decodes with a dummy direction)."""
        d = torch.zeros(feat.shape[0], 3, device=feat.device, dtype=feat.dtype)
        d[:, 2] = 1.0
        out = self.decode(feat, d)
        return out.sigma_raw, out.color_feat

    def volume(self, feat: Tensor, clamp: tuple[float, float] | None = None) -> Tensor:
        """PVD's aligned volume ``V(x) = [clamp(sigma_raw), colour feature]`` [M, 16]: the same
        width for every architecture, so distillation aligns it with no projection. ``clamp``
        is the density range constraint (default: this field's). Not defined for fields
        without a colour feature (plenoxels)."""
        if not self.has_color_feature:
            raise NotImplementedError(f"{type(self).__name__} has no colour feature: no V(x)")
        sigma_raw, color_feat = self.volume_parts(feat)
        return volume_from(sigma_raw, color_feat, self.density_clamp if clamp is None else clamp)

    # --- conveniences built on the halves ---------------------------------------------------
    def forward(self, x: Tensor, d: Tensor) -> FieldOutput:
        return self.decode(self.features(x), d)

    def activate(self, sigma_raw: Tensor) -> Tensor:
        return activate_density(sigma_raw, self.density_clamp)

    def density(self, x: Tensor) -> Tensor:
        """Activated density at x: [M, 3] -> [M]; used by occupancy-grid updates."""
        return self.activate(self.density_raw(self.features(x)))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters split into ``features`` and ``decoder`` (each gets its own learning rate)."""
        raise NotImplementedError

    # --- optional training hooks ------------------------------------------------------------
    def regularizer(self, x: Tensor | None = None) -> Tensor | None:
        """Architecture-specific regulariser (TV, L1), already weighted; None when there is none."""
        return None

    def on_step(self, step: int, grid=None, prev_step: int | None = None) -> bool:
        """Called before each training step with the schedule step (the global step unless a
        time budget paces the run, see modules/clock.py; it may jump by more than one), the
        occupancy grid and the previous schedule step (default ``step - 1``): an event at s
        fires once, when ``prev_step < s <= step``. Returns True when parameters were replaced
        (upsampling, pruning), so the optimizer must be rebuilt."""
        return False

    def extra_state_for_checkpoint(self) -> dict:
        """Shape-defining state (current resolution, sparse layout) needed to rebuild the field."""
        return {}

    def prepare_load(self, extra: dict) -> None:
        """Resize buffers/parameters to ``extra`` (from ``extra_state_for_checkpoint``) before
        ``load_state_dict``, so a checkpoint taken after upsampling/pruning loads strictly."""
