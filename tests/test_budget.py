"""Time budgets pace the schedule (modules/clock.py) instead of cutting the run.

Time is made exact here: every step takes DT seconds of the clock (``now`` counts the steps
begun), so a budget of ``BUDGET`` seconds ends every run at step ``BUDGET / DT`` whatever this
machine's speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from pvdal.modules import clock as clock_mod
from pvdal.tasks import distill, train
from tests.test_reliability import RankHash, StopAt, field_state

DT, BUDGET = 0.5, 10  # seconds per step; the budget ends the run at step 20
BUDGET_RUN = ["trainer.max_steps=1000", "trainer.max_time=00:00:00:10"]
TENSORF = ["arch.tiny.upsample_steps=[300,600]", "arch.tiny.shrink_steps=[500]",
           "arch.lr_decay=0.1"]


class Record(pl.Callback):
    """The trainer for the fake clock, and what each step's schedule looked like."""

    def __init__(self) -> None:
        self.begun = 0  # steps begun in this process: the fake clock
        self.steps: list[tuple[int, int]] = []  # (global step, schedule step)
        self.stages: set[int] = set()
        self.final: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.begun += 1
        self.steps.append((trainer.global_step, pl_module.schedule_step))
        schedule = getattr(pl_module, "schedule", None)
        if schedule is not None:
            self.stages.add(schedule.stage(pl_module.schedule_step))

    def on_train_end(self, trainer, pl_module) -> None:
        field, groups = pl_module.field, trainer.optimizers[0].param_groups
        self.final = {"lr": [g["lr"] for g in groups], "step": trainer.global_step,
                      "initial_lr": [g["initial_lr"] for g in groups],
                      "stage": getattr(field, "stage", None),
                      "shrunk": getattr(field, "shrunk", None)}


@pytest.fixture
def fake_time(monkeypatch):
    rec = Record()
    monkeypatch.setattr(clock_mod, "now", lambda: rec.begun * DT)
    return rec


