"""Size presets: every ``conf/arch/<name>.yaml`` carries ``paper:`` (paper-scale sizes, for GPUs)
and ``tiny:`` (test-sized) blocks of field overrides. ``preset=paper`` (set by
``experiment=paper``) or ``preset=tiny`` merges that block into the
arch's ``field`` for whichever architectures the run uses (arch, teacher, student), so one
switch scales every architecture without an ``if arch == ...`` anywhere. A block's ``_arch:``
entry is merged into the arch itself (its schedule or optimizer: TensoRF's paper recipe resets
the learning rate at each upsample).

``shared_decoder=true`` sets ``field.decoder=shared`` in every field that has the key (mlp,
tensorf; ngp's decoder is the shared design already): one decoder shape for all three, so
distillation can start a student's decoder as its teacher's (``distill.init_decoder``)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from pvdal.utils.errors import ConfigError

ROLES = ("arch", "teacher", "student")
log = logging.getLogger("pvdal")


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
                block = OmegaConf.to_container(arch[preset])
                outer = block.pop("_arch", None)  # arch-level keys (schedule, optimizer)
                arch.field = OmegaConf.merge(arch.field, block)
                if outer:
                    merged = OmegaConf.merge(arch, outer)
                    for key in outer:
                        arch[key] = merged[key]
            if shared and "decoder" in arch.field:
                arch.field.decoder = "shared"
    return cfg


NATIVE_ARCH = {"tensorf": "tensorf_native", "svox2": "svox2", "ingp": "ingp"}  # conf/arch/


def apply_native(cfg: DictConfig) -> DictConfig:
    """``student.native=tensorf|svox2|ingp``: the student becomes that tool's own field
    (conf/arch/<tensorf_native|svox2|ingp>.yaml: its activation, feature widths and frame), so
    ``export.py format=<native>`` writes it exactly. Student-only keys the user set (batch size,
    distillation steps) are kept. Same as ``student=<tensorf_native|svox2|ingp>``."""
    student = cfg.get("student")
    native = student.get("native") if student is not None else None
    if not native:
        return cfg
    if native not in NATIVE_ARCH:
        raise ConfigError("student.native", f"unknown native format {native!r}",
                          "use tensorf, svox2 or ingp (or null for pvdal's own field)")
    path = Path(__file__).resolve().parents[2] / "conf" / "arch" / f"{NATIVE_ARCH[native]}.yaml"
    arch = OmegaConf.load(path)
    keep = {k: student[k] for k in ("batch_size", "distill_steps") if k in student}
    with open_dict(cfg):
        cfg.student = OmegaConf.merge(arch, keep, {"native": native})
    log.info("student.native=%s: the student is %s's own field (%s)", native, native,
             arch.field._target_)
    return cfg
