"""Numerics that depend on the training precision."""

from __future__ import annotations

import torch


def safe_eps(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Raise each group's ``eps`` to the smallest normal number of its parameters' dtype.

    Adam's ``eps`` 1e-15 (instant-ngp's, for tiny hash-grid gradients) is 0 in float16, so with
    ``trainer.precision=16-true`` a parameter whose second moment is still 0 would divide by 0.
    Mixed precision keeps float32 parameters, where nothing changes."""
    for group in optimizer.param_groups:
        if "eps" not in group or not group["params"]:
            continue
        tiny = max(torch.finfo(p.dtype).tiny for p in group["params"] if p.is_floating_point())
        group["eps"] = max(float(group["eps"]), tiny)
    return optimizer
