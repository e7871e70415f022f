"""Size presets: every ``conf/arch/<name>.yaml`` carries a ``paper:`` block of field overrides
(paper-scale sizes, for GPUs). ``preset=paper`` (set by ``experiment=paper``) merges it into the
arch's ``field`` for whichever architectures the run uses (arch, teacher, student), so one
switch scales every architecture without an ``if arch == ...`` anywhere."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from pvdal.utils.errors import ConfigError

ROLES = ("arch", "teacher", "student")


def apply_preset(cfg: DictConfig) -> DictConfig:
    preset = cfg.get("preset", "cpu") or "cpu"
    if preset not in ("cpu", "paper"):
        raise ConfigError("preset", f"unknown preset {preset!r}", "use preset=cpu or paper")
    if preset == "cpu":
        return cfg
    with open_dict(cfg):
        for role in ROLES:
            arch = cfg.get(role)
            if arch is None or "field" not in arch:
                continue
            if "paper" not in arch:
                raise ConfigError(f"{role}.paper", f"{arch.name} has no paper preset",
                                  f"add a paper: block to conf/arch/{arch.name}.yaml")
            arch.field = OmegaConf.merge(arch.field, arch.paper)
    return cfg