def metrics(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_budget_completes_tensorf_schedule(tiny_cfg, fake_time, caplog):
    cfg = tiny_cfg("train", [*BUDGET_RUN, *TENSORF], arch="tensorf")
    with caplog.at_level("INFO", logger="pvdal"):
        train.run(cfg, [fake_time])
    m, final = metrics(cfg), fake_time.final
    assert m["steps"] == final["step"] == BUDGET / DT  # the budget, not max_steps, ended it
    assert m["max_steps"] == 1000 and m["budget_s"] == BUDGET and m["schedule_complete"]
    # every upsample and the shrink came although max_steps was 50x away
    assert final["stage"] == 2 and final["shrunk"]
    assert final["lr"] == pytest.approx([0.1 * lr for lr in final["initial_lr"]], rel=1e-6)
    assert any("paced by the 10 s budget" in r.getMessage() for r in caplog.records)
    sched = [s for _, s in fake_time.steps]
    assert sched == sorted(sched) and sched[-1] == 950  # schedule steps 0, 50, ..., 950


def test_steps_alone_keep_todays_schedule(tiny_cfg, fake_time):
    cfg = tiny_cfg("train", ["trainer.max_steps=12", "arch.tiny.upsample_steps=[5]",
                             "arch.tiny.shrink_steps=[7]"], arch="tensorf")
    train.run(cfg, [fake_time])
    assert all(g == s for g, s in fake_time.steps) and len(fake_time.steps) == 12
    m, final = metrics(cfg), fake_time.final
    assert m["schedule_complete"] and m["budget_s"] is None and m["steps"] == 12
    assert final["stage"] == 1 and final["shrunk"]
    decay = cfg.arch.lr_decay
    assert final["lr"] == pytest.approx([decay * lr for lr in final["initial_lr"]], rel=1e-6)


def test_budget_visits_every_distillation_stage(distill_cfg, fake_time):
    cfg = distill_cfg("mlp", [*BUDGET_RUN, "distill.stages.feat_end=0.05",
                              "distill.stages.point_end=0.2"])
    result = distill.run(cfg, [fake_time])
    assert fake_time.stages == {1, 2, 3}
    assert result["steps"] == BUDGET / DT and result["schedule_complete"]
    final = fake_time.final
    decay = float(cfg.student.lr_decay)
    assert decay < 1 and final["lr"] == pytest.approx([decay * lr for lr in final["initial_lr"]],
                                                      rel=1e-6)


def test_resume_mid_budget_matches_uninterrupted(tiny_cfg, fake_time, tmp_path):
    common = [*BUDGET_RUN, *TENSORF, "data.steps_per_epoch=4", "grid.update_every=3"]
    full = tiny_cfg("train", common, arch="tensorf")
    train.run(full, [fake_time])
    full_state = field_state(Path(full.paths.output_dir) / "checkpoints" / "last.ckpt")

    part = tiny_cfg("train", common, arch="tensorf")
    part.paths.output_dir = str(tmp_path / "interrupted")
    train.run(part, [fake_time, StopAt(9)])  # after the first upsample, before the shrink
    assert not metrics(part)["schedule_complete"]
    resumed = tiny_cfg("train", [*common, "ckpt_path=last"], arch="tensorf")
    resumed.paths.output_dir = part.paths.output_dir
    fake_time.begun = 0  # a new process: its clock starts anew
    train.run(resumed, [fake_time])
    assert metrics(resumed)["schedule_complete"] and metrics(resumed)["steps"] == BUDGET / DT
    state = field_state(Path(part.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert state.keys() == full_state.keys()
    for k, v in full_state.items():
        assert torch.equal(state[k], v), k


def test_two_processes_stop_together_on_budget(tiny_cfg, tmp_path):
    """Under DDP every rank follows rank 0's clock: both stop on the same step, identical."""
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    cfg = tiny_cfg("train", ["trainer=ddp_sim", "trainer.max_steps=100000",
                             "trainer.max_time=00:00:00:04", "data.batch_size=64",
                             "data.steps_per_epoch=6"])
    result = train.run(cfg, [RankHash(str(ranks))])
    r0 = json.loads((ranks / "rank0.json").read_text())
    r1 = json.loads((ranks / "rank1.json").read_text())
    assert r0 == r1 and 0 < r0["step"] < 100000
    assert result["schedule_complete"] and result["steps"] == r0["step"]


def _tiny_field(name: str, **overrides):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    cfg = OmegaConf.load(Path(CONF) / "arch" / f"{name}.yaml")
    return instantiate(OmegaConf.merge(cfg.field, cfg.tiny, overrides), _convert_="all")


def test_events_fire_once_when_the_schedule_step_jumps_past_them():
    """A budget-paced schedule step can jump (0 -> 10): a shrink / prune step inside the jump
    still fires, once."""
    from tests.test_fields import bump_tensorf

    f = _tiny_field("tensorf", upsample_steps=[100], shrink_steps=[6])
    bump_tensorf(f)
    assert not f.on_step(0, None, -1)
    assert f.on_step(10, None, 0) and f.shrunk  # 6 lies inside the jump
    aabb = f.aabb.clone()
    assert not f.on_step(20, None, 10) and torch.equal(f.aabb, aabb)  # no second shrink

    p = _tiny_field("plenoxels", upsample_steps=[100], prune_steps=[4])
    with torch.no_grad():
        p.table[: p.n_rows // 3, 0] = 3.0
    rows = p.n_rows
    assert p.on_step(10, None, 0) and p.n_rows < rows  # pruned although 10 != 4
    rows = p.n_rows
    assert not p.on_step(20, None, 10) and p.n_rows == rows


def test_checkpoint_without_clock_resumes_step_paced(tiny_cfg):
    """A checkpoint written before the clock existed resumes on its global step."""
    common = ["trainer.max_steps=10"]
    part = tiny_cfg("train", common)
    train.run(part, [StopAt(6)])
    ckpt = Path(part.paths.output_dir) / "checkpoints" / "last.ckpt"
    old = torch.load(ckpt, weights_only=False)
    del old["state_dict"]["clock.state"]
    torch.save(old, ckpt)
    resumed = tiny_cfg("train", [*common, "ckpt_path=last"])
    resumed.paths.output_dir = part.paths.output_dir
    rec = Record()
    train.run(resumed, [rec])
    assert rec.steps[0] == (6, 6) and all(g == s for g, s in rec.steps)
    assert metrics(resumed)["steps"] == 10 and metrics(resumed)["schedule_complete"]


@pytest.mark.parametrize("reset", [False, True])
def test_lr_upsample_reset_restarts_the_decay_at_each_upsample(reset, tiny_cfg, fake_time):
    """TensoRF's lr_upsample_reset: after the upsample at step 5 of 12 the decay starts again
    from the full rate, so it ends at lr * 0.1 ** (7 / 12) instead of lr * 0.1."""
    cfg = tiny_cfg("train", ["trainer.max_steps=12", "arch.tiny.upsample_steps=[5]",
                             "arch.tiny.shrink_steps=[100]", "arch.lr_decay=0.1",
                             f"arch.lr_upsample_reset={str(reset).lower()}"], arch="tensorf")
    train.run(cfg, [fake_time])
    final = fake_time.final
    assert final["stage"] == 1
    want = 0.1 ** (7 / 12) if reset else 0.1
    assert final["lr"] == pytest.approx([want * lr for lr in final["initial_lr"]], rel=1e-6)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
                      weights_only=False)
    assert ckpt["lr_reset_at"] == pytest.approx(5 / 12 if reset else 0.0)
