"""The four architectures behind ``RadianceField``: shapes, gradients, param groups, checkpoint
round trips after upsampling, field-preserving upsample / prune / shrink, and a tiny fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pvdal.fields.base import COLOR_FEATURE_DIM, RadianceField
from pvdal.fields.mlp import MLPField

CONF = Path(__file__).resolve().parents[1] / "conf" / "arch"
ARCHS = ["ngp", "mlp", "plenoxels", "tensorf"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared CPU thread barriers cost a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(name: str, **over) -> RadianceField:
    """The arch's field at its ``tiny:`` preset (what ``preset=tiny`` merges), plus ``over``."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    return instantiate(OmegaConf.merge(cfg.field, cfg.tiny, over))


def points(n: int, seed: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, generator=g) * 2 - 1) * scale
    return x, F.normalize(torch.randn(n, 3, generator=g), dim=-1)


def bump_tensorf(f, v: float = 1.6) -> tuple[int, int]:
    """Density above 0.1 only where every axis lies in grid points lo..hi (sigma_raw ~ -0.4)
    and well below it elsewhere; returns (lo, hi)."""
    n = f.resolution[0]
    lo, hi = n // 4, n - 1 - n // 4
    with torch.no_grad():
        for p, ln in zip(f.density_enc.planes, f.density_enc.lines):
            p.fill_(1.0)
            ln.zero_()
            ln[..., lo:hi + 1, :] = v
    return lo, hi


