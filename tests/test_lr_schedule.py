"""LR schedules (pvdal/modules/lr_schedule.py): the shapes the reference recipes need."""

from __future__ import annotations

import math

import pytest
import torch

from pvdal.modules.lr_schedule import lr_factors
from pvdal.utils.errors import ConfigError


def _opt(*names: str) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-2,
                              "name": n} for n in names])


def _at(arch: dict, names: tuple[str, ...], p: float) -> list[float]:
    prog = {"p": p}
    return [f(0) for f in lr_factors(arch, _opt(*names), lambda: prog["p"])]


def test_multistep_drops_by_gamma_at_each_milestone():
    arch = {"lr_schedule": "multistep", "lr_milestones": [0.5, 0.75, 0.9], "lr_gamma": 0.33}
    got = [_at(arch, ("features",), p)[0] for p in (0.0, 0.49, 0.5, 0.8, 0.95, 1.0)]
    assert got == pytest.approx([1, 1, 0.33, 0.33 ** 2, 0.33 ** 3, 0.33 ** 3])


def test_warmup_ramps_linearly_from_the_start_factor():
    arch = {"lr_schedule": "multistep", "lr_milestones": [0.5], "lr_gamma": 0.1,
            "lr_warmup": 0.1, "lr_warmup_start": 0.01}
    got = [_at(arch, ("features",), p)[0] for p in (0.0, 0.05, 0.1, 0.6)]
    assert got == pytest.approx([0.01, 0.01 + 0.99 * 0.5, 1.0, 0.1])


def test_per_group_decay_and_delay_follow_the_group_name():
    """svox2: the density decays to its own final rate after a reverse-cosine delay; the SH
    table decays to another and starts at full rate."""
    arch = {"lr_schedule": "exp", "lr_decay": {"density": 1e-3, "features": 1e-2},
            "lr_delay": {"density": [0.2, 0.01]}}
    d0, s0 = _at(arch, ("density", "features"), 0.0)
    d1, s1 = _at(arch, ("density", "features"), 0.1)
    d2, s2 = _at(arch, ("density", "features"), 1.0)
    assert (d0, s0) == pytest.approx((0.01, 1.0))
    assert d1 == pytest.approx((0.01 + 0.99 * math.sin(math.pi / 4)) * 1e-3 ** 0.1)
    assert s1 == pytest.approx(1e-2 ** 0.1)
    assert (d2, s2) == pytest.approx((1e-3, 1e-2))


def test_one_delay_serves_every_group():
    """``lr_delay: [fraction, mult]`` without a table delays every group alike."""
    arch = {"lr_decay": 1.0, "lr_delay": [0.5, 0.1]}
    assert _at(arch, ("density", "sh"), 0.0) == pytest.approx([0.1, 0.1])
    assert _at(arch, ("density", "sh"), 0.5) == pytest.approx([1.0, 1.0])


def test_a_decay_table_must_name_every_trained_group():
    """A group left out of a per-group ``lr_decay`` table is an error naming it (it would keep
    its full rate to the end); a group with lr 0 (svox2's empty decoder) may be left out."""
    with pytest.raises(ConfigError, match=r"arch\.lr_decay\.decoder"):
        _at({"lr_decay": {"features": 0.1}}, ("features", "decoder"), 0.5)
    opt = _opt("features", "decoder")
    opt.param_groups[1]["lr"] = 0.0
    got = [f(0) for f in lr_factors({"lr_decay": {"features": 0.1}}, opt, lambda: 0.5)]
    assert got == pytest.approx([0.1 ** 0.5, 1.0])


def test_float_decay_and_unknown_schedule():
    assert _at({"lr_decay": 0.1}, ("features", "decoder"), 0.5) == pytest.approx(
        [0.1 ** 0.5] * 2)
    with pytest.raises(ConfigError, match="lr_schedule"):
        _at({"lr_schedule": "step"}, ("features",), 0.0)


def test_instant_ngp_recipe_trains_with_its_optimizer(tiny_cfg, monkeypatch):
    """experiment=ref_instant_ngp: nerfacc's Adam (eps 1e-15, weight decay 1e-6), warm-up then
    x0.33 steps, white background; a short run trains with it (tiny sizes and step)."""
    from pvdal.tasks import train

    cfg = tiny_cfg("train", ["experiment=ref_instant_ngp", "grid.resolution=16",
                             "grid.warmup_steps=4", "render.target_samples=2048"])
    assert (cfg.arch.name, cfg.arch.lr_schedule, cfg.render.random_background) == (
        "ngp", "multistep", False)
    seen = {}

    def capture(self, *a, **k):
        seen["opt"] = self.optimizers().optimizer
        return orig(self, *a, **k)

    from pvdal.modules.field_module import FieldModule

    orig = FieldModule.training_step
    monkeypatch.setattr(FieldModule, "training_step", capture)
    train.run(cfg)
    g = seen["opt"].param_groups[0]
    assert (g["eps"], g["weight_decay"], g["betas"]) == (1e-15, 1e-6, (0.9, 0.999))


def test_tensorf_paper_preset_resets_the_lr_at_upsamples(tmp_path, data_dir):
    """experiment=paper + arch=tensorf: the preset's ``_arch`` block sets TensoRF's
    lr_upsample_reset and Adam eps on the arch (not in the field); the CPU default keeps both."""
    from pvdal.utils.presets import apply_preset
    from tests.conftest import compose_cfg

    paper = apply_preset(compose_cfg("train", tmp_path, data_dir,
                                     ["arch=tensorf", "experiment=paper"]))
    assert paper.arch.lr_upsample_reset is True and paper.arch.optimizer.eps == 1e-8
    assert "_arch" not in paper.arch.field and paper.arch.field.mlp_hidden == 128
    assert paper.arch.optimizer.betas == [0.9, 0.99]  # the rest of the optimizer kept
    cpu = apply_preset(compose_cfg("train", tmp_path, data_dir, ["arch=tensorf"]))
    assert cpu.arch.lr_upsample_reset is False and cpu.arch.optimizer.eps == 1e-15
