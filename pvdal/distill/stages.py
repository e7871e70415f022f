"""The progressive schedule: which losses are active at a step.

stage 1 (features): feature loss only, aligning the explicit parts
stage 2 (points):   + pre-activation density and colour-feature losses at the sample points
stage 3 (render):   + rendered-RGB loss against the teacher's render
Boundaries are fractions of the run (floats <= 1.0, e.g. 0.05) or absolute steps (integers).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvdal.utils.errors import ConfigError


@dataclass(frozen=True)
class StageSchedule:
    feat_end: int  # first step of stage 2
    point_end: int  # first step of stage 3
    skip_features: bool = False  # plenoxels on either side: no intermediate feature

    @classmethod
    def from_config(cls, feat_end: float, point_end: float, total_steps: int,
                    skip_features: bool = False) -> StageSchedule:
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
        return cls(a, b, skip_features)

    def stage(self, step: int) -> int:
        if step < self.feat_end:
            return 1
        return 2 if step < self.point_end else 3
