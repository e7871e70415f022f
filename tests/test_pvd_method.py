"""The paper's method: aligned volume V(x), decoder transfer / freezing, norm_l2, distill=paper."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from pvdal.distill.decoder_init import decoder_params, match_decoders
from pvdal.distill.losses import match_loss
from pvdal.distill.recipe import check_options
from pvdal.distill.stages import StageSchedule
from pvdal.io.checkpoint import load_field
from pvdal.modules.distill_module import DistillModule
from pvdal.tasks import distill
from pvdal.utils.errors import ConfigError
from pvdal.utils.presets import apply_preset
from tests.conftest import compose_cfg

SHARED_ARCHS = ("ngp", "mlp", "tensorf")


def tiny_field(tmp_path: Path, data_dir: Path, arch: str, shared: bool = False):
    """A test-sized field built from conf/arch/<arch>.yaml (preset=tiny) as a run builds it."""
    cfg = compose_cfg("train", tmp_path / arch, data_dir,
                      [f"arch={arch}", "preset=tiny", f"shared_decoder={str(shared).lower()}"])
    apply_preset(cfg)
    torch.manual_seed(0)
    return instantiate(cfg.arch.field, _convert_="all")


def rays(n: int = 48) -> dict[str, torch.Tensor]:
    """A fixed fan of rays at the tiny scene's object."""
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([[0.0, 0.0, 2.8]]).repeat(n, 1)
    d = torch.randn(n, 3, generator=g) * 0.15 + torch.tensor([0.0, 0.0, -1.0])
    return {"rays_o": o, "rays_d": torch.nn.functional.normalize(d, dim=-1)}


def module_for(distill_cfg, tiny_teacher, student: str, overrides: list[str]) -> DistillModule:
    cfg = apply_preset(distill_cfg(student, overrides))
    torch.manual_seed(0)
    m = DistillModule(load_field(tiny_teacher), cfg.student, cfg.distill, cfg.render, cfg.grid)
    m._teacher_to_device()
    return m


def decoder_state(field) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in decoder_params(field).items()}


# --- V(x) ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("arch", SHARED_ARCHS)
def test_volume_is_the_decoders_clamped_sigma_and_colour_feature(arch, shared, tmp_path,
                                                                  data_dir):
    f = tiny_field(tmp_path, data_dir, arch, shared)
    x = torch.rand(64, 3) * 1.6 - 0.8
    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    feat = f.features(x)
    out = f.decode(feat, d)
    lo, hi = out.sigma_raw.quantile(0.25).item(), out.sigma_raw.quantile(0.75).item()
    vol = f.volume(feat, (lo, hi))  # a range that bites: clamping changes half the values
    assert vol.shape == (64, 16)
    assert torch.equal(vol[:, 0], out.sigma_raw.clamp(lo, hi))
    assert not torch.equal(vol[:, 0], out.sigma_raw)
    assert torch.equal(vol[:, 1:], out.color_feat)


def test_plenoxels_has_no_volume(tmp_path, data_dir):
    f = tiny_field(tmp_path, data_dir, "plenoxels")
    with pytest.raises(NotImplementedError, match="no colour feature"):
        f.volume(f.features(torch.zeros(4, 3)))


def test_shared_decoder_gives_mlp_and_tensorf_ngps_heads(tmp_path, data_dir):
    """shared_decoder=true: an mlp student can take all of an ngp's decoder, tensorf its colour
    MLP; with today's decoders the shapes clash."""
    ngp = tiny_field(tmp_path, data_dir, "ngp")
    for arch in ("mlp", "tensorf"):  # every parameter in exactly one group
        f = tiny_field(tmp_path, data_dir, arch, shared=True)
        grouped = [id(p) for ps in f.param_groups().values() for p in ps]
        assert sorted(grouped) == sorted(id(p) for p in f.parameters())
    mlp = match_decoders(ngp, tiny_field(tmp_path, data_dir, "mlp", shared=True))
    assert mlp.transferable and not mlp.student_only and len(mlp.copied) == 10
    tensorf = match_decoders(ngp, tiny_field(tmp_path, data_dir, "tensorf", shared=True))
    assert tensorf.transferable and tensorf.student_only == ["basis_mat.weight"]
    assert {n.split(".")[0] for n in tensorf.copied} == {"color_net"}
    assert not match_decoders(ngp, tiny_field(tmp_path, data_dir, "mlp")).transferable


