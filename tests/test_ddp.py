"""DDP that is correct for every task: two gloo processes (``ddp_spawn``) end every architecture's
training and every student's distillation (al=full, past the first upsample/prune) with the same
parameters, occupancy grid and view pool on both ranks; the NaN guard decides on all ranks at
once; a teacher trained on the fly does not deadlock ``trainer=ddp``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from pvdal.tasks import distill, train
from tests.conftest import ROOT, TINY_AL, TINY_ARCH, TINY_DATA, TINY_RUN

ARCHS = ("ngp", "mlp", "plenoxels", "tensorf")
# the hard-ray pool is per rank by design (pvdal/al/ray.py); everything else must agree
PER_RANK = ("al_ray",)


class RankState(pl.Callback):
    """Each rank saves its module state (field, grid, clock, AL levels) and its callbacks'
    states (the view pool) at the end of training."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        state = {f"module.{k}": v.detach().cpu().clone()
                 for k, v in pl_module.state_dict().items()
                 if torch.is_tensor(v) and not k.startswith(PER_RANK)}
        for cb in trainer.callbacks:
            if type(cb).__name__ == "ViewLevel":
                state.update({f"view.{k}": v for k, v in cb.state_dict()["pool"].items()})
        state["module.clock.state"][1] = 0.0  # elapsed wall time: each process its own
        state["step"] = torch.tensor(trainer.global_step)
        torch.save(state, Path(self.out) / f"rank{trainer.global_rank}.pt")


def assert_ranks_agree(out: Path) -> dict:
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0.keys() == r1.keys()
    differ = [k for k in r0 if r0[k].shape != r1[k].shape or not torch.equal(r0[k], r1[k])]
    assert not differ, differ
    return r0


@pytest.mark.parametrize("arch", ARCHS)
def test_ddp_train_every_arch_ranks_agree(arch, tiny_cfg, tmp_path):
    (tmp_path / "ranks").mkdir()
    cfg = tiny_cfg("train", ["trainer=ddp_sim", "trainer.max_steps=8", "data.steps_per_epoch=4",
                             "trainer.log_every_n_steps=4"], arch=arch)
    train.run(cfg, [RankState(str(tmp_path / "ranks"))])
    state = assert_ranks_agree(tmp_path / "ranks")
    assert int(state["step"]) == 8
    if arch == "tensorf":  # past the tiny preset's upsample 16^3 -> 32^3 (step 4), shrink (6)
        assert state["module.field.density_enc.planes.0"].shape[-1] == 32
    if arch == "plenoxels":  # upsampled 8^3 -> 16^3 cells at step 4: a new table on each rank
        assert state["module.field.index"].numel() == 17**3


@pytest.mark.parametrize("student", ARCHS)
def test_ddp_distill_every_student_ranks_agree(student, distill_cfg, tmp_path):
    (tmp_path / "ranks").mkdir()
    cfg = distill_cfg(student, ["trainer=ddp_sim", "trainer.max_steps=8", "al=full", *TINY_AL,
                                "data.steps_per_epoch=4", "trainer.log_every_n_steps=4"])
    distill.run(cfg, [RankState(str(tmp_path / "ranks"))])
    state = assert_ranks_agree(tmp_path / "ranks")
    assert int(state["step"]) == 8
    assert state["view.psnr"].numel() > 0  # the view pool filled, identically on both ranks


class PoisonRank1(pl.Callback):
    """Rank 1 alone gets a batch with NaN targets at ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        dm = trainer.datamodule
        if trainer.global_rank != 1 or "ray_batch" in dm.__dict__:
            return
        real = dm.ray_batch

        def poisoned(step: int, device=None):
            batch = real(step, device)
            if step == self.step:
                batch = {**batch, "rgb": torch.full_like(batch["rgb"], float("nan"))}
            return batch

        dm.ray_batch = poisoned


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_ddp_nan_guard_decides_on_every_rank(policy, tiny_cfg, tmp_path):
    (tmp_path / "ranks").mkdir()
    cfg = tiny_cfg("train", ["trainer=ddp_sim", "trainer.max_steps=6", f"nan_policy={policy}",
                             "render.random_background=false"])
    cbs = [PoisonRank1(3), RankState(str(tmp_path / "ranks"))]
    if policy == "skip":  # both ranks skip step 3 (no hang) and stay identical
        train.run(cfg, cbs)
        assert int(assert_ranks_agree(tmp_path / "ranks")["step"]) == 6  # no hang, same state
        return
    with pytest.raises(Exception, match="loss.*not finite"):
        train.run(cfg, cbs)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
                      weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for k, v in ckpt["state_dict"].items()
               if k.startswith("field.") and v.is_floating_point())


def test_ddp_distill_trains_its_teacher_first(tmp_path, data_dir):
    """``distill.py trainer=ddp`` without teacher.ckpt: the teacher trains in one process before
    the DDP processes start (it used to hold the cache lock the relaunched ranks waited on)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "distill.py", f"hydra.run.dir={run}", f"paths.data_dir={data_dir}",
           f"paths.log_dir={tmp_path / 'logs'}", "student=tensorf", "teacher=ngp",
           "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.strategy=ddp_find_unused_parameters_true", *TINY_DATA, *TINY_RUN,
           *TINY_ARCH["ngp"], "trainer.max_steps=4", "teacher_train.max_steps=6"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["student"]["psnr"] > 0
    assert list((tmp_path / "logs" / "teachers").glob("*/checkpoints/last.ckpt"))


def test_global_batch_smaller_than_the_world_is_one_config_error(tiny_cfg, monkeypatch):
    from pvdal.data import datamodule
    from pvdal.tasks.train import build_datamodule
    from pvdal.utils.errors import ConfigError

    dm = build_datamodule(tiny_cfg("train", ["data.batch_size=3"]))
    monkeypatch.setattr(datamodule, "_rank_world", lambda: (1, 4))
    with pytest.raises(ConfigError, match="data.batch_size.*3 rays cannot be split over 4"):
        dm.ray_batch(0)
    monkeypatch.setattr(datamodule, "_rank_world", lambda: (1, 2))
    assert dm.ray_batch(0)["rays_o"].shape[0] == 2  # rank 1's slice [1:3] of the global 3


class AbortOnce(pl.Callback):
    """Rank 1 aborts at its first test start, as gloo sometimes makes a spawned process do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_test_start(self, trainer, pl_module) -> None:
        import os

        if trainer.global_rank == 1 and not Path(self.marker).exists():
            Path(self.marker).write_text("aborted")
            os.abort()


def test_ddp_test_phase_survives_one_aborted_spawn(tiny_cfg, tmp_path, caplog):
    marker = tmp_path / "aborted"
    cfg = tiny_cfg("train", ["trainer=ddp_sim", "trainer.max_steps=4", "data.steps_per_epoch=4"])
    with caplog.at_level("WARNING", logger="pvdal"):
        result = train.run(cfg, [AbortOnce(str(marker))])
    assert marker.read_text() == "aborted"  # the first test launch did abort
    assert any("testing again on a fresh port" in r.getMessage() for r in caplog.records)
    assert result["steps"] == 4 and result["psnr"] > 0
