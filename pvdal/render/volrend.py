"""Volume rendering: alpha compositing of per-sample density and colour along rays.

Dense layout ``[n_rays, n_samples]`` with skipped samples at density 0 is the torch reference;
on CUDA tensors, once nerfacc's compiled kernels load (``encodings.backend.use_nerfacc``), the
weights of packed samples come from nerfacc's kernels. Compositing always runs in float32 (under
mixed precision too): transmittance is a product of many factors close to one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pvdal.encodings.backend import use_nerfacc

__all__ = ["composite", "packed_render_weights", "render_weights", "use_nerfacc"]


def render_weights(sigmas: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """sigmas, deltas: [n_rays, n_samples] -> weights, transmittance (both [n_rays, n_samples])."""
    tau = sigmas.float() * deltas.float()
    alpha = 1.0 - torch.exp(-tau)
    excl = torch.cumsum(tau, dim=-1) - tau  # exclusive optical depth
    trans = torch.exp(-excl)
    return alpha * trans, trans


def packed_render_weights(
    sigmas: Tensor,  # [M] density of the kept samples
    t_starts: Tensor,  # [M]
    t_ends: Tensor,  # [M]
    ray_indices: Tensor,  # [M] sorted ray index of each sample
    n_rays: int,
) -> Tensor:
    """Weights of packed samples [M] via nerfacc (CUDA only; torch path: ``render_weights``).
    nerfacc's scan kernels accept float32 only."""
    import nerfacc

    weights, _, _ = nerfacc.render_weight_from_density(
        t_starts.float(), t_ends.float(), sigmas.float(), ray_indices=ray_indices, n_rays=n_rays
    )
    return weights


def composite(
    weights: Tensor,  # [n_rays, n_samples]
    rgbs: Tensor,  # [n_rays, n_samples, 3]
    t_mid: Tensor,  # [n_rays, n_samples]
    background: Tensor,  # [3] or [n_rays, 3]
) -> dict[str, Tensor]:
    """Accumulate colour, opacity and expected depth; blend the background behind."""
    weights, rgbs = weights.float(), rgbs.float()
    opacity = weights.sum(dim=-1)
    rgb = (weights[..., None] * rgbs).sum(dim=-2) + (1.0 - opacity[..., None]) * background.float()
    depth = (weights * t_mid).sum(dim=-1) / opacity.clamp_min(1e-6)
    return {"rgb": rgb, "opacity": opacity, "depth": depth}