# --- decoder transfer ----------------------------------------------------------------------
def test_decoder_transfer_copies_exactly(distill_cfg, tiny_teacher, caplog):
    with caplog.at_level(logging.INFO, logger="pvdal"):
        m = module_for(distill_cfg, tiny_teacher, "mlp",
                       ["shared_decoder=true", "distill.init_decoder=true"])
    assert "decoder transferred ngp2mlp: density_net, color_net (10 tensors)" in caplog.text
    t = m.teacher.field
    x, d = torch.rand(256, 3) * 1.6 - 0.8, torch.nn.functional.normalize(torch.randn(256, 3), -1)
    with torch.no_grad():
        feat = t.features(x)  # the same features into both decoders, at step 0
        s_out, t_out = m.field.decode(feat, d), t.decode(feat, d)
    assert torch.equal(s_out.sigma_raw, t_out.sigma_raw)
    assert torch.equal(s_out.color_feat, t_out.color_feat)
    assert torch.equal(s_out.rgb, t_out.rgb)


def test_same_arch_transfers_the_decoder_only(distill_cfg, tiny_teacher):
    m = module_for(distill_cfg, tiny_teacher, "ngp", ["distill.init_decoder=auto"])
    t = m.teacher.field
    for name, p in decoder_params(m.field).items():
        assert torch.equal(p, decoder_params(t)[name])
    s_enc, t_enc = dict(m.field.encoding.named_parameters()), dict(t.encoding.named_parameters())
    assert s_enc and all(not torch.equal(p, t_enc[k]) for k, p in s_enc.items())


def test_the_defaults_chosen_by_the_ablation(distill_cfg, tiny_teacher):
    """With no overrides: a same-arch student starts from its teacher's decoder
    (init_decoder=auto), stage 3's RGB loss is eased in over 5 % of the run, and no AL level
    is on (al=none)."""
    m = module_for(distill_cfg, tiny_teacher, "ngp", [])
    t = m.teacher.field
    assert all(torch.equal(p, decoder_params(t)[n]) for n, p in decoder_params(m.field).items())
    assert m.schedule.rgb_ramp == round(0.05 * m.schedule_steps) > 0
    assert m.schedule.rgb_scale(m.schedule.point_end) < 1.0
    al = distill_cfg("ngp").al
    assert [al[k].enabled for k in ("view", "ray", "point")] == [False] * 3


def test_transfer_skipped_with_a_log_line_when_shapes_differ(distill_cfg, tiny_teacher, caplog):
    with caplog.at_level(logging.INFO, logger="pvdal"):
        m = module_for(distill_cfg, tiny_teacher, "mlp", ["distill.init_decoder=auto"])
    assert "decoder not transferred (ngp2mlp): shapes differ: color_net.0.weight" in caplog.text
    assert not torch.equal(decoder_params(m.field)["color_net.0.bias"],
                           decoder_params(m.teacher.field)["color_net.0.bias"])
    with pytest.raises(ConfigError, match=r"^distill\.init_decoder: true, but ngp2mlp cannot"):
        module_for(distill_cfg, tiny_teacher, "mlp", ["distill.init_decoder=true"])
    with pytest.raises(ConfigError, match=r"^distill\.init_decoder: must be auto, true or false"):
        module_for(distill_cfg, tiny_teacher, "mlp", ["distill.init_decoder=maybe"])


def _steps(m: DistillModule, n: int) -> None:
    opt = m.configure_optimizers()["optimizer"]
    m.log = lambda *a, **k: None
    for _ in range(n):
        opt.zero_grad()
        m.training_step(rays(), 0).backward()
        opt.step()


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_decoder_leaves_it_unchanged(freeze, distill_cfg, tiny_teacher):
    m = module_for(distill_cfg, tiny_teacher, "mlp", [
        "shared_decoder=true", "distill.init_decoder=true", f"distill.freeze_decoder={freeze}",
        "distill.stages.feat_end=0", "distill.stages.point_end=0"])  # stage 3: every loss
    dec, trunk = decoder_state(m.field), m.field.trunk[0].weight.detach().clone()
    _steps(m, 3)
    same = [torch.equal(v, decoder_params(m.field)[k]) for k, v in dec.items()]
    assert all(same) if freeze else not any(same)
    assert not torch.equal(trunk, m.field.trunk[0].weight)  # the features still train


