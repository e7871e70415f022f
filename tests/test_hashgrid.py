import pytest
import torch

from pvdal.encodings.hashgrid import HashGridEncoding


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
    tcnn = pytest.importorskip("tinycudann")
    del tcnn
    ref = HashGridEncoding(implementation="torch").cuda()
    fast = HashGridEncoding(implementation="tcnn").cuda()
    with torch.no_grad():
        fast.tcnn.params.copy_(ref.params.reshape(-1).to(fast.tcnn.params.dtype))
    x = torch.rand(4096, 3, device="cuda") * 2 - 1
    assert torch.allclose(ref(x), fast(x), atol=1e-3)
