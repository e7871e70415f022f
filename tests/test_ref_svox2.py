"""experiment=ref_svox2: svox2's synthetic-scene recipe (opt/configs/syn.json + opt/opt.py) on
pvdal's svox2 field (issue #20), and the svox2 training pieces of pvdal/fields/svox2_native.py."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from pvdal.fields.svox2_native import Svox2NativeField
from pvdal.modules.base import FIELD_EXTRA
from pvdal.optim.svox2_rmsprop import Svox2RMSprop
from pvdal.tasks import train
from pvdal.utils.presets import apply_preset
from tests.conftest import TINY_DATA, TINY_RUN, compose_cfg

REF = ["experiment=ref_svox2"]
# tiny sizes; the recipe's 5000 rays x 443 samples would take seconds a step
SMALL = [*TINY_DATA, *TINY_RUN, "preset=tiny"]


def ref_cfg(tmp_path, data_dir, overrides=()):
    return compose_cfg("train", tmp_path / "run", data_dir, [*REF, *overrides])


def test_recipe_composes_with_svox2_values(tmp_path, data_dir):
    cfg = ref_cfg(tmp_path, data_dir)
    arch, field = cfg.arch, cfg.arch.field
    assert arch.name == "svox2" and field._target_.endswith("Svox2NativeField")
    assert arch.optimizer._target_.endswith("Svox2RMSprop")
    assert arch.optimizer.beta == 0.95 and arch.optimizer.eps == 1e-8
    assert arch.lr.density == 30.0 and arch.lr.sh == 1e-2
    n_iters = cfg.trainer.max_steps
    assert n_iters == 128000
    frac = n_iters / 250000  # lr_*_decay_steps
    assert arch.lr_decay.density == pytest.approx((5e-2 / 3e1) ** frac, rel=1e-5)
    assert arch.lr_decay.sh == pytest.approx((5e-6 / 1e-2) ** frac, rel=1e-5)
    assert list(arch.lr_delay.density) == [15000 / n_iters, 1e-2]
    assert field.upsample_steps[0] / n_iters == pytest.approx(0.3)  # upsamp_every 38400
    assert field.split_groups and field.sphere_init and field.init_density == 0.1
    assert field.basis_dim == 9 and field.tv_density == 1e-5 and field.tv_sh == 1e-3
    assert field.tv_sparsity == field.tv_sh_sparsity == 0.01 and field.tv_early_only
    assert cfg.data.batch_size == 1024 and not cfg.render.random_background
    # half a voxel of the final grid over the unit box's diagonal
    final = field.upsample_reso[-1][0]
    assert cfg.render.n_samples == round(2 * math.sqrt(3) * final)


class Record(pl.Callback):
    def __init__(self) -> None:
        self.groups: list[tuple[str, float, int]] = []
        self.before: dict[str, torch.Tensor] = {}
        self.optimizer = None

    def on_train_start(self, trainer, pl_module) -> None:
        opt = trainer.optimizers[0]
        self.optimizer = type(opt)
        self.groups = [(g["name"], g["initial_lr"], len(g["params"])) for g in opt.param_groups]
        f = pl_module.field
        self.before = {"density": f.density_data.detach().clone(),
                       "sh": f.sh_data.detach().clone()}


def test_two_steps_train_density_and_sh_in_own_groups(tmp_path, data_dir):
    cfg = ref_cfg(tmp_path, data_dir, [*SMALL, "trainer.max_steps=2",
                                       "arch.tiny.upsample_steps=[100]"])
    rec = Record()
    train.run(cfg, [rec])
    assert rec.optimizer is Svox2RMSprop
    assert rec.groups == [("density", 30.0, 1), ("sh", 1e-2, 1)]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["state_dict"]
    assert not torch.equal(state["field.density_data"], rec.before["density"])
    assert not torch.equal(state["field.sh_data"], rec.before["sh"])


def test_upsample_turns_tv_off_and_checkpoint_reloads(tmp_path, data_dir):
    cfg = ref_cfg(tmp_path, data_dir, [*SMALL, "trainer.max_steps=6"])  # upsample at step 4
    train.run(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    extra = ckpt["state_dict"][FIELD_EXTRA]
    field = instantiate(apply_preset(cfg.copy()).arch.field)
    assert field.regularizer() is not None  # TV during the first stage
    assert extra["stage"] == 1 and extra["reso"] == [16, 16, 16]
    field.prepare_load(extra)
    sd = {k[len("field."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("field.")}
    field.load_state_dict(sd)
    assert field.reso == [16, 16, 16] and field.regularizer() is None  # tv_early_only


def svox2_field(**kw) -> Svox2NativeField:
    return Svox2NativeField(**{"reso": [8, 8, 8], "n_rows": 0, "dense": True, **kw})


def test_defaults_unchanged():
    f = svox2_field()
    assert set(f.param_groups()) == {"features", "decoder"}
    assert f.extra_state_for_checkpoint() == {} and f.regularizer() is None
    assert not f.on_step(10**6) and f.reso == [8, 8, 8] and f.density_data.shape[0] == 512


def test_sphere_init_is_svox2s():
    f = svox2_field(sphere_init=True, init_density=0.1)
    R = 8
    i = torch.arange(R) * 2.0 / R - 1.0  # svox2: (i - 0.5) * 2 / R + 1 / R - 1
    pts = torch.stack(torch.meshgrid(i, i, i, indexing="ij"), -1)
    want = (pts.norm(dim=-1) <= 1 + math.sqrt(3) / R)
    assert torch.equal(f.links >= 0, want)
    assert f.density_data.shape[0] == int(want.sum())
    assert torch.all(f.density_data == 0.1)
    g = svox2_field()  # a checkpoint of the sphere-bound layout loads into a fresh field
    g.prepare_load(f.extra_state_for_checkpoint())
    g.load_state_dict(f.state_dict())
    assert torch.equal(g.links, f.links) and torch.equal(g.density_data, f.density_data)


def test_resample_keeps_the_field_and_prunes_empty_space():
    f = svox2_field(upsample_reso=[16], upsample_steps=[3], prune_dilate=0)
    with torch.no_grad():
        x = torch.linspace(0, 1, 8)
        d = torch.zeros(8, 8, 8)
        d[2:6, 2:6, 2:6] = 50.0  # a dense block, empty elsewhere
        f.density_data.copy_(d.view(-1, 1))
        f.sh_data.copy_(x.repeat(64)[:, None].expand(-1, 27))
    w = torch.rand(2000, 3) * 0.6 - 0.3
    before = f.features_world(w)[:, 0]
    assert f.on_step(3) and f.stage == 1 and f.reso == [16, 16, 16]
    kept = int((f.links >= 0).sum())
    assert 0 < kept < 16**3 and f.density_data.shape[0] == kept
    after = f.features_world(w)[:, 0]
    # svox2 resamples at the new voxel centres: a trilinear field is kept up to resampling error
    assert (after - before).abs().mean() < 0.15 * before.abs().mean()
    assert not f.on_step(4)


def test_rmsprop_is_svox2s_rule():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = Svox2RMSprop([p], lr=0.5, beta=0.95, eps=1e-8)
    g1 = torch.tensor([[1.0, -2.0], [0.0, 0.0], [3.0, 0.0]])
    p.grad = g1.clone()
    opt.step()
    # first step: rms = g^2, so each touched entry moves by lr * sign(g) (zero g: no move)
    want = -0.5 * torch.sign(g1)
    assert torch.allclose(p.detach(), want, atol=1e-6)
    g2 = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    p.grad = g2.clone()
    opt.step()
    rms = opt.state[p]["rms"]
    # row 0 touched: lerp; row 2 untouched: its rms stays (svox2's sparse indexer)
    assert torch.allclose(rms[0], 0.95 * g1[0] ** 2 + 0.05 * g2[0] ** 2)
    assert torch.equal(rms[2], g1[2] ** 2) and torch.equal(p.detach()[2], want[2])
    assert torch.allclose(p.detach()[0], want[0] - 0.5 * g2[0] / (rms[0].sqrt() + 1e-8))


def test_tv_matches_svox2_formula():
    f = svox2_field(tv_density=1.0, tv_sparsity=1.0, tv_sh=0.0)
    with torch.no_grad():
        f.density_data.copy_(torch.rand(512, 1))
    d = f.density_data.detach().view(8, 8, 8)
    dx = torch.zeros_like(d)
    dy, dz = dx.clone(), dx.clone()
    dx[:-1] = d[1:] - d[:-1]
    dy[:, :-1] = d[:, 1:] - d[:, :-1]
    dz[:, :, :-1] = d[:, :, 1:] - d[:, :, :-1]
    want = torch.sqrt(dx**2 + dy**2 + dz**2 + 1e-9).mean()
    assert torch.allclose(f.regularizer(), want, rtol=1e-5)


def test_bad_svox2_options_say_which_key():
    """Adam's betas left on Svox2RMSprop, or upsample sizes without steps: one clear error."""
    p = torch.nn.Parameter(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="optimizer.betas to null"):
        Svox2RMSprop([p], betas=[0.9, 0.99])
    with pytest.raises(ValueError, match="one upsample_steps entry per upsample_reso"):
        Svox2NativeField(reso=[4, 4, 4], n_rows=64, dense=True, upsample_reso=[[8, 8, 8]],
                         upsample_steps=[])
