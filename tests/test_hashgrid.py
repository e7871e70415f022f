"""The torch hash grid: continuity, and tiny-cuda-nn's indexing reproduced exactly."""

import math

import numpy as np
import pytest
import torch

from pvdal.encodings.hashgrid import HashGridEncoding, tcnn_layout
from tests import tcnn_reference as ref

# 16 levels from 16 to 1024 (Instant-NGP's sizes with a smaller table): levels 5, 10 and 15 have
# integer scales that float32 rounds up (63.0000076 -> 65 vertices, float64 would say 64); the
# first levels are dense and their corners at the far faces wrap
CFG = dict(n_levels=16, n_features=2, log2_hashmap_size=19, base_resolution=16,
           max_resolution=1024)


def points_near_every_face(n: int, seed: int = 0) -> torch.Tensor:
    """x in [-1, 1]^3: n spread over the cube, n in slabs of width 0.02 at each of the 6 faces."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.rand(n, 3, generator=g) * 2 - 1]
    for axis in range(3):
        for side in (-1.0, 1.0):
            p = torch.rand(n, 3, generator=g) * 2 - 1
            p[:, axis] = side * (1 - 0.02 * torch.rand(n, generator=g))
            parts.append(p)
    corners = torch.tensor([[sx, sy, sz] for sx in (-1.0, 1.0) for sy in (-1.0, 1.0)
                            for sz in (-1.0, 1.0)])
    return torch.cat(parts + [corners])


def test_layout_is_tcnns_float32_layout():
    pls = math.exp(math.log(CFG["max_resolution"] / CFG["base_resolution"]) / 15)
    lay = tcnn_layout(16, 19, 16, pls)
    want = ref.levels(16, 16, pls, 19)
    assert lay.resolutions == [r for _, r, _, _ in want]
    assert lay.offsets[:-1] == [o for _, _, o, _ in want]
    assert lay.scales == [float(s) for s, _, _, _ in want]
    assert [lay.resolutions[i] for i in (5, 10, 15)] == [65, 257, 1025]  # float32, as tcnn


def test_torch_grid_equals_tcnn_indexing_forward_and_gradient():
    """Parameters from U(-1, 1): every wrong row read shows (fails on the unwrapped float64
    indexing this replaced)."""
    torch.manual_seed(0)
    enc = HashGridEncoding(**CFG, implementation="torch")
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    x = points_near_every_face(400)
    out = enc(x)
    u = ((x + 1) * 0.5).clamp(0, 1).numpy()
    want, corners = ref.encode(u, enc.params.detach().numpy(), 16, 16, enc.per_level_scale, 19)
    np.testing.assert_allclose(out.detach().numpy(), want, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert torch.equal(enc(x), out)  # the int32 inference path indexes the same rows
    g = torch.randn_like(out)
    (out * g).sum().backward()
    want_g = ref.table_grad(corners, g.numpy(), enc.n_rows, 2)
    np.testing.assert_allclose(enc.params.grad.numpy(), want_g, atol=1e-4, rtol=0)


def test_hash_encoding_is_continuous_and_differentiable():
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=4, n_features=2, log2_hashmap_size=10, base_resolution=4,
                           max_resolution=64, implementation="torch")
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    x = torch.rand(100, 3) * 1.8 - 0.9
    y0, y1 = enc(x), enc(x + 1e-5)
    assert (y0 - y1).abs().max() < 1e-2  # continuous (trilinear)
    y0.square().sum().backward()
    assert enc.params.grad is not None and enc.params.grad.abs().sum() > 0


def test_dense_and_hashed_levels():
    enc = HashGridEncoding(n_levels=3, n_features=2, log2_hashmap_size=9, base_resolution=4,
                           max_resolution=32, implementation="torch")
    assert enc.dense.tolist() == [True, False, False]
    # at a vertex, interpolation returns exactly that vertex's entry
    with torch.no_grad():
        enc.params.copy_(torch.arange(enc.params.numel()).view_as(enc.params).float())
    # level 0: scale = 3, vertex (1,1,1) is at u = (1 - 0.5) / 3
    u = torch.full((1, 3), 0.5 / 3)
    out = enc(u * 2 - 1)
    res = int(enc.res[0])
    idx = 1 + res + res * res
    assert torch.allclose(out[0, :2], enc.params[idx])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tiny-cuda-nn parity needs CUDA")
def test_tcnn_parity():
    """Same U(-1, 1) parameters on both backends: outputs and gradients to 1e-5."""
    pytest.importorskip("tinycudann", reason="tiny-cuda-nn is not installed")
    torch.manual_seed(0)
    torch_grid = HashGridEncoding(**CFG, implementation="torch").cuda()
    with torch.no_grad():
        torch_grid.params.uniform_(-1, 1)
    tcnn_grid = HashGridEncoding(**CFG, implementation="tcnn")
    tcnn_grid.load_state_dict(torch_grid.state_dict())
    tcnn_grid.cuda()
    assert tcnn_grid.implementation == "tcnn" and torch_grid.implementation == "torch"
    x = points_near_every_face(4096).cuda()
    a, b = torch_grid(x), tcnn_grid(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    torch.testing.assert_close(tcnn_grid.tcnn.params.grad.view_as(torch_grid.params),
                               torch_grid.params.grad, atol=1e-5, rtol=0)
