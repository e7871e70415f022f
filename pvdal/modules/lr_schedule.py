"""Learning-rate schedules over the run's progress (steps or time budget, see clock.py).

``lr_schedule`` in an arch config (or ``distill.optim``):

- ``exp`` (default): ``lr * lr_decay ** progress``, down to ``lr * lr_decay`` at the end.
- ``cosine``: cosine annealing from ``lr`` to ``lr_min`` (an absolute learning rate, as
  ``torch.optim.lr_scheduler.CosineAnnealingLR``'s ``eta_min``, for every param group);
  ``lr_min: null`` ends at ``lr * lr_decay``. The paper's code anneals to 7e-5.

``lr_upsample_reset: true`` (TensoRF's ``lr_upsample_reset``): when the field grows new
parameters (an upsample), the schedule restarts from the full learning rate and runs over the
rest of the run: ``exp`` gives ``lr * lr_decay ** (progress - progress_at_reset)``, as TensoRF's
new Adam at ``lr_init`` decaying by the same per-step factor; ``cosine`` anneals from ``lr`` to
its floor over the remaining progress. Off, the rebuilt optimizer continues the decayed rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer

from pvdal.utils.errors import ConfigError

SCHEDULES = ("exp", "cosine")


def lr_factors(arch: dict, opt: Optimizer, progress: Callable[[], float],
               start: Callable[[], float] = lambda: 0.0) -> list[Callable[[int], float]]:
    """One ``LambdaLR`` factor per param group of ``opt`` (read before the scheduler wraps it).
    ``start()`` is the progress where the schedule (re)started (``lr_upsample_reset``)."""
    kind = arch.get("lr_schedule") or "exp"
    decay = float(arch.get("lr_decay", 1.0))
    if kind == "exp":
        return [lambda _: decay ** max(progress() - start(), 0.0) for _ in opt.param_groups]
    if kind != "cosine":
        raise ConfigError("lr_schedule", f"must be {' or '.join(SCHEDULES)}, got {kind!r}",
                          "exp: exponential decay to lr * lr_decay; cosine: to lr_min")
    lr_min = arch.get("lr_min")

    def cosine(floor: float) -> Callable[[int], float]:
        def f(_: int) -> float:
            s = start()
            x = min(max((progress() - s) / max(1.0 - s, 1e-9), 0.0), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * x))
        return f

    out = []
    for g in opt.param_groups:
        base = float(g["lr"])
        floor = decay if lr_min is None else (float(lr_min) / base if base > 0 else 1.0)
        out.append(cosine(floor))
    return out
