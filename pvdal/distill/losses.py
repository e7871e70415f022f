"""Distillation losses between teacher and student quantities."""

from __future__ import annotations

import torch
from torch import Tensor

from pvdal.fields.base import clamp_raw

__all__ = ["LOSS_TYPES", "clamp_raw", "match_loss", "per_ray_error", "psnr_from_mse"]

LOSS_TYPES = ("mse", "l2", "norm_l2")


def match_loss(student: Tensor, teacher: Tensor, kind: str = "mse",
               mask: Tensor | None = None) -> Tensor:
    """``mse``: mean squared error; ``l2``: mean Euclidean distance per point ([M] or [M, C]);
    ``norm_l2``: the Euclidean norm of the whole difference tensor (the original code's
    ``normL2``: ``torch.norm(pred - gt)``; it grows with the batch, and its loss weights are
    tuned for that).

    ``mask`` ([M] bool) restricts the loss to some points (point-level active learning).
    """
    if mask is not None:
        student, teacher = student[mask], teacher[mask]
    if student.numel() == 0:
        return student.sum() * 0.0
    diff = student - teacher
    if kind == "mse":
        return diff.square().mean()
    if kind == "l2":
        return (diff.abs() if diff.dim() == 1 else diff.norm(dim=-1)).mean()
    if kind == "norm_l2":
        return torch.linalg.vector_norm(diff)
    raise ValueError(f"distill.loss_type must be one of {'|'.join(LOSS_TYPES)}, got {kind!r}")


def per_ray_error(rgb_s: Tensor, rgb_t: Tensor) -> Tensor:
    """|rgb_student - rgb_teacher| summed over channels: [n_rays]."""
    return (rgb_s - rgb_t).abs().sum(dim=-1)


def psnr_from_mse(mse: Tensor) -> Tensor:
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
