"""Point-level active learning: restrict the point losses to the samples that matter.

In stage 3 a ray's colour is dominated by a few samples near its surface. For each ray whose
accumulated weight (opacity) is at least ``min_opacity`` we keep the samples whose compositing
weight ranks in the top ``top_fraction`` of that ray's evaluated samples; this is done for the
teacher's and the student's weights and the union is kept, so samples the student wrongly makes
opaque are corrected as well as those it misses. Transparent rays (background) keep no samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pvdal.render.march import Samples


def top_weight_mask(weights: Tensor, mask: Tensor, top_fraction: float,
                    min_opacity: float) -> Tensor:
    """Dense [n_rays, S] bool: top ``top_fraction`` of each ray's kept samples by weight.

    ``weights`` [n_rays, S], ``mask`` [n_rays, S] (evaluated samples). Rays with accumulated
    weight below ``min_opacity`` select nothing. A ray with ``n`` kept samples keeps
    ``ceil(top_fraction * n)`` of them (ties broken by position along the ray).
    """
    w = weights.detach().masked_fill(~mask, -math.inf)
    order = torch.argsort(w, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(w.shape[-1], device=w.device).expand_as(order))
    n_keep = torch.ceil(mask.sum(-1).to(w.dtype) * top_fraction - 1e-6).long()
    opaque = weights.detach().masked_fill(~mask, 0.0).sum(-1) >= min_opacity
    return (rank < n_keep[:, None]) & mask & opaque[:, None]


class PointLevel:
    """``select(t_weights, s_weights, samples)`` -> bool [M] over the packed samples."""

    def __init__(self, top_fraction: float = 0.3, min_opacity: float = 0.5,
                 use_teacher: bool = True, use_student: bool = True) -> None:
        self.top_fraction, self.min_opacity = float(top_fraction), float(min_opacity)
        self.use_teacher, self.use_student = bool(use_teacher), bool(use_student)

    def select(self, t_weights: Tensor, s_weights: Tensor | None, samples: Samples) -> Tensor:
        """Weights are packed [M] (or dense [n_rays, S], as the tests write them)."""
        dense = torch.zeros_like(samples.mask)
        for use, w in ((self.use_teacher, t_weights), (self.use_student, s_weights)):
            if use and w is not None:
                if w.dim() == 1:
                    w = samples.scatter(w)
                dense |= top_weight_mask(w, samples.mask, self.top_fraction, self.min_opacity)
        # packed order is the row-major order of the dense mask (see Samples.scatter)
        return dense[samples.mask]
