"""Packed samples, early ray termination and distance-aware steps (the one render path)."""

from __future__ import annotations

import torch
from torch import Tensor

from pvdal.fields.base import FieldOutput, RadianceField
from pvdal.io.checkpoint import load_field
from pvdal.render.march import march_rays
from pvdal.render.renderer import render_rays, render_samples, visible_samples
from pvdal.render.scene import SceneSpec
from pvdal.render.volrend import composite, composite_packed, packed_weights, render_weights


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
