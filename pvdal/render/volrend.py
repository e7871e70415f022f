"""Volume rendering: alpha compositing of per-sample density and colour along rays.

Dense layout ``[n_rays, n_samples]`` with skipped samples at density 0 is the torch reference;
on CUDA with nerfacc importable, the weights of packed samples come from nerfacc's kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pvdal.encodings.backend import announce, module_available


def render_weights(sigmas: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """sigmas, deltas: [n_rays, n_samples] -> weights, transmittance (both [n_rays, n_samples])."""
    tau = sigmas * deltas
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
    """Weights of packed samples [M] via nerfacc (CUDA only; torch path: ``render_weights``)."""
    import nerfacc

    weights, _, _ = nerfacc.render_weight_from_density(
        t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n_rays
    )
    return weights


def use_nerfacc(t: Tensor) -> bool:
    ok = t.is_cuda and module_available("nerfacc")
    announce("volume rendering", "nerfacc" if ok else "torch")
    return ok


def composite(
    weights: Tensor,  # [n_rays, n_samples]
    rgbs: Tensor,  # [n_rays, n_samples, 3]
    t_mid: Tensor,  # [n_rays, n_samples]
    background: Tensor,  # [3] or [n_rays, 3]
) -> dict[str, Tensor]:
    """Accumulate colour, opacity and expected depth; blend the background behind."""
    opacity = weights.sum(dim=-1)
    rgb = (weights[..., None] * rgbs).sum(dim=-2) + (1.0 - opacity[..., None]) * background
    depth = (weights * t_mid).sum(dim=-1) / opacity.clamp_min(1e-6)
    return {"rgb": rgb, "opacity": opacity, "depth": depth}
