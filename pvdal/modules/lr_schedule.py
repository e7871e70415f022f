"""Learning-rate schedules over the run's progress (steps or time budget, see clock.py).

``lr_schedule`` in an arch config (or ``distill.optim``):

- ``exp`` (default): ``lr * lr_decay ** progress``, down to ``lr * lr_decay`` at the end.
  ``lr_decay`` may be a table by param group (``{density: 1.7e-3, sh: 5e-4}``: svox2's per-table
  ``lr_*_final / lr_*``).
- ``cosine``: cosine annealing from ``lr`` to ``lr_min`` (an absolute learning rate, as
  ``torch.optim.lr_scheduler.CosineAnnealingLR``'s ``eta_min``, for every param group);
  ``lr_min: null`` ends at ``lr * lr_decay``. The paper's code anneals to 7e-5.
- ``multistep``: ``lr * lr_gamma ** k`` after the k-th of ``lr_milestones`` (fractions of the
  run; nerfacc's Instant-NGP example: ``[0.5, 0.75, 0.9]``, gamma 0.33).

Applied on top of any of them:

- ``lr_warmup`` (a fraction of the run, 0 off): linear warm-up from ``lr_warmup_start * lr``
  (nerfacc: ``LinearLR(start_factor=0.01, total_iters=100)`` of 20000 steps = 0.005).
- ``lr_delay`` (``[fraction, mult]``, or a table of them by param group): svox2's
  reverse-cosine delay,
  ``mult + (1 - mult) * sin(pi/2 * min(progress / fraction, 1))`` (``lr_sigma_delay_steps``
  15000 of 128000 with ``lr_sigma_delay_mult`` 1e-2 on the density).

``lr_upsample_reset: true`` (TensoRF's ``lr_upsample_reset``): when the field grows new
parameters (an upsample), the schedule restarts from the full learning rate and runs over the
rest of the run: ``exp`` gives ``lr * lr_decay ** (progress - progress_at_reset)``, as TensoRF's
new Adam at ``lr_init`` decaying by the same per-step factor; ``cosine`` anneals from ``lr`` to
its floor over the remaining progress. Off, the rebuilt optimizer continues the decayed rate.
Warm-up and delay follow the run's progress, not the restarts.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from torch.optim import Optimizer

from pvdal.utils.errors import ConfigError

SCHEDULES = ("exp", "cosine", "multistep")
Factor = Callable[[int], float]


def _per_group(arch: dict, key: str, group: str, default):
    """``arch[key]``, or its entry for ``group`` when it is a table (missing: ``default``)."""
    value = arch.get(key)
    if value is None:
        return default
    if hasattr(value, "keys"):
        return value.get(group, default)
    return value


def _decay(arch: dict, group: str, base_lr: float) -> float:
    """``lr_decay`` for ``group``. A per-group table must name every group that trains
    (lr > 0): a forgotten group would otherwise keep its full rate to the end, silently."""
    table = arch.get("lr_decay")
    if hasattr(table, "keys") and group not in table and base_lr > 0:
        raise ConfigError(f"arch.lr_decay.{group}", f"the per-group table names "
                          f"{sorted(table.keys())} but not the trained group {group!r}",
                          f"add {group}: <final lr / lr> (1.0: no decay)")
    return float(_per_group(arch, "lr_decay", group, 1.0))


def _base(arch: dict, group: str, base_lr: float, progress: Callable[[], float],
          start: Callable[[], float]) -> Factor:
    kind = arch.get("lr_schedule") or "exp"
    if kind == "exp":
        decay = _decay(arch, group, base_lr)
        return lambda _: decay ** max(progress() - start(), 0.0)
    if kind == "multistep":
        miles = sorted(float(m) for m in arch.get("lr_milestones") or [])
        gamma = float(arch.get("lr_gamma", 0.33))
        return lambda _: gamma ** bisect.bisect_right(miles, progress())
    if kind != "cosine":
        raise ConfigError("lr_schedule", f"must be {' or '.join(SCHEDULES)}, got {kind!r}",
                          "exp: exponential decay to lr * lr_decay; cosine: to lr_min; "
                          "multistep: x lr_gamma at each of lr_milestones")
    lr_min = arch.get("lr_min")
    decay = _decay(arch, group, base_lr)
    floor = decay if lr_min is None else (float(lr_min) / base_lr if base_lr > 0 else 1.0)

    def cosine(_: int) -> float:
        s = start()
        x = min(max((progress() - s) / max(1.0 - s, 1e-9), 0.0), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * x))
    return cosine


def _ramps(arch: dict, group: str, progress: Callable[[], float]) -> Factor | None:
    """Warm-up and delay factors (None when neither applies to ``group``)."""
    warm = float(arch.get("lr_warmup") or 0.0)
    warm_start = float(arch.get("lr_warmup_start", 0.01))
    delay = _per_group(arch, "lr_delay", group, None)
    if warm <= 0 and delay is None:
        return None
    d_frac, d_mult = (float(delay[0]), float(delay[1])) if delay is not None else (0.0, 1.0)

    def ramp(_: int) -> float:
        p = progress()
        f = 1.0
        if warm > 0:
            f *= warm_start + (1.0 - warm_start) * min(p / warm, 1.0)
        if d_frac > 0:
            f *= d_mult + (1.0 - d_mult) * math.sin(0.5 * math.pi * min(p / d_frac, 1.0))
        return f
    return ramp


def lr_factors(arch: dict, opt: Optimizer, progress: Callable[[], float],
               start: Callable[[], float] = lambda: 0.0) -> list[Factor]:
    """One ``LambdaLR`` factor per param group of ``opt`` (read before the scheduler wraps it).
    ``start()`` is the progress where the schedule (re)started (``lr_upsample_reset``); a
    group's name (``g["name"]``) selects its entries of per-group tables."""
    out = []
    for g in opt.param_groups:
        name = str(g.get("name", ""))
        base = _base(arch, name, float(g["lr"]), progress, start)
        ramp = _ramps(arch, name, progress)
        out.append(base if ramp is None else (lambda s, b=base, r=ramp: b(s) * r(s)))
    return out
