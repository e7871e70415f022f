"""Learning-rate schedules over the run's progress (steps or time budget, see clock.py).

``lr_schedule`` in an arch config (or ``distill.optim``):

- ``exp`` (default): ``lr * lr_decay ** progress``, down to ``lr * lr_decay`` at the end.
- ``cosine``: cosine annealing from ``lr`` to ``lr_min`` (an absolute learning rate, as
  ``torch.optim.lr_scheduler.CosineAnnealingLR``'s ``eta_min``, for every param group);
  ``lr_min: null`` ends at ``lr * lr_decay``. The paper's code anneals to 7e-5.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer

from pvdal.utils.errors import ConfigError

SCHEDULES = ("exp", "cosine")


def lr_factors(arch: dict, opt: Optimizer,
               progress: Callable[[], float]) -> list[Callable[[int], float]]:
    """One ``LambdaLR`` factor per param group of ``opt`` (read before the scheduler wraps it)."""
    kind = arch.get("lr_schedule") or "exp"
    decay = float(arch.get("lr_decay", 1.0))
    if kind == "exp":
        return [lambda _: decay ** progress() for _ in opt.param_groups]
    if kind != "cosine":
        raise ConfigError("lr_schedule", f"must be {' or '.join(SCHEDULES)}, got {kind!r}",
                          "exp: exponential decay to lr * lr_decay; cosine: to lr_min")
    lr_min = arch.get("lr_min")

    def cosine(floor: float) -> Callable[[int], float]:
        return lambda _: floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress()))

    out = []
    for g in opt.param_groups:
        base = float(g["lr"])
        floor = decay if lr_min is None else (float(lr_min) / base if base > 0 else 1.0)
        out.append(cosine(floor))
    return out
