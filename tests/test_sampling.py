"""Packed samples, early ray termination and distance-aware steps (the one render path)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from pvdal.fields.base import FieldOutput, RadianceField
from pvdal.io.checkpoint import load_field
from pvdal.render.march import default_step_size, march_rays
from pvdal.render.rays import ray_aabb_intersect
from pvdal.render.renderer import render_rays, render_samples, visible_samples
from pvdal.render.scene import SceneSpec
from pvdal.render.volrend import composite, composite_packed, packed_weights, render_weights
from tests.conftest import ROOT


class Wall(RadianceField):
    """Analytic field: an opaque slab z in [-0.2, 0] (raw density 6), empty elsewhere."""

    feature_dim = 3

    def features(self, x: Tensor) -> Tensor:
        return x

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        inside = (feat[:, 2] <= 0.0) & (feat[:, 2] >= -0.2)
        raw = torch.where(inside, torch.full_like(feat[:, 0], 6.0), torch.full_like(feat[:, 0],
                                                                                     -20.0))
        return FieldOutput(raw, None, torch.sigmoid(feat * 3.0))


def _rays(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = torch.tensor([[0.0, 0.0, 2.5]]) + 0.2 * torch.randn(n, 3, generator=g)
    d = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, -1.0]])
                                      + 0.25 * torch.randn(n, 3, generator=g), dim=-1)
    return o, d


def test_packed_rendering_equals_dense_on_the_same_samples():
    o, d = _rays(96)
    s = march_rays(o, d, SceneSpec(), None, n_samples=64, perturb=True)
    g = torch.Generator().manual_seed(1)
    sig = (torch.rand(len(s), generator=g) * 30).requires_grad_()
    rgb = torch.rand(len(s), 3, generator=g).requires_grad_()
    bg = torch.rand(s.n_rays, 3, generator=g)
    w_d, t_d = render_weights(s.scatter(sig), s.deltas)
    ref = composite(w_d, s.scatter(rgb), s.t_mid, bg)
    w_p, t_p = packed_weights(sig, s.starts, s.ends, s.ray_indices, s.n_rays)
    out = composite_packed(w_p, rgb, s.mid, s.ray_indices, s.n_rays, bg)
    torch.testing.assert_close(w_p, w_d[s.mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(t_p, t_d[s.mask], atol=1e-6, rtol=0)
    for k in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=1e-5)
    seed = torch.rand(s.n_rays, 3, generator=g)
    grads_ref = torch.autograd.grad((ref["rgb"] * seed).sum(), (sig, rgb))
    grads = torch.autograd.grad((out["rgb"] * seed).sum(), (sig, rgb))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert 0 < len(s) < s.mask.numel()  # rays that miss the box hold no samples


def test_early_termination_drops_what_is_behind_an_opaque_wall():
    field = Wall()
    o, d = _rays(64, seed=2)
    s = march_rays(o, d, SceneSpec(), None, n_samples=128)
    kept = visible_samples(field, s, eps=1e-4)
    z_all, z_kept = s.positions[:, 2], kept.positions[:, 2]
    assert (z_all < -0.1).any() and not (z_kept < -0.1).any()  # nothing deep inside or behind
    assert torch.equal(z_all[z_all > 0.0].sort().values, z_kept[z_kept > 0.0].sort().values)
    full = render_samples(field, s, torch.ones(3))
    cut = render_samples(field, s, torch.ones(3), early_stop_eps=1e-4)
    assert len(cut.samples) < len(full.samples)
    assert (cut.rgb - full.rgb).abs().max() < 1e-4


def test_early_termination_keeps_a_trained_field_within_1e4(tiny_teacher):
    lf = load_field(tiny_teacher)
    o, d = _rays(256, seed=3)
    bg = torch.ones(3)
    torch.manual_seed(0)
    ref = render_rays(lf.field, o, d, lf.scene, lf.grid, lf.n_samples, bg, perturb=True)
    for grad in (True, False):  # training (no-grad density pass) and rendering paths
        torch.manual_seed(0)
        with torch.set_grad_enabled(grad):
            out = render_rays(lf.field, o, d, lf.scene, lf.grid, lf.n_samples, bg, perturb=True,
                              early_stop_eps=1e-4)
        assert len(out.samples) <= len(ref.samples)
        assert (out.rgb.detach() - ref.rgb.detach()).abs().max() <= 1e-4 + 1e-6


class SyncCounter:
    """Counts host reads of tensor values (``.item()``, ``bool``/``float``/``int``, ``tolist``):
    on CUDA each one waits for the device."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __init__(self, monkeypatch) -> None:
        self.count, self.active = 0, False
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def counted(t, *a, _orig=orig, **k):
                if self.active:
                    self.count += 1
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def wrap(self, cls, monkeypatch, per_step: list) -> None:
        orig = cls.training_step

        def step(module, batch, batch_idx):
            logging = module.log_step()
            self.count, self.active = 0, True
            try:
                return orig(module, batch, batch_idx)
            finally:
                self.active = False
                per_step.append((logging, self.count))

        monkeypatch.setattr(cls, "training_step", step)