# --- losses, stages ------------------------------------------------------------------------
def test_norm_l2_is_the_norm_of_the_whole_difference():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 5.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    assert match_loss(s, t, "norm_l2").item() == pytest.approx(math.sqrt(1 + 4 + 9 + 9))
    assert match_loss(s, t, "mse").item() == pytest.approx(23 / 6)
    assert match_loss(s, t, "l2").item() == pytest.approx((math.sqrt(5) + math.sqrt(18)) / 3)
    mask = torch.tensor([True, False, True])
    assert match_loss(s, t, "norm_l2", mask).item() == pytest.approx(math.sqrt(5))
    with pytest.raises(ConfigError, match=r"^distill\.loss_type: must be mse\|l2\|norm_l2"):
        check_options({"loss_type": "l1"})
    with pytest.raises(ConfigError, match=r"^distill\.align: must be volume or features"):
        check_options({"align": "feature"})


def test_volume_alignment_stages(distill_cfg, tiny_teacher):
    """align=volume: stage 1 matches V(x) only (no projection), stage 2 adds sigma and the
    per-point RGB, stage 3 the rendered RGB."""
    seen = {}
    for stage, (a, b) in {1: (100, 100), 2: (0, 100), 3: (0, 0)}.items():
        m = module_for(distill_cfg, tiny_teacher, "tensorf", [
            "distill.align=volume", f"distill.stages.feat_end={a}",
            f"distill.stages.point_end={b}"])
        assert m.proj is None
        torch.manual_seed(0)
        samples, t = m.teacher_pass(rays()["rays_o"], rays()["rays_d"], m.background)
        losses, _, _ = m.stage_losses(stage, 0, samples, t, m.background)
        seen[stage] = set(losses) - {"reg"}
        if stage == 2:  # the colour term is per-point RGB, not the colour feature
            s_out = m.field(samples.positions, samples.dirs)
            want = match_loss(s_out.rgb, t.field.rgb, m.cfg["loss_type"]) * 2e-3
            assert losses["color"].item() == pytest.approx(want.item(), rel=1e-5)
    assert seen == {1: {"volume"}, 2: {"volume", "sigma", "color"},
                    3: {"volume", "sigma", "color", "rgb"}}
    feats = module_for(distill_cfg, tiny_teacher, "tensorf", ["distill.align=features"])
    assert feats.align == "features" and feats.proj is not None


def test_rgb_ramp_scales_the_rendered_loss(distill_cfg, tiny_teacher):
    """Stage 3's rendered-RGB term is weighted by the ramp: a quarter of its weight at the
    stage's first step of a 4-step ramp, all of it once the ramp is over."""
    m = module_for(distill_cfg, tiny_teacher, "ngp", [
        "distill.stages.feat_end=10", "distill.stages.point_end=10",
        "distill.stages.rgb_ramp=4"])
    torch.manual_seed(0)
    samples, t = m.teacher_pass(rays()["rays_o"], rays()["rays_d"], m.background)
    rgb = {step: m.stage_losses(3, step, samples, t, m.background)[0]["rgb"].item()
           for step in (10, 13, 50)}
    assert rgb[10] == pytest.approx(0.25 * rgb[50], rel=1e-5) and rgb[10] > 0
    assert rgb[13] == pytest.approx(rgb[50], rel=1e-5)


# --- distill=paper -------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", [None, "paper"])
def test_paper_preset_resolves_to_the_original(experiment, tmp_path, data_dir):
    ov = ["distill=paper", "student=mlp"] + ([f"experiment={experiment}"] if experiment else [])
    cfg = compose_cfg("distill", tmp_path / "run", data_dir, ov)
    d = cfg.distill
    sched = StageSchedule.from_config(d.stages.feat_end, d.stages.point_end, 30000)
    assert (sched.feat_end, sched.point_end) == (2000, 5000)
    assert dict(d.weights) == {"feat": 2e-3, "sigma": 2e-3, "color": 2e-3, "rgb": 1.0}
    assert (d.loss_type, d.align, d.init_decoder, d.early_stop_eps) == ("norm_l2", "volume",
                                                                        "auto", 0.0)
    assert list(d.density_clamp) == [-2.0, 7.0] and d.feat_decay == 0.995
    assert d.optim.optimizer._target_ == "torch.optim.AdamW"
    assert list(d.optim.optimizer.betas) == [0.9, 0.99] and d.optim.optimizer.eps == 1e-15
    assert (d.optim.lr_schedule, d.optim.lr_min) == ("cosine", 7e-5)
    assert d.optim.lr.mlp.features == pytest.approx(0.1 * d.optim.lr.ngp.features) == 1e-3
    assert cfg.data.batch_size == 4096 and cfg.shared_decoder is True
    assert (cfg.al.ray.hard_fraction, cfg.al.ray.add_fraction) == (0.1, 0.1)
    assert cfg.al.ray.pool_batches * cfg.al.ray.hard_fraction == 150  # 4096 x 150 rays
    assert cfg.preset == (experiment or "cpu")
    default = compose_cfg("distill", tmp_path / "d", data_dir, ["student=mlp"])
    assert (default.distill.align, default.distill.loss_type, default.data.batch_size) == (
        "volume", "norm_l2", 512)  # the CPU default keeps its own batch (the ablation's choice)


