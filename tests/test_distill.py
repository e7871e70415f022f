"""Distillation: every teacher/student pair, stage switching, density clamp, frozen teacher."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from pvdal.distill.stages import StageSchedule
from pvdal.io.checkpoint import load_field
from pvdal.modules.distill_module import DistillModule
from pvdal.render.renderer import render_chunked
from pvdal.render.volrend import render_weights
from pvdal.tasks import distill, train
from pvdal.utils.errors import CheckpointError, ConfigError
from tests.conftest import TINY_AL, TINY_ARCH, TINY_DATA, TINY_RUN, compose_cfg

ARCHS = [a for a in ("mlp", "plenoxels", "tensorf", "ngp")
         if (Path(__file__).parents[1] / "conf" / "arch" / f"{a}.yaml").is_file()]


def state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, data_dir, tiny_teacher):
    """One tiny trained teacher per architecture (ngp is the shared session teacher)."""
    out = {"ngp": tiny_teacher}
    for arch in ARCHS:
        if arch == "ngp":
            continue
        d = tmp_path_factory.mktemp(f"teacher_{arch}")
        cfg = compose_cfg("train", d / "run", data_dir, [f"arch={arch}", *TINY_DATA, *TINY_RUN,
                                                          *TINY_ARCH.get(arch, []),
                                                          "trainer.max_steps=20"])
        train.run(cfg)
        out[arch] = d / "run" / "checkpoints" / "last.ckpt"
    return out


def test_stage_schedule_boundaries():
    s = StageSchedule.from_config(0.1, 0.3, 100)
    assert [s.stage(i) for i in (0, 9, 10, 29, 30, 99)] == [1, 1, 2, 2, 3, 3]
    s = StageSchedule.from_config(5, 20, 1000)  # absolute steps
    assert (s.feat_end, s.point_end) == (5, 20)
    assert StageSchedule.from_config(0.1, 0.3, 100, skip_features=True).stage(0) == 2
    with pytest.raises(ConfigError, match="point_end"):
        StageSchedule.from_config(0.5, 0.2, 100)


def test_rgb_ramp_eases_the_render_loss_in():
    s = StageSchedule.from_config(0.1, 0.3, 100, rgb_ramp=0.1)  # 10 steps from step 30
    assert s.rgb_ramp == 10
    assert [s.rgb_scale(i) for i in (30, 34, 39, 40, 99)] == pytest.approx([0.1, 0.5, 1, 1, 1])
    assert StageSchedule.from_config(0.1, 0.3, 100).rgb_scale(30) == 1.0  # off: full at once
    assert StageSchedule.from_config(1, 3, 100, rgb_ramp=4).rgb_scale(4) == 0.5  # steps
    with pytest.raises(ConfigError, match="rgb_ramp"):
        StageSchedule.from_config(0.1, 0.3, 100, rgb_ramp=-1)


def _fixed_batch_losses(module: DistillModule, steps: int) -> dict[str, list[float]]:
    """Run ``steps`` Adam steps on one fixed batch, recording each loss term (unweighted decay)."""
    torch.manual_seed(0)
    o = torch.tensor([[0.0, 0.0, 2.8]]).repeat(64, 1)
    d = torch.nn.functional.normalize(torch.randn(64, 3) * 0.15 + torch.tensor([0, 0, -1.0]),
                                      dim=-1)
    opt = module.configure_optimizers()["optimizer"]  # the architecture's learning rates
    logged: dict[str, list[float]] = {}
    module.log = lambda name, value, **kw: logged.setdefault(name, []).append(float(value))
    module._teacher_to_device()
    for _ in range(steps):
        opt.zero_grad()
        loss = module.training_step({"rays_o": o, "rays_d": d}, 0)
        loss.backward()
        opt.step()
    return logged


@pytest.mark.parametrize("student", ARCHS)
@pytest.mark.parametrize("teacher_arch", ARCHS)
def test_every_pair_distills(teacher_arch, student, teachers, distill_cfg, tmp_path):
    teacher_path = teachers[teacher_arch]
    t_before = state_hash(load_field(teacher_path).field)
    # with all three active-learning levels on (tiny pools: each level acts within 6 steps)
    cfg = distill_cfg(student, [f"teacher.ckpt={teacher_path}", "trainer.max_steps=6",
                                "distill.stages.feat_end=1", "distill.stages.point_end=3",
                                "al=full", *TINY_AL])
    result = distill.run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"student", "teacher", "student_vs_teacher_psnr", "train_time_s"}
    for key in ("psnr", "ssim", "lpips", "fps", "num_params", "size_mb"):
        assert key in metrics["student"] and key in metrics["teacher"]
    assert metrics["pair"] == f"{teacher_arch}2{student}" == result["pair"]
    # the saved student reloads with identical renders; the teacher is not inside it
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith("teacher") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["teacher_sha256"] == load_field(teacher_path).sha256
    loaded = load_field(out / "checkpoints" / "last.ckpt")
    assert loaded.arch["name"] == student
    from pvdal.tasks.train import build_datamodule

    dm = build_datamodule(cfg)
    o, d = dm.data.image_rays(dm.data.test, 0)
    a = render_chunked(loaded.field, o, d, loaded.scene, loaded.grid, loaded.n_samples,
                       loaded.background)["rgb"]
    # ... against what the run wrote: its test render of view 0 (8-bit PNG)
    h, w = (int(v) for v in dm.data.test.hw[0])
    png = torch.from_numpy(iio.imread(out / "test_images" / "000.png")).float()
    diff = ((a.view(h, w, 3).clamp(0, 1) * 255 + 0.5).floor() - png[..., :3]).abs()
    assert png.shape[:2] == (h, w) and diff.max() <= 1.0 and torch.isfinite(a).all()
    # the teacher stays bit-identical
    assert state_hash(load_field(teacher_path).field) == t_before
    # each stage's newly active losses fall on a fixed batch (no feature decay)
    teacher = load_field(teacher_path)
    before = state_hash(teacher.field)
    point = ["distill.stages.feat_end=0", "distill.stages.point_end=1000"]
    stages = {"1": (["distill.stages.feat_end=1000", "distill.stages.point_end=1000"], ["volume"]),
              # each point loss under its own gradient (together, the larger one dominates)
              "2": ([*point, "distill.weights.color=0.0", "distill.weights.feat=0.0"],
                    ["sigma"]),
              "2c": ([*point, "distill.weights.sigma=0.0", "distill.weights.feat=0.0"],
                     ["color"]),
              "3": (["distill.stages.feat_end=0", "distill.stages.point_end=0",
                     "distill.stages.rgb_ramp=0"], ["rgb"])}
    for stage, (ov, keys) in stages.items():
        cfg2 = distill_cfg(student, [f"teacher.ckpt={teacher_path}", "distill.feat_decay=1.0",
                                     *ov])
        module = DistillModule(teacher, cfg2.student, cfg2.distill, cfg2.render, cfg2.grid)
        if module.schedule.skip_features and stage == "1":
            continue  # plenoxels on a side: no feature stage (tested in the schedule test)
        logged = _fixed_batch_losses(module, 25)
        assert logged["distill/stage"][0] == float(stage[0])
        for k in keys:
            vals = logged[f"distill/loss_{k}"]
            assert min(vals[-3:]) < vals[0], f"stage {stage}: loss_{k} did not fall: {vals}"
    assert state_hash(teacher.field) == before


def test_density_clamp_applies_to_teacher_and_student(distill_cfg, tiny_teacher):
    cfg = distill_cfg("ngp", ["distill.density_clamp=[-1.0,2.0]"])
    module = DistillModule(load_field(tiny_teacher), cfg.student, cfg.distill, cfg.render,
                           cfg.grid)
    module._teacher_to_device()
    o = torch.tensor([[0.0, 0.0, 2.8]]).repeat(32, 1)
    d = torch.nn.functional.normalize(torch.randn(32, 3) * 0.2 + torch.tensor([0, 0, -1.0]), dim=-1)
    samples, t = module.teacher_pass(o, d)
    assert t.field.sigma_raw.min() >= -1.0 and t.field.sigma_raw.max() <= 2.0
    assert module.field.density_clamp == (-1.0, 2.0)
    raw = torch.tensor([-5.0, 0.0, 9.0])
    assert torch.allclose(module.field.activate(raw), torch.exp(torch.tensor([-1.0, 0.0, 2.0])))
    off = distill_cfg("ngp", ["distill.density_clamp=null"])
    m2 = DistillModule(load_field(tiny_teacher), off.student, off.distill, off.render, off.grid)
    assert m2.field.density_clamp is None


def test_early_stop_drops_hidden_samples_and_keeps_the_target(distill_cfg, tiny_teacher):
    o = torch.tensor([[0.0, 0.0, 2.8]]).repeat(64, 1)
    d = torch.nn.functional.normalize(torch.randn(64, 3) * 0.2 + torch.tensor([0, 0, -1.0]), dim=-1)
    passes = {}
    for eps in (0.0, 1e-3, 0.99):  # 0.99: even the tiny teacher hides some samples
        cfg = distill_cfg("ngp", [f"distill.early_stop_eps={eps}"])
        module = DistillModule(load_field(tiny_teacher), cfg.student, cfg.distill, cfg.render,
                               cfg.grid)
        module._teacher_to_device()
        torch.manual_seed(0)  # the same jittered samples for every pass
        passes[eps] = module.teacher_pass(o, d)
    (s_all, t_all), (s_kept, t_kept) = passes[0.0], passes[0.99]
    # the target composites the kept samples: within eps of compositing every sample
    assert (passes[1e-3][1].rgb - t_all.rgb).abs().max() <= 1e-3
    assert (t_kept.rgb - t_all.rgb).abs().max() <= 0.99
    trans = render_weights(s_all.scatter(t_all.sigmas), s_all.deltas)[1][s_all.mask]
    visible = trans >= 0.99
    assert 0 < int(visible.sum()) < len(visible)
    assert torch.equal(s_kept.positions, s_all.positions[visible])
    assert torch.allclose(t_kept.field.sigma_raw, t_all.field.sigma_raw[visible], atol=1e-5)
    assert torch.allclose(t_kept.features, t_all.features[visible], atol=1e-6)
    assert torch.allclose(t_kept.weights, t_all.weights[visible], atol=1e-6)
    assert int(s_kept.mask.sum()) == len(s_kept.positions)
    assert torch.equal(s_kept.ray_indices, s_all.ray_indices[visible])


def test_teacher_arch_mismatch_is_a_clear_error(distill_cfg, tiny_teacher):
    if "tensorf" not in ARCHS:
        pytest.skip("needs a second architecture")
    cfg = distill_cfg("ngp", ["teacher=tensorf"])
    with pytest.raises(CheckpointError, match="holds a ngp field but teacher=tensorf"):
        distill.run(cfg)


def test_teacher_trained_once_and_cached(distill_cfg, caplog):
    cfg = distill_cfg("ngp", ["teacher_train.max_steps=4", "trainer.max_steps=2"],
                      teacher_ckpt=False)
    distill.run(cfg)
    teachers = list((Path(cfg.paths.log_dir) / "teachers").glob("*/checkpoints/last.ckpt"))
    assert len(teachers) == 1
    mtime = teachers[0].stat().st_mtime_ns
    with caplog.at_level("INFO", logger="pvdal"):
        distill.run(cfg)
    assert "reusing cached ngp teacher" in caplog.text
    assert teachers[0].stat().st_mtime_ns == mtime


def test_student_config_sets_batch_and_schedule(tmp_path, data_dir):
    """A student's batch_size / distill_steps reach data and trainer; explicit keys still win."""
    mlp = compose_cfg("distill", tmp_path / "a", data_dir, ["student=mlp"])
    assert (mlp.data.batch_size, mlp.trainer.max_steps) == (512, 5000)
    ngp = compose_cfg("distill", tmp_path / "b", data_dir, ["student=ngp"])
    assert (ngp.data.batch_size, ngp.trainer.max_steps) == (1024, 2500)
    explicit = compose_cfg("distill", tmp_path / "c", data_dir,
                           ["student=mlp", "data.batch_size=64", "trainer.max_steps=8"])
    assert (explicit.data.batch_size, explicit.trainer.max_steps) == (64, 8)
    train_cfg = compose_cfg("train", tmp_path / "d", data_dir, ["arch=mlp"])
    assert (train_cfg.data.batch_size, train_cfg.trainer.max_steps) == (1024, 2500)


def test_arch_config_sets_its_marching_samples(tmp_path, data_dir):
    """An arch's n_samples reaches render.n_samples (train, and a teacher trained by distill)."""
    if "tensorf" not in ARCHS:
        pytest.skip("needs tensorf")

    def samples(task: str, name: str, ov: list[str]) -> int:
        return int(compose_cfg(task, tmp_path / name, data_dir, ov).render.n_samples)

    assert samples("train", "a", ["arch=tensorf"]) == 256
    assert samples("train", "b", ["arch=ngp"]) == 128
    assert samples("train", "c", ["arch=tensorf", "render.n_samples=64"]) == 64
    assert samples("distill", "d", ["teacher=tensorf"]) == 256
    assert samples("distill", "e", ["teacher=ngp", "student=tensorf"]) == 128