def test_no_host_sync_in_training_step_on_non_logging_steps(tiny_cfg, distill_cfg, monkeypatch):
    from pvdal.modules.base import RadianceModule
    from pvdal.modules.distill_module import DistillModule
    from pvdal.modules.field_module import FieldModule
    from pvdal.tasks import distill, train

    monkeypatch.setattr(RadianceModule, "defer_nan_check", True)  # as on CUDA
    counter = SyncCounter(monkeypatch)
    seen: dict[str, list] = {"train": [], "distill": []}
    counter.wrap(FieldModule, monkeypatch, seen["train"])
    counter.wrap(DistillModule, monkeypatch, seen["distill"])
    logs = ["trainer.log_every_n_steps=4", "trainer.max_steps=8"]
    train.run(tiny_cfg("train", logs))
    distill.run(distill_cfg("ngp", [*logs, "al=full", "distill.stages.feat_end=2",
                                    "distill.stages.point_end=4"]))
    for task, steps in seen.items():
        quiet = [n for logging, n in steps if not logging]
        assert quiet and all(n == 0 for n in quiet), (task, steps)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_deferred_nan_check_acts_at_the_next_logging_step(tiny_cfg, policy, monkeypatch, caplog):
    from pvdal.modules.base import RadianceModule
    from pvdal.tasks import train
    from pvdal.utils.errors import PvdalError
    from tests.test_reliability import PoisonLoss

    monkeypatch.setattr(RadianceModule, "defer_nan_check", True)
    cfg = tiny_cfg("train", ["trainer.max_steps=8", "trainer.log_every_n_steps=4",
                             f"nan_policy={policy}"])
    if policy == "stop":  # poisoned at step 5: found on the logging step 7 (8th step)
        with pytest.raises(PvdalError, match=r"step 5.*not finite on 2 step"):
            train.run(cfg, [PoisonLoss(5)])
        return
    with caplog.at_level("WARNING", logger="pvdal"):
        train.run(cfg, [PoisonLoss(5)])
    msgs = [r.getMessage() for r in caplog.records if "gradients were zeroed" in r.getMessage()]
    assert msgs and msgs[0].startswith("step 5: non-finite loss on 2 step(s)")


def test_unbounded_steps_grow_with_distance_and_never_skip_a_cell():
    """Past the unit box samples are equally spaced in contracted (field) space, at the bounded
    scene's step (``default_step_size``): below one cell of the default 64^3 grid (so the grid
    sees every cell a ray crosses), while the world step grows with distance (the documented
    law, march.py), and a ray gets as many samples as its field path is long. Cameras as the
    transforms.json parser places them (radius 2.5, outside the box), looking through the box,
    past it, or straight out."""
    spec = SceneSpec(contraction=True, near=0.05, far=60.0)
    g = torch.Generator().manual_seed(4)
    o = 2.5 * torch.nn.functional.normalize(torch.randn(256, 3, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(256, 3, generator=g) - 0.5 * o, dim=-1)
    s = march_rays(o, d, spec, None, n_samples=128)
    t0, t1, valid = s.t_starts, s.t_ends, s.mask  # every candidate is kept without a grid
    edges = torch.cat([t0, t1[:, -1:]], dim=1)
    x = spec.to_field(o[:, None] + edges[..., None] * d[:, None])
    field_step = (x[:, 1:] - x[:, :-1]).norm(dim=-1)  # [n_rays, slots]
    t_in, t_exit = ray_aabb_intersect(o, d, torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    hit = t_exit > t_in
    t_exit = torch.where(hit, t_exit, spec.near)
    outer = t0 >= t_exit[:, None] - 1e-5
    assert field_step[valid].max() <= 2.0 / 64  # never more than one grid cell, anywhere
    step = default_step_size(128)
    n_valid = valid.sum(dim=1)
    for r in range(256):  # the bounded step (to the table's interpolation); the last is the rest
        fs = field_step[r, : n_valid[r] - 1]
        assert ((fs / step - 1.0).abs() < 0.1).float().mean() > 0.9, r
        assert valid[r, : n_valid[r]].all(), r  # the ray's samples come first, then unused slots
    path = field_step.where(valid, 0.0).sum(dim=1)  # a longer field path, more samples
    assert torch.corrcoef(torch.stack([path, n_valid.float()]))[0, 1] > 0.99
    assert n_valid.float().mean() < 0.75 * s.mask.shape[1]
    dt = t1 - t0
    assert (~outer & hit[:, None] & valid).any() and (outer & valid).any()
    last = dt.gather(1, (n_valid - 2).clamp_min(0)[:, None])[:, 0]  # the last full step
    assert (last > 20 * dt[:, 0]).all()  # the world step near ``far`` is much longer
    assert (dt[valid] > 0).all()


def test_target_samples_defaults(tmp_path, data_dir):
    """train.py: ngp's CPU default adapts rays to 8192 samples a step, trainer=gpu's 2^18 wins,
    the other arches keep fixed batches unless asked."""
    from tests.conftest import compose_cfg

    def target(*ov: str):
        return compose_cfg("train", tmp_path, data_dir, list(ov)).render.target_samples

    assert target("arch=ngp") == 8192
    assert target("arch=ngp", "trainer=gpu") == 1 << 18
    assert target("arch=tensorf") is None
    assert target("arch=tensorf", "render.target_samples=4096") == 4096


def test_rays_per_batch_follow_a_target_number_of_samples(tiny_cfg):
    """render.target_samples: on logging steps the batch is rescaled to that many samples."""
    import csv

    from pvdal.tasks import train

    cfg = tiny_cfg("train", ["render.target_samples=3000", "trainer.log_every_n_steps=2"])
    train.run(cfg)
    rows = []
    for f in (ROOT / cfg.paths.output_dir).glob("csv/**/metrics.csv"):
        with f.open() as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("train/rays_per_batch")]
    assert rows
    for r in rows:  # each logged batch size = target / that step's samples per ray
        want = 3000 / float(r["train/samples_per_ray"])
        got = float(r["train/rays_per_batch"])
        assert abs(got - min(max(want, 1), 16 * 128)) <= 1.0, r
    assert {float(r["train/rays_per_batch"]) for r in rows} != {128.0}