def test_paper_preset_builds_adamw_with_cosine_to_7e5(distill_cfg, tiny_teacher):
    m = module_for(distill_cfg, tiny_teacher, "mlp", ["distill=paper"])
    opt_cfg = m.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["eps"] == 1e-15
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]  # x0.1 for an MLP student
    opt.step()  # no gradients: changes nothing, keeps the scheduler's order check quiet
    m.clock.set_state(progress=0.5)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx((1e-3 + 7e-5) / 2)
    m.clock.set_state(progress=1.0)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([7e-5, 7e-5])


def test_volume_distill_with_decoder_transfer_runs_end_to_end(distill_cfg):
    cfg = distill_cfg("mlp", ["distill.align=volume", "distill.init_decoder=true",
                              "distill.loss_type=norm_l2", "shared_decoder=true",
                              "trainer.max_steps=6", "distill.stages.feat_end=2",
                              "distill.stages.point_end=4"])
    result = distill.run(cfg)
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "metrics.json").read_text())["pair"] == "ngp2mlp" == result["pair"]
    rows = list(csv.DictReader(next(out.rglob("metrics.csv")).open()))
    stages = {float(r["distill/stage"]) for r in rows if r.get("distill/stage")}
    assert stages == {1.0, 2.0, 3.0}
    assert any(r.get("distill/loss_volume") for r in rows)
    assert not any(r.get("distill/loss_feat") for r in rows)
    loaded = load_field(out / "checkpoints" / "last.ckpt")  # the shared-decoder student reloads
    assert loaded.arch["field"]["decoder"] == "shared" and hasattr(loaded.field, "density_net")


# --- random views ----------------------------------------------------------------------------
class ViewRecorder(pl.Callback):
    """Per epoch: the training poses the data holds and the largest camera index trained on."""

    def __init__(self) -> None:
        self.frames: dict[int, torch.Tensor] = {}
        self.max_cam: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        e = int(trainer.current_epoch)
        self.frames[e] = trainer.datamodule.train_frames.c2w.clone()
        self.max_cam[e] = max(self.max_cam.get(e, -1), int(batch["cam"].max()))


def test_random_views_are_new_each_epoch_and_on_the_band(distill_cfg):
    from pvdal.distill.random_views import build_random_views
    from pvdal.tasks.train import build_datamodule

    cfg = distill_cfg("ngp", ["al=none", "distill.random_views.ratio=0.5"])
    dm = build_datamodule(cfg)
    rv = build_random_views(cfg.distill.random_views, dm, False, 0)
    real = dm.data.train.c2w
    n = len(real)
    assert rv.n_views == n  # 0.5: as many random poses as real ones
    a, b = rv.draw(0), rv.draw(1)
    assert torch.equal(a.c2w[:n], real) and len(a) == 2 * n
    assert not torch.allclose(a.c2w[n:], b.c2w[n:])  # fresh each epoch ...
    assert torch.equal(rv.draw(1).c2w, b.c2w)  # ... and the same on every rank / resume
    assert bool(rv.band.contains(a.c2w[n:]).all() and rv.band.contains(b.c2w[n:]).all())
    assert not bool((a.c2w[n:, None] - real[None]).abs().amax((-1, -2)).lt(1e-4).any())
    only = build_random_views({"ratio": 1.0}, dm, False, 0)
    assert len(only.draw(0)) == n and not only.include_real
    assert build_random_views({"ratio": 0.0}, dm, False, 0) is None
    assert build_random_views({"ratio": 0.5}, dm, True, 0) is None  # view AL draws them
    with pytest.raises(ConfigError, match="distill.random_views.ratio"):
        build_random_views({"ratio": 1.5}, dm, False, 0)

    # a run trains on them: each epoch's data holds new poses, and batches reach them
    rec = ViewRecorder()
    distill.run(distill_cfg("ngp", ["al=none", "distill.random_views.ratio=0.5"]), [rec])
    assert sorted(rec.frames) == [0, 1]  # 8 steps, 4 per epoch
    f0, f1 = rec.frames[0], rec.frames[1]
    assert torch.equal(f0[:n], real) and torch.equal(f1[:n], real)
    assert not torch.allclose(f0[n:], f1[n:])
    assert max(rec.max_cam.values()) >= n  # rays of random views were trained on
