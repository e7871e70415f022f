"""Rays, marching, volume rendering and the occupancy grid against hand computations."""

import math

import pytest
import torch

from pvdal.render.march import march_rays
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.rays import distort, image_rays, pixel_rays, ray_aabb_intersect, undistort
from pvdal.render.scene import SceneSpec
from pvdal.render.volrend import composite, render_weights


def test_rays_match_hand_computed_camera():
    # camera at (0, 0, 4) looking down -z (identity rotation), 4x4 image, focal 2
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4]])
    K = torch.tensor([2.0, 2.0, 2.0, 2.0])
    o, d = image_rays(c2w, K, 4, 4)
    assert o.shape == (16, 3) and torch.allclose(o, torch.tensor([0.0, 0, 4]).expand(16, 3))
    # pixel (row 0, col 3): x = (3.5 - 2) / 2 = 0.75, y = -(0.5 - 2) / 2 = 0.75
    expect = torch.tensor([0.75, 0.75, -1.0])
    assert torch.allclose(d[3], expect / expect.norm(), atol=1e-6)
    assert torch.allclose(d.norm(dim=-1), torch.ones(16))


def test_rotated_camera_and_distortion_roundtrip():
    ang = math.pi / 2  # rotate about y: camera looks down -x
    R = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0,
                                                                      math.cos(ang)]])
    c2w = torch.cat([R, torch.tensor([[1.0], [2.0], [3.0]])], 1)[None]
    o, d = pixel_rays(c2w, torch.tensor([[10.0, 10.0, 5.0, 5.0]]), torch.tensor([4.5]),
                      torch.tensor([4.5]))
    assert torch.allclose(d[0], torch.tensor([-1.0, 0, 0]), atol=1e-6)
    assert torch.allclose(o[0], torch.tensor([1.0, 2.0, 3.0]))
    dist = torch.tensor([[0.1, -0.05, 0.01, 0.02]]).expand(50, 4)
    x, y = torch.rand(50) - 0.5, torch.rand(50) - 0.5
    xd, yd = distort(x, y, dist)
    xu, yu = undistort(xd, yd, dist)
    assert torch.allclose(xu, x, atol=1e-5) and torch.allclose(yu, y, atol=1e-5)


def test_ray_aabb_intersect():
    o = torch.tensor([[0.0, 0, 5], [3.0, 3, 5]])
    d = torch.tensor([[0.0, 0, -1], [0.0, 0, -1]])
    tn, tf = ray_aabb_intersect(o, d, torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    assert torch.allclose(tn[0], torch.tensor(4.0)) and torch.allclose(tf[0], torch.tensor(6.0))
    assert tf[1] < tn[1]  # miss


def test_volume_rendering_matches_naive_loop():
    torch.manual_seed(0)
    sig, dt = torch.rand(5, 7) * 3, torch.rand(5, 7) * 0.3
    rgb = torch.rand(5, 7, 3)
    t_mid = torch.cumsum(dt, -1)
    w, _ = render_weights(sig, dt)
    out = composite(w, rgb, t_mid, torch.tensor([1.0, 1.0, 1.0]))
    for r in range(5):
        T, c, acc = 1.0, torch.zeros(3), 0.0
        for s in range(7):
            a = 1 - math.exp(-float(sig[r, s] * dt[r, s]))
            c += T * a * rgb[r, s]
            acc += T * a
            T *= 1 - a
        assert torch.allclose(out["rgb"][r], c + (1 - acc), atol=1e-5)
        assert abs(float(out["opacity"][r]) - acc) < 1e-5


def _sphere_density(x):
    return torch.where(x.norm(dim=-1) < 0.5, torch.full_like(x[:, 0], 50.0),
                       torch.zeros_like(x[:, 0]))


def test_occupancy_grid_keeps_occupied_and_culls_empty():
    grid = OccupancyGrid(resolution=16, warmup_steps=100, update_every=1)
    grid.update(0, _sphere_density, step_size=0.02)
    centers = grid.cell_centers()
    # a cell whose whole extent lies inside the sphere is always kept
    inner = centers.norm(dim=-1) < 0.5 - math.sqrt(3) / 16
    assert grid.binary[inner].all()
    far = centers.norm(dim=-1) > 0.5 + math.sqrt(3) / 16
    assert not grid.binary[far].any()
    # state survives a state_dict round trip, binary rebuilt
    g2 = OccupancyGrid(resolution=16)
    g2.load_state_dict(grid.state_dict())
    assert torch.equal(g2.binary, grid.binary)


def test_march_skips_empty_space():
    grid = OccupancyGrid(resolution=16, warmup_steps=100, update_every=1)
    grid.update(0, _sphere_density, step_size=0.02)
    o = torch.tensor([[0.0, 0, 3], [0.9, 0.9, 3]])
    d = torch.tensor([[0.0, 0, -1], [0.0, 0, -1]])
    s = march_rays(o, d, SceneSpec(), grid, n_samples=128)
    assert s.mask[0].any() and not s.mask[1].any()
    assert (s.positions.norm(dim=-1) < 0.5 + 2 * math.sqrt(3) / 16).all()
    full = march_rays(o, d, SceneSpec(), None, n_samples=128)
    assert full.mask.sum() > s.mask.sum()


def test_contracted_scene_maps_into_unit_box():
    spec = SceneSpec(contraction=True, near=0.1, far=100.0)
    x = torch.tensor([[0.5, 0, 0], [10.0, 0, 0], [1e4, 2e4, 0]])
    y = spec.to_field(x)
    assert (y.abs() <= 1).all() and torch.allclose(y[0], x[0] * 0.5)
    o, d = torch.tensor([[0.0, 0, 0]]), torch.tensor([[1.0, 0, 0]])
    s = march_rays(o, d, spec, None, n_samples=64)
    assert s.t_ends.max() > 50 and (s.positions.abs() <= 1).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's packed kernels need CUDA")
def test_nerfacc_weights_match_torch_reference():
    """Weights and their gradients, nerfacc's packed kernels against the torch reference."""
    from pvdal.encodings.backend import nerfacc_probe
    from pvdal.render.volrend import packed_render_weights

    ok, reason = nerfacc_probe()
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(0)
    grid = OccupancyGrid(resolution=16, warmup_steps=100, update_every=1)
    grid.update(0, _sphere_density, step_size=0.02)
    o = torch.tensor([[0.0, 0, 3]]).repeat(64, 1) + torch.randn(64, 3) * 0.1
    d = torch.nn.functional.normalize(torch.tensor([[0.0, 0, -1]]) + torch.randn(64, 3) * 0.1,
                                      dim=-1)
    s = march_rays(o.cuda(), d.cuda(), SceneSpec(), grid.cuda(), n_samples=128)
    sig = (torch.rand(s.positions.shape[0], device="cuda") * 20).requires_grad_()
    ref, _ = render_weights(s.scatter(sig), s.deltas)
    m = s.mask
    fast = packed_render_weights(sig, s.t_starts[m], s.t_ends[m], s.ray_indices, s.n_rays)
    torch.testing.assert_close(s.scatter(fast), ref, atol=1e-5, rtol=0)
    g = torch.rand_like(ref)
    g_ref, = torch.autograd.grad((ref * g).sum(), sig)
    g_fast, = torch.autograd.grad((s.scatter(fast) * g).sum(), sig)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-4)
