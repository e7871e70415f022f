"""Distillation losses between teacher and student quantities."""

from __future__ import annotations

import torch
from torch import Tensor


def match_loss(student: Tensor, teacher: Tensor, kind: str = "mse",
               mask: Tensor | None = None) -> Tensor:
    """``mse``: mean squared error; ``l2``: mean Euclidean distance per point ([M] or [M, C]).

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
    raise ValueError(f"distill.loss_type must be mse or l2, got {kind!r}")


def clamp_raw(sigma_raw: Tensor, clamp: tuple[float, float] | None) -> Tensor:
    """PVD's density range constraint on pre-activation density (identity when off)."""
    return sigma_raw if clamp is None else sigma_raw.clamp(clamp[0], clamp[1])


def per_ray_error(rgb_s: Tensor, rgb_t: Tensor) -> Tensor:
    """|rgb_student - rgb_teacher| summed over channels: [n_rays]."""
    return (rgb_s - rgb_t).abs().sum(dim=-1)


def psnr_from_mse(mse: Tensor) -> Tensor:
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
