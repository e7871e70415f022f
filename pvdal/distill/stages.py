"""The progressive schedule: which losses are active at a step.

stage 1 (features): feature loss only, aligning the explicit parts
stage 2 (points):   + pre-activation density and colour-feature losses at the sample points
stage 3 (render):   + rendered-RGB loss against the teacher's render
Boundaries are fractions of the run (floats <= 1.0, e.g. 0.05) or absolute steps (integers).
``rgb_ramp`` (same units) eases the rendered-RGB loss in: its weight rises linearly from 0 at
the start of stage 3. Switched on at full weight, a loss 500x the point losses' gives Adam some
tens of steps at about twice its usual step size in one direction (its second moment lags the
first), which knocked the student's PSNR down by up to 10 dB for a while.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvdal.utils.errors import ConfigError


@dataclass(frozen=True)
class StageSchedule:
    feat_end: int  # first step of stage 2
    point_end: int  # first step of stage 3
    skip_features: bool = False  # plenoxels on either side: no intermediate feature
    rgb_ramp: int = 0  # steps over which stage 3's rendered-RGB weight rises from 0 to 1

    @classmethod
    def from_config(cls, feat_end: float, point_end: float, total_steps: int,
                    skip_features: bool = False, rgb_ramp: float = 0) -> StageSchedule:
        def steps(v: float, key: str) -> int:
            if v < 0:
                raise ConfigError(f"distill.stages.{key}", f"must be >= 0, got {v}",
                                  "a fraction of the run (<= 1) or a step count")
            return int(round(v * total_steps)) if isinstance(v, float) and v <= 1 else int(v)

        a, b = steps(feat_end, "feat_end"), steps(point_end, "point_end")
        if b < a:
            raise ConfigError("distill.stages.point_end", f"({point_end}) comes before "
                              f"feat_end ({feat_end})", "stages run features -> points -> render")
        if skip_features:
            a = 0
        return cls(a, b, skip_features, steps(rgb_ramp, "rgb_ramp"))

    def stage(self, step: int) -> int:
        if step < self.feat_end:
            return 1
        return 2 if step < self.point_end else 3

    def rgb_scale(self, step: int) -> float:
        """The rendered-RGB loss weight's factor at ``step`` (stage 3): 1 after the ramp."""
        if self.rgb_ramp <= 0:
            return 1.0
        return min(1.0, max(step - self.point_end + 1, 0) / self.rgb_ramp)
