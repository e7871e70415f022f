"""Active learning for distillation at three decoupled levels (PVD-AL, arXiv 2304.04012).

``al.view`` trains on new camera poses focused on hard views (``view.ViewLevel``), ``al.ray``
replays hard rays (``ray.RayLevel``), ``al.point`` restricts the point losses to high-weight
samples (``point.PointLevel``). Each level is switched on by ``al.<level>.enabled``;
``build_levels`` validates ``cfg.al`` and returns the enabled levels and the callbacks to add.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from pvdal.al.point import PointLevel
from pvdal.al.ray import RayLevel
from pvdal.al.view import CameraBand, ViewLevel
from pvdal.utils.errors import ConfigError

__all__ = ["PointLevel", "RayLevel", "ViewLevel", "CameraBand", "build_levels", "check_al"]

FRACTION, COUNT, POSITIVE = (0.0, 1.0), "count", (1e-12, None)
# key -> (lo, hi) inclusive numeric range, or a tuple of allowed values for strings / bools
SPEC: dict[str, dict[str, Any]] = {
    "view": {"enabled": "bool", "mode": ("pool", "resample"), "include_real": "bool",
             "n_views": COUNT, "warmup_epochs": COUNT, "hard_fraction": FRACTION,
             "pool_size": COUNT, "pool_share": FRACTION, "perturb_angle": (0.0, 3.1416),
             "band_percentiles": "percentiles", "ff_box_expand": (0.0, None),
             "temperature": POSITIVE, "temperature_decay": (1e-12, 1.0),
             "temperature_min": POSITIVE},
    "ray": {"enabled": "bool", "hard_fraction": FRACTION, "pool_batches": COUNT,
            "add_fraction": FRACTION, "warmup_steps": COUNT},
    "point": {"enabled": "bool", "top_fraction": FRACTION, "min_opacity": FRACTION,
              "use_teacher": "bool", "use_student": "bool"},
}


def _check(key: str, val: Any, spec: Any) -> None:
    if spec == "bool":
        if not isinstance(val, bool):
            raise ConfigError(key, f"must be true or false, got {val!r}", f"pass {key}=true")
    elif spec == "percentiles":
        ok = (isinstance(val, list | tuple) and len(val) == 2
              and all(isinstance(v, int | float) and not isinstance(v, bool) for v in val)
              and 0 <= val[0] <= val[1] <= 100)
        if not ok:
            raise ConfigError(key, f"must be [lo, hi] with 0 <= lo <= hi <= 100, got {val!r}",
                              f"pass {key}=[5,95]")
    elif spec == "count":
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise ConfigError(key, f"must be an integer >= 0, got {val!r}", f"pass {key}=0")
    elif all(isinstance(v, str) for v in spec):
        if val not in spec:
            raise ConfigError(key, f"must be one of {', '.join(spec)}, got {val!r}",
                              f"pass {key}={spec[0]}")
    else:
        lo, hi = spec
        if isinstance(val, bool) or not isinstance(val, int | float):
            raise ConfigError(key, f"must be a number, got {val!r}", "fix the override")
        if val < lo or (hi is not None and val > hi):
            rng = f"[{lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(key, f"{val} is out of range {rng}", f"pass {key}=<value in {rng}>")


def check_al(al: Any) -> dict:
    """Validate ``cfg.al`` (every key of every level present and in range) -> plain dict."""
    al = OmegaConf.to_container(al, resolve=True) if OmegaConf.is_config(al) else dict(al or {})
    for level, keys in SPEC.items():
        sub = al.get(level)
        if not isinstance(sub, dict):
            raise ConfigError(f"al.{level}", "missing", "use a conf/al/*.yaml file (al=none)")
        for k, spec in keys.items():
            if k not in sub:
                raise ConfigError(f"al.{level}.{k}", "missing", "copy it from conf/al/none.yaml")
            _check(f"al.{level}.{k}", sub[k], spec)
        extra = set(sub) - set(keys)
        if extra:
            raise ConfigError(f"al.{level}", f"unknown keys {sorted(extra)}",
                              f"known: {', '.join(keys)}")
    v = al["view"]
    if v["enabled"] and not v["include_real"] and v["n_views"] == 0:
        raise ConfigError("al.view.n_views", "0 with include_real=false leaves no views",
                          "pass al.view.n_views=100")
    return al


def build_levels(al_cfg: Any, dm, teacher, cfg: DictConfig | None = None) -> tuple[dict, list]:
    """Enabled levels ({name: level}) and the Lightning callbacks among them.

    ``dm`` must be set up (the view level reads the real train poses and ``dm.data.meta``);
    ``teacher`` is unused (kept for the interface: levels could query it).
    """
    al = check_al(al_cfg)
    seed = int(cfg.get("seed", 0)) if cfg is not None else 0
    levels: dict = {}
    v, r, p = al["view"], al["ray"], al["point"]
    if v["enabled"]:
        data = dm.data
        band = CameraBand.from_frames(data.train.c2w, bool(data.meta.get("forward_facing")),
                                      tuple(v["band_percentiles"]), v["ff_box_expand"])
        levels["view"] = ViewLevel(
            band, data.train, v["mode"], v["include_real"], v["n_views"], v["warmup_epochs"],
            v["hard_fraction"], v["pool_size"], v["pool_share"], v["perturb_angle"],
            v["temperature"], v["temperature_decay"], v["temperature_min"], seed)
    if r["enabled"]:
        levels["ray"] = RayLevel(r["hard_fraction"], r["pool_batches"], r["add_fraction"],
                                 r["warmup_steps"], seed)
    if p["enabled"]:
        levels["point"] = PointLevel(p["top_fraction"], p["min_opacity"], p["use_teacher"],
                                     p["use_student"])
    callbacks = [lv for lv in levels.values() if isinstance(lv, pl.Callback)]
    return levels, callbacks
