"""Volume rendering: alpha compositing of per-sample density and colour along rays.

Samples are **packed** (``ray_indices`` [M], sorted, with per-sample intervals), as nerfacc lays
them out: only the samples the marcher kept exist. The torch functions here are the reference on
every device; on CUDA tensors, once nerfacc's compiled kernels load (``use_nerfacc``), the weights
come from nerfacc's scan kernels instead. The dense ``[n_rays, n_samples]`` functions are kept as
the hand-checkable reference the packed ones are tested against. Compositing always runs in
float32 (under mixed precision too): transmittance is a product of many factors close to one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pvdal.encodings.backend import use_nerfacc

__all__ = ["composite", "composite_packed", "packed_render_weights", "packed_weights",
           "render_weights", "use_nerfacc"]


def render_weights(sigmas: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """sigmas, deltas: [n_rays, n_samples] -> weights, transmittance (both [n_rays, n_samples])."""
    tau = sigmas.float() * deltas.float()
    alpha = 1.0 - torch.exp(-tau)
    excl = torch.cumsum(tau, dim=-1) - tau  # exclusive optical depth
    trans = torch.exp(-excl)
    return alpha * trans, trans


def exclusive_segment_sum(values: Tensor, ray_indices: Tensor) -> Tensor:
    """Per-ray exclusive prefix sum of packed ``values`` [M] (``ray_indices`` [M] sorted).

    One global cumsum in float64 minus each ray's running total at its first sample, so the
    sums of many rays never swamp a ray's own (float32 would lose ~1e-7 x the batch total)."""
    if values.numel() == 0:
        return values
    v = values.double()
    incl = torch.cumsum(v, dim=0)
    first = torch.searchsorted(ray_indices, ray_indices)  # first sample of each sample's ray
    before = (incl - v)[first]
    return (incl - v - before).to(values.dtype)


def packed_weights(
    sigmas: Tensor,  # [M] density of the kept samples
    t_starts: Tensor,  # [M]
    t_ends: Tensor,  # [M]
    ray_indices: Tensor,  # [M] sorted ray index of each sample
    n_rays: int,
) -> tuple[Tensor, Tensor]:
    """Compositing weights and transmittance of packed samples, both [M] float32.

    nerfacc's kernels on CUDA when they load, else the torch reference (any device)."""
    if use_nerfacc(sigmas):
        import nerfacc

        w, trans, _ = nerfacc.render_weight_from_density(
            t_starts.float(), t_ends.float(), sigmas.float(), ray_indices=ray_indices,
            n_rays=n_rays)
        return w, trans
    tau = sigmas.float() * (t_ends - t_starts).float()
    trans = torch.exp(-exclusive_segment_sum(tau, ray_indices))
    return (1.0 - torch.exp(-tau)) * trans, trans


def packed_render_weights(
    sigmas: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, n_rays: int,
) -> Tensor:
    """Weights of packed samples [M] via nerfacc (CUDA only; the parity tests' fast side).
    nerfacc's scan kernels accept float32 only."""
    import nerfacc

    weights, _, _ = nerfacc.render_weight_from_density(
        t_starts.float(), t_ends.float(), sigmas.float(), ray_indices=ray_indices, n_rays=n_rays
    )
    return weights


def composite_packed(
    weights: Tensor,  # [M]
    rgbs: Tensor,  # [M, 3]
    t_mid: Tensor,  # [M]
    ray_indices: Tensor,  # [M]
    n_rays: int,
    background: Tensor,  # [3] or [n_rays, 3]
) -> dict[str, Tensor]:
    """Accumulate colour, opacity and expected depth per ray; blend the background behind."""
    w = weights.float()
    dev = w.device
    opacity = torch.zeros(n_rays, device=dev).index_add(0, ray_indices, w)
    rgb = torch.zeros(n_rays, 3, device=dev).index_add(0, ray_indices, w[:, None] * rgbs.float())
    depth = torch.zeros(n_rays, device=dev).index_add(0, ray_indices, w * t_mid.float())
    rgb = rgb + (1.0 - opacity[:, None]) * background.float()
    return {"rgb": rgb, "opacity": opacity, "depth": depth / opacity.clamp_min(1e-6)}


def composite(
    weights: Tensor,  # [n_rays, n_samples]
    rgbs: Tensor,  # [n_rays, n_samples, 3]
    t_mid: Tensor,  # [n_rays, n_samples]
    background: Tensor,  # [3] or [n_rays, 3]
) -> dict[str, Tensor]:
    """Dense reference of ``composite_packed``."""
    weights, rgbs = weights.float(), rgbs.float()
    opacity = weights.sum(dim=-1)
    rgb = (weights[..., None] * rgbs).sum(dim=-2) + (1.0 - opacity[..., None]) * background.float()
    depth = (weights * t_mid).sum(dim=-1) / opacity.clamp_min(1e-6)
    return {"rgb": rgb, "opacity": opacity, "depth": depth}
