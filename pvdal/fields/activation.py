"""The one density activation shared by every field: ``trunc_exp`` of a (clamped) pre-activation.

Keeping it in one place is what lets distillation compare pre-activation densities across
architectures: every field's ``sigma_raw`` means the same thing. It always runs in float32: under
mixed precision a half ``exp`` overflows for pre-activations above ~11 (forward and backward).
"""

from __future__ import annotations

import torch
from torch import Tensor

_GRAD_CLAMP = 15.0


class _TruncExp(torch.autograd.Function):
    """exp(x) with the backward's exp clamped at ``exp(15)`` so a spike cannot blow up Adam."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g.float() * torch.exp(x.clamp(max=_GRAD_CLAMP))


def trunc_exp(x: Tensor) -> Tensor:
    """float32 in, float32 out, whatever autocast would do: the cast sits outside the Function,
    so the gradient reaches a half input through the cast's own backward."""
    with torch.autocast(x.device.type, enabled=False):
        return _TruncExp.apply(x.float())


def activate_density(sigma_raw: Tensor, clamp: tuple[float, float] | None = None) -> Tensor:
    """Pre-activation -> density. ``clamp`` is PVD's density range constraint (e.g. (-2, 7))."""
    if clamp is not None:
        sigma_raw = sigma_raw.clamp(clamp[0], clamp[1])
    return trunc_exp(sigma_raw.clamp(max=_GRAD_CLAMP * 2))
