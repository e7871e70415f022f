"""The run's position in its schedule, by steps or by time budget.

Every schedule of a run (learning-rate decay, distillation stages, upsampling and pruning, AL
warm-ups) reads one number, the progress ``p`` in [0, 1]:

    p = max(step / max_steps, elapsed_s / budget_s)      (budget_s = trainer.max_time)

With ``max_steps`` alone ``p = step / max_steps``, the step-laid schedule as it always was. With a
budget the run ends when ``p`` reaches 1, whichever limit comes first, so a run on a slow or busy
machine still visits every stage and reaches its final learning rate inside its budget, instead
of being cut in the middle of its schedule. The schedule step ``round(p * max_steps)`` is what
step-configured events (``upsample_steps``, ``feat_end``, ...) compare against.

The state (progress, elapsed time, last schedule step handed to the field's hooks, steps done)
is a persistent buffer, so it is in every checkpoint and a resumed run continues exactly; between
saves it lives in plain floats, so reading it each step never waits for a device.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import torch
from torch import nn

from pvdal.utils.errors import ConfigError

now: Callable[[], float] = time.perf_counter  # module-level, so tests can make time exact


def budget_seconds(max_time, key: str = "trainer.max_time") -> float | None:
    """``trainer.max_time`` (Lightning's ``"DD:HH:MM:SS"``, a dict of timedelta fields, or
    seconds) -> seconds; None when unset."""
    if max_time is None or max_time == "":
        return None
    try:
        if isinstance(max_time, int | float) and not isinstance(max_time, bool):
            sec = float(max_time)
        elif isinstance(max_time, str):
            d, h, m, s = (int(v) for v in max_time.split(":"))
            sec = dt.timedelta(days=d, hours=h, minutes=m, seconds=s).total_seconds()
        else:
            sec = dt.timedelta(**dict(max_time)).total_seconds()
    except (TypeError, ValueError) as e:
        raise ConfigError(key, f"cannot read {max_time!r} as a duration",
                          f'pass "DD:HH:MM:SS", e.g. {key}="00:00:09:00"') from e
    if sec <= 0:
        raise ConfigError(key, f"must be positive, got {max_time!r}",
                          f"pass {key}=null for no time budget")
    return sec


def _mirror_after_load(module: ScheduleClock, _keys) -> None:
    module._s = module.state.tolist()  # module-level (not a lambda): pickles for ddp_spawn


class ScheduleClock(nn.Module):
    """Progress of the run; ``tick`` after every optimizer step, ``step`` for schedules."""

    def __init__(self, max_steps: int, budget_s: float | None = None) -> None:
        super().__init__()
        self.max_steps = max(1, int(max_steps))
        self.budget_s = budget_s
        # [progress, elapsed_s, last schedule step given to the field's hooks + 1, steps done]
        self.register_buffer("state", torch.zeros(4, dtype=torch.float64))
        self._s = [0.0] * 4  # what is read and written each step: plain floats, no tensor
        self._t0: float | None = None
        self._base = 0.0
        self.register_load_state_dict_post_hook(_mirror_after_load)

    def _apply(self, fn, recurse=True):
        """``state`` stays a float64 CPU tensor wherever the module is moved or cast (DDP is
        told to leave it alone, see ``RadianceModule``)."""
        state = self._buffers["state"]
        out = super()._apply(fn, recurse)
        self._buffers["state"] = state
        return out

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._buffers["state"].copy_(torch.tensor(self._s, dtype=torch.float64))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def set_state(self, progress: float | None = None, elapsed: float | None = None) -> None:
        """Set the progress / elapsed seconds (tests, and resuming from older checkpoints)."""
        if progress is not None:
            self._s[0] = float(progress)
        if elapsed is not None:
            self._s[1] = float(elapsed)

    @property
    def progress(self) -> float:
        return self._s[0]

    @property
    def elapsed(self) -> float:
        return self._s[1]

    @property
    def step(self) -> int:
        """The schedule step: the global step with max_steps alone, else scaled to the budget."""
        return int(round(self.progress * self.max_steps))

    @property
    def complete(self) -> bool:
        return self.progress >= 1.0

    def start(self) -> None:
        """Training (re)starts: time counts on from what the checkpoint recorded."""
        self._base, self._t0 = self.elapsed, now()

    def tick(self, global_step: int, sync: Callable[[float], float] | None = None) -> bool:
        """After an optimizer step: update the progress; True once the schedule is complete.
        ``sync`` makes every process use rank 0's clock (DDP stops on the same step)."""
        elapsed = self.elapsed if self._t0 is None else self._base + now() - self._t0
        if sync is not None and self.budget_s is not None:
            elapsed = float(sync(elapsed))
        p = global_step / self.max_steps
        if self.budget_s is not None:
            p = max(p, elapsed / self.budget_s)
        self._s[0], self._s[1], self._s[3] = min(p, 1.0), elapsed, float(global_step)
        return self.complete

    def hook_steps(self) -> tuple[int, int]:
        """(previous, current) schedule step for the field's event hooks (an event at step s
        fires once when ``previous < s <= current``); -1 before the first step."""
        prev, cur = int(self._s[2]) - 1, self.step
        self._s[2] = float(cur + 1)
        return prev, cur

    def by_budget(self) -> bool:
        """Whether the budget, not max_steps, set the pace of the schedule."""
        return self.budget_s is not None and self.elapsed / self.budget_s >= self.progress - 1e-9

    def summary(self, steps: int) -> dict:
        """The keys metrics.json gains: steps done, max_steps, budget_s, schedule_complete.
        The clock's own step count stands in where ``steps`` is lost (a ddp_spawn test process
        starts at global step 0; the buffer comes back with the weights)."""
        return {"steps": max(int(steps), int(self._s[3])), "max_steps": self.max_steps,
                "budget_s": self.budget_s, "schedule_complete": self.complete}

    def end_message(self, steps: int) -> str | None:
        """One line for a run whose schedule followed its budget (None otherwise)."""
        if not self.by_budget() or self.progress <= 0:
            return None
        done = "complete" if self.complete else f"stopped at {100 * self.progress:.0f}%"
        return (f"schedule: paced by the {self.budget_s:.0f} s budget (trainer.max_time), "
                f"{done}: {steps} steps done of max_steps {self.max_steps}; learning-rate "
                f"decay, stages, upsampling and AL warm-ups were scaled to "
                f"{100 * steps / self.max_steps:.0f}% of the steps")
