"""Decoder transfer (``distill.init_decoder``) and freezing (``distill.freeze_decoder``).

The paper's code loads the teacher's checkpoint into the student non-strictly: every decoder
tensor the two share by name starts as the teacher's (an MLP student of a hash teacher gets its
density and colour heads; a VM student its colour MLP). Here the decoder is what
``RadianceField.param_groups()["decoder"]`` holds, compared by state-dict name and shape; the
explicit part is never copied, not even between two fields of one architecture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from pvdal.fields.base import RadianceField
from pvdal.utils.errors import ConfigError

log = logging.getLogger("pvdal")

INIT_CHOICES = ("auto", "true", "false")


def decoder_params(f: RadianceField) -> dict[str, nn.Parameter]:
    """The decoder's parameters by state-dict name (``param_groups()["decoder"]``)."""
    ids = {id(p) for p in f.param_groups().get("decoder", [])}
    return {n: p for n, p in f.named_parameters() if id(p) in ids}


@dataclass
class DecoderMatch:
    """How a student's decoder lines up with its teacher's."""

    copied: list[str] = field(default_factory=list)  # same name, same shape
    conflicts: list[str] = field(default_factory=list)  # same name, other shape
    student_only: list[str] = field(default_factory=list)

    @property
    def transferable(self) -> bool:
        return bool(self.copied) and not self.conflicts


def match_decoders(teacher: RadianceField, student: RadianceField) -> DecoderMatch:
    t, s = decoder_params(teacher), decoder_params(student)
    m = DecoderMatch()
    for name, p in s.items():
        if name not in t:
            m.student_only.append(name)
        elif t[name].shape == p.shape:
            m.copied.append(name)
        else:
            m.conflicts.append(f"{name} {tuple(p.shape)} vs the teacher's {tuple(t[name].shape)}")
    return m


def _modules(names: list[str]) -> str:
    """'density_net.0.weight', 'density_net.0.bias' -> 'density_net'."""
    return ", ".join(dict.fromkeys(n.rsplit(".", 2)[0] if n.count(".") >= 2 else n.split(".")[0]
                                   for n in names))


def init_choice(value) -> str:
    """``distill.init_decoder`` as one of auto|true|false (YAML booleans accepted)."""
    v = str(value).lower() if value is not None else "false"
    if v not in INIT_CHOICES:
        raise ConfigError("distill.init_decoder", f"must be auto, true or false, got {value!r}",
                          "auto copies the teacher's decoder when its shapes match")
    return v


@torch.no_grad()
def transfer_decoder(teacher: RadianceField, student: RadianceField, mode, pair: str) -> list[str]:
    """Copy the teacher's decoder tensors into the student (``mode`` auto|true|false); returns
    the names copied. One log line says what was transferred, or why not."""
    mode = init_choice(mode)
    if mode == "false":
        return []
    m = match_decoders(teacher, student)
    if not m.transferable:
        why = ("shapes differ: " + "; ".join(m.conflicts[:3]) if m.conflicts else
               "no decoder tensor in common" if decoder_params(student) else
               "the student has no decoder")
        if mode == "true":
            raise ConfigError("distill.init_decoder", f"true, but {pair} cannot transfer ({why})",
                              "use init_decoder=auto, or give both fields the shared decoder "
                              "(shared_decoder=true, see conf/arch/*.yaml)")
        log.info("distill: decoder not transferred (%s): %s", pair, why)
        return []
    t = decoder_params(teacher)
    for name, p in decoder_params(student).items():
        if name in m.copied:
            p.copy_(t[name].to(p))
    kept = f"; student's own: {_modules(m.student_only)}" if m.student_only else ""
    log.info("distill: decoder transferred %s: %s (%d tensors)%s", pair, _modules(m.copied),
             len(m.copied), kept)
    return m.copied


def freeze_decoder(student: RadianceField, copied: list[str]) -> set[int]:
    """Freeze the decoder tensors that came from the teacher (the original's ``fix_mlp``), or
    the whole decoder when none did; returns the frozen parameters' ids (kept out of the
    optimizer)."""
    params = decoder_params(student)
    names = copied or list(params)
    for n in names:
        params[n].requires_grad_(False)
    log.info("distill: decoder frozen: %s", _modules(names) if names else "(no decoder)")
    return {id(params[n]) for n in names}
