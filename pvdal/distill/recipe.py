"""The distillation's choices that are not loss weights: what stage 1 aligns, the loss type, and
the student's optimiser settings when the recipe (``distill.optim``) replaces its arch's own.

``distill=paper`` (conf/distill/paper.yaml) sets ``optim`` to the paper's code: AdamW, a cosine
schedule and per-student learning rates; ``optim`` keys left null keep the student arch's.
"""

from __future__ import annotations

import copy

from pvdal.distill.decoder_init import init_choice
from pvdal.distill.losses import LOSS_TYPES
from pvdal.utils.errors import ConfigError

ALIGNS = ("volume", "features")


def check_options(distill: dict) -> None:
    """Reject unknown ``align``, ``loss_type`` and ``init_decoder`` values before any work."""
    align = distill.get("align", "features")
    if align not in ALIGNS:
        raise ConfigError("distill.align", f"must be volume or features, got {align!r}",
                          "volume: V(x) = [clamp(sigma_raw), colour feature]; features: the "
                          "explicit features through a learned projection")
    kind = distill.get("loss_type", "mse")
    if kind not in LOSS_TYPES:
        raise ConfigError("distill.loss_type", f"must be {'|'.join(LOSS_TYPES)}, got {kind!r}",
                          "norm_l2 is the paper's code (normL2)")
    init_choice(distill.get("init_decoder", "false"))


def student_optim(student_arch: dict, distill: dict) -> dict:
    """``student_arch`` with ``distill.optim``'s non-null keys in place of its own: optimizer,
    lr_schedule, lr_decay, lr_min, and ``lr`` (a table by student name, {features, decoder})."""
    optim = distill.get("optim") or {}
    arch = copy.deepcopy(student_arch)
    for key in ("optimizer", "lr_schedule", "lr_decay", "lr_min"):
        if optim.get(key) is not None:
            arch[key] = copy.deepcopy(optim[key])
    table = optim.get("lr")
    if table is not None:
        name = arch.get("name")
        if name not in table:
            raise ConfigError("distill.optim.lr", f"has no learning rates for a {name} student",
                              f"add distill.optim.lr.{name}.features/decoder")
        arch["lr"] = {**arch.get("lr", {}), **table[name]}
    return arch