def smooth_(params, seed: int = 0) -> None:
    """Fill [1, C, H, W] tensors with smooth (low-frequency) values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            _, c, h, w = p.shape
            yy = torch.linspace(-1, 1, h)[:, None]
            xx = torch.linspace(-1, 1, w)[None, :]
            a, b, ph = (torch.rand(3, c, 1, 1, generator=g) * 2).unbind(0)
            p.copy_((torch.sin(a * yy + b * xx + ph))[None])


def grow(f, name: str) -> None:
    """Run the hooks that change shapes (upsample, prune / shrink)."""
    if name == "plenoxels":
        with torch.no_grad():
            f.table[: f.n_rows // 3, 0] = 3.0  # some occupied voxels survive the pruning
        assert f.on_step(max(f.upsample_steps[0], *f.prune_steps), None)
        assert f.resolution == f.resolutions[1]
    elif name == "tensorf":
        bump_tensorf(f)
        shrink, up = min(f.shrink_steps), f.upsample_steps[0]
        for step in sorted({shrink, up}):
            assert f.on_step(step, None)
        assert f.shrunk and f.stage == 1


@pytest.mark.parametrize("name", ARCHS)
def test_default_config(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.name == name and set(cfg.lr) == {"features", "decoder"} and "lr_decay" in cfg
    assert cfg.field.density_clamp is None and cfg.optimizer._partial_
    # a preset's _arch block holds arch-level keys (pvdal/utils/presets.py)
    assert set(cfg.paper) - {"_arch"} <= set(cfg.field) and set(cfg.tiny) <= set(cfg.field)
    assert set(cfg.paper.get("_arch", {})) <= set(cfg)
    f = instantiate(cfg.field)
    assert isinstance(f, RadianceField) and f.feature_dim > 0


@pytest.mark.parametrize("name", ARCHS)
def test_shapes(name):
    f = make(name)
    x, d = points(64)
    feat = f.features(x)
    out = f.decode(feat, d)
    assert feat.shape == (64, f.feature_dim)
    assert out.sigma_raw.shape == (64,) and out.rgb.shape == (64, 3)
    assert ((out.rgb >= 0) & (out.rgb <= 1)).all()
    if f.has_color_feature:
        assert out.color_feat.shape == (64, COLOR_FEATURE_DIM)
    else:
        assert out.color_feat is None
    torch.testing.assert_close(f.density_raw(feat), out.sigma_raw)
    assert f.density(x).shape == (64,) and (f.density(x) > 0).all()
    empty = f(x[:0], d[:0])  # every sample skipped by the occupancy grid
    assert empty.sigma_raw.shape == (0,) and empty.rgb.shape == (0, 3)


@pytest.mark.parametrize("name", ARCHS)
def test_gradients_reach_both_halves(name):
    f = make(name)
    x, d = points(512)
    out = f(x, d)
    loss = out.rgb.square().sum() + out.sigma_raw.square().sum()
    if out.color_feat is not None:
        loss = loss + out.color_feat.sum()
    loss.backward()
    groups = f.param_groups()
    if name == "plenoxels":
        assert groups["decoder"] == []
    else:
        assert groups["decoder"]
    for group, params in groups.items():
        for p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, (group, tuple(p.shape))


@pytest.mark.parametrize("name", ARCHS)
def test_param_groups_cover_every_parameter_once(name):
    f = make(name)
    for stage in range(2):
        groups = f.param_groups()
        ids = [id(p) for ps in groups.values() for p in ps]
        assert set(groups) == {"features", "decoder"}
        assert len(ids) == len(set(ids)) == len(list(f.parameters()))
        assert set(ids) == {id(p) for p in f.parameters()}
        if stage == 0:
            grow(f, name)


@pytest.mark.parametrize("name", ARCHS)
def test_checkpoint_round_trip_after_upsample(name):
    torch.manual_seed(0)
    f = make(name)
    grow(f, name)
    extra = json.loads(json.dumps(f.extra_state_for_checkpoint()))
    sd = f.state_dict()
    torch.manual_seed(1)
    g = make(name)
    g.prepare_load(extra)
    g.load_state_dict(sd, strict=True)
    assert g.extra_state_for_checkpoint() == extra
    x, d = points(256, scale=1.1)
    a, b = f(x, d), g(x, d)
    torch.testing.assert_close(a.sigma_raw, b.sigma_raw, rtol=0, atol=0)
    torch.testing.assert_close(a.rgb, b.rgb, rtol=0, atol=0)
    if name == "plenoxels":  # derived row layout rebuilt: the TV sees the same voxels
        assert torch.equal(f.row_vertex, g.row_vertex)
    if name == "tensorf":
        assert g.stage == 1 and g.shrunk and torch.equal(f.aabb, g.aabb)


def test_plenoxels_doubling_upsample_keeps_field_exactly():
    torch.manual_seed(0)
    f = make("plenoxels")
    with torch.no_grad():
        f.table.normal_(0, 0.5)
        f.table[f.n_rows // 10:, 0] -= 2.0  # only the first voxels (near x = -1) are dense
    assert f.prune() and (f.index < 0).any()
    x, d = points(2048, seed=3)
    before = f(x, d)
    R = f.resolution
    f.upsample(2 * R)
    after = f(x, d)
    assert f.resolution == 2 * R and f.n_rows < (2 * R + 1) ** 3
    torch.testing.assert_close(after.sigma_raw, before.sigma_raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.rgb, before.rgb, atol=1e-5, rtol=1e-5)


def test_plenoxels_prune_keeps_dense_and_removes_empty():
    torch.manual_seed(0)
    f = make("plenoxels")
    V = f.resolution + 1
    with torch.no_grad():
        f.table[:, 0] = torch.randn(f.n_rows) * 2 - 5.0  # ~2% above log(threshold) = -0.69
        f.table[:, 1:].normal_()
    above = f.activate(f.table[:, 0]) >= f.prune_threshold
    verts_above = f.row_vertex[above]
    values_above = f.table[above].detach().clone()
    v = f.row_vertex  # rows are in lattice order before any pruning
    ijk = torch.stack([v // (V * V), (v // V) % V, v % V], -1)
    ijk_above = ijk[above]
    near = ((ijk[:, None, :] - ijk_above[None]).abs().amax(-1) <= 1).any(1)
    assert f.prune()
    assert (f.index[verts_above] >= 0).all()  # never removes a voxel above the threshold
    torch.testing.assert_close(f.table[f.index[verts_above].long()], values_above)
    assert torch.equal(f.index >= 0, near)  # removes exactly the empty neighbourhoods
    assert not f.prune()  # nothing left to remove
    x, d = points(256)
    assert torch.isfinite(f(x, d).sigma_raw).all()


def test_tensorf_upsample_keeps_field():
    torch.manual_seed(0)
    f = make("tensorf")
    smooth_(f.param_groups()["features"])
    x, d = points(1024, seed=4)
    before = f(x, d)
    new = [r + d for r, d in zip(f.resolution, (9, 11, 15))]
    f.upsample(new)
    after = f(x, d)
    assert f.resolution == new
    torch.testing.assert_close(after.sigma_raw, before.sigma_raw, atol=5e-2, rtol=0)
    torch.testing.assert_close(after.rgb, before.rgb, atol=1e-2, rtol=0)
    assert (after.sigma_raw - before.sigma_raw).abs().mean() < 1e-2


def test_tensorf_shrink_keeps_values_inside_box():
    torch.manual_seed(0)
    f = make("tensorf")
    smooth_(f.app_enc.planes)
    n = f.resolution[0]
    lo_i, hi_i = bump_tensorf(f)  # occupied lo_i..hi_i: the box is one grid point wider
    x, d = points(4096, seed=5)
    before = f(x, d)
    assert f.shrink() and f.shrunk
    lo, hi = -1 + 2 * (lo_i - 1) / (n - 1), -1 + 2 * (hi_i + 1) / (n - 1)
    torch.testing.assert_close(f.aabb, torch.tensor([[lo] * 3, [hi] * 3]))
    assert f.resolution == [hi_i - lo_i + 3] * 3
    after = f(x, d)
    inside = ((x >= lo) & (x <= hi)).all(-1)
    torch.testing.assert_close(after.sigma_raw[inside], before.sigma_raw[inside], atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(after.rgb[inside], before.rgb[inside], atol=1e-5, rtol=1e-5)
    assert (after.sigma_raw[~inside] == f.density_shift).all()  # outside: empty
    assert f.regularizer() is not None


@pytest.mark.parametrize("name", ARCHS)
def test_tiny_fit_lowers_loss(name):
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    f = make(name)
    x, d = points(512, seed=6)
    target_sigma = 2.0 * torch.sin(2 * x[:, 0]) * torch.cos(2 * x[:, 1])
    target_rgb = 0.5 + 0.4 * torch.sin(2 * x + d)
    groups = f.param_groups()
    opt = instantiate(cfg.optimizer)([{"params": groups[k], "lr": cfg.lr[k]} for k in groups])

    def loss_fn():
        out = f(x, d)
        loss = 0.1 * F.mse_loss(out.sigma_raw, target_sigma) + F.mse_loss(out.rgb, target_rgb)
        reg = f.regularizer(x)
        return loss if reg is None else loss + reg

    first = float(loss_fn().detach())
    for _ in range(40):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert float(loss_fn().detach()) < 0.95 * first


def test_mlp_sh_directions_and_skip():
    f = make("mlp", dir_encoding="sh", sh_degree=4, depth=4, skip=2)
    assert f.trunk[2].in_features == 32 + f.pos_encoding.out_dim
    x, d = points(32)
    out = f(x, d)
    assert out.rgb.shape == (32, 3) and out.color_feat.shape == (32, COLOR_FEATURE_DIM)
    with pytest.raises(ValueError, match="dir_encoding"):
        MLPField(dir_encoding="nope")
