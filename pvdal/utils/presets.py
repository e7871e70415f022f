"""Size presets: every ``conf/arch/<name>.yaml`` carries ``paper:`` (paper-scale sizes, for GPUs)
and ``tiny:`` (test-sized) blocks of field overrides. ``preset=paper`` (set by
``experiment=paper``) or ``preset=tiny`` merges that block into the
arch's ``field`` for whichever architectures the run uses (arch, teacher, student), so one
switch scales every architecture without an ``if arch == ...`` anywhere.

``shared_decoder=true`` sets ``field.decoder=shared`` in every field that has the key (mlp,
tensorf; ngp's decoder is the shared design already): one decoder shape for all three, so
distillation can start a student's decoder as its teacher's (``distill.init_decoder``)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from pvdal.utils.errors import ConfigError

ROLES = ("arch", "teacher", "student")


def apply_preset(cfg: DictConfig) -> DictConfig:
    preset = cfg.get("preset", "cpu") or "cpu"
    if preset not in ("cpu", "paper", "tiny"):
        raise ConfigError("preset", f"unknown preset {preset!r}",
                          "use preset=cpu (default), paper (GPU) or tiny (tests)")
    shared = bool(cfg.get("shared_decoder", False))
    if preset == "cpu" and not shared:
        return cfg
    with open_dict(cfg):
        for role in ROLES:
            arch = cfg.get(role)
            if arch is None or "field" not in arch:
                continue
            if preset != "cpu":
                if preset not in arch:
                    raise ConfigError(f"{role}.{preset}", f"{arch.name} has no {preset} preset",
                                      f"add a {preset}: block to conf/arch/{arch.name}.yaml")
                arch.field = OmegaConf.merge(arch.field, arch[preset])
            if shared and "decoder" in arch.field:
                arch.field.decoder = "shared"
    return cfg
