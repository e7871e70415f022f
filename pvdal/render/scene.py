"""The normalised scene every dataset is mapped into.

Bounded scenes live in the box [-1, 1]^3. Unbounded captures use the inf-norm scene
contraction (Mip-NeRF 360 / nerfacc style): the inner box [-1, 1]^3 is kept, everything outside
is squeezed into [-2, 2]^3, then halved, so fields and the occupancy grid always see [-1, 1]^3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

UNIT_AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class SceneSpec:
    contraction: bool = False  # unbounded scene: contract outside the unit box
    near: float = 0.0  # minimum ray distance
    far: float = 1e3  # maximum ray distance (unbounded scenes)

    def to_field(self, x: Tensor) -> Tensor:
        """World (normalised scene) positions [..., 3] -> field coordinates in [-1, 1]^3."""
        if not self.contraction:
            return x
        mag = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6)
        out = torch.where(mag <= 1.0, x, (2.0 - 1.0 / mag) * x / mag)
        return out * 0.5

    def as_dict(self) -> dict:
        return {"contraction": self.contraction, "near": self.near, "far": self.far}


def unit_aabb(device=None) -> Tensor:
    return torch.tensor(UNIT_AABB, device=device)
