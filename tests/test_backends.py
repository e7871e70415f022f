"""Backends follow the tensors: torch on CPU whatever the machine has, tcnn's layout mapped to the
canonical one at save/load, nerfacc only after its kernels load, LPIPS never silently lost."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
import torch

from pvdal import metrics
from pvdal.encodings import backend, hashgrid
from pvdal.encodings.hashgrid import HashGridEncoding
from pvdal.io.checkpoint import load_field
from pvdal.render.renderer import render_chunked
from tests import tcnn_reference as ref

SMALL = dict(n_levels=6, n_features=2, log2_hashmap_size=12, base_resolution=8,
             max_resolution=128)


@pytest.fixture
def cuda_machine(monkeypatch):
    """Pretend CUDA and tiny-cuda-nn exist (the stand-in package evaluates tcnn's indexing)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tinycudann", ref.fake_tinycudann())
    monkeypatch.setattr(backend, "_probes", {})
    monkeypatch.setattr(backend, "_announced", set())


def test_auto_on_a_cpu_module_is_torch_on_a_cuda_machine(cuda_machine, caplog):
    assert backend.tcnn_probe()[0]  # the probe says tcnn is there ...
    with caplog.at_level(logging.INFO, logger="pvdal"):
        enc = HashGridEncoding(**SMALL, implementation="auto")
        enc.cpu()
    assert enc.implementation == "torch" and enc.tcnn is None  # ... but the tensors are on CPU
    assert enc(torch.zeros(4, 3)).shape == (4, 12)
    lines = [r.getMessage() for r in caplog.records if "hash grid" in r.getMessage()]
    assert lines == ["backend: hash grid uses torch (tensors on cpu; tcnn needs CUDA)"]


def test_explicit_tcnn_without_the_package_on_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "_probes", {"tcnn": (False, "tinycudann does not import")})
    assert backend.hash_grid_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(ImportError, match="implementation=tcnn.*set implementation=auto"):
        backend.hash_grid_backend("tcnn", torch.device("cuda"))
    assert backend.hash_grid_backend("tcnn", torch.device("cpu")) == "torch"


def test_tcnn_layout_round_trip_through_the_state_dict_hooks(cuda_machine, monkeypatch):
    torch.manual_seed(0)
    enc = HashGridEncoding(**SMALL, implementation="auto")
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    canonical = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.rand(300, 3) * 2 - 1
    y_torch = enc(x).detach()
    # moved "onto the GPU": the table becomes tcnn's flat vector, same memory order
    monkeypatch.setattr(hashgrid, "hash_grid_backend",
                        lambda req, dev: "torch" if req == "torch" else "tcnn")
    enc.float()
    assert enc.implementation == "tcnn" and not hasattr(enc, "params")
    assert [n for n, _ in enc.named_parameters()] == ["tcnn.params"]
    assert enc.tcnn.params.shape == (enc.n_rows * 2,)
    torch.testing.assert_close(enc(x), y_torch, atol=1e-5, rtol=0)  # tcnn's own indexing
    saved = enc.state_dict()
    assert list(saved) == ["params"] and torch.equal(saved["params"], canonical["params"])
    # a canonical checkpoint loads into the tcnn module, and tcnn's layout into a torch one
    other = HashGridEncoding(**SMALL, implementation="torch")
    other.load_state_dict(saved)  # torch <- canonical (saved by tcnn)
    assert torch.equal(other.params, canonical["params"])
    fresh = HashGridEncoding(**SMALL, implementation="auto").float()  # tcnn
    fresh.load_state_dict(canonical)
    assert torch.equal(fresh.tcnn.params.view(-1, 2), canonical["params"])
    flat = {"tcnn.params": canonical["params"].reshape(-1).clone()}  # an old tcnn-layout file
    monkeypatch.setattr(hashgrid, "hash_grid_backend", lambda req, dev: "torch")
    back = HashGridEncoding(**SMALL, implementation="auto")
    back.load_state_dict(flat)
    assert torch.equal(back.params, canonical["params"])
    enc.float()  # "back to the CPU": the same table as a torch parameter again
    assert enc.implementation == "torch" and torch.equal(enc.params, canonical["params"])


def test_a_checkpoint_in_tcnn_layout_loads_into_a_torch_field_and_renders_identically(
        tiny_teacher, tmp_path):
    ckpt = torch.load(tiny_teacher, map_location="cpu", weights_only=False)
    key = ckpt["pvdal"]["prefix"] + "encoding.params"
    table = ckpt["state_dict"].pop(key)
    ckpt["state_dict"][ckpt["pvdal"]["prefix"] + "encoding.tcnn.params"] = table.reshape(-1)
    path = tmp_path / "tcnn_layout.ckpt"
    torch.save(ckpt, path)
    a, b = load_field(tiny_teacher), load_field(path)
    assert b.field.encoding.implementation == "torch"
    assert torch.equal(b.field.encoding.params, a.field.encoding.params)
    g = torch.Generator().manual_seed(1)
    o = torch.tensor([[0.0, -3.0, 0.5]]).repeat(64, 1)
    d = torch.nn.functional.normalize(torch.randn(64, 3, generator=g) * 0.2
                                      + torch.tensor([0.0, 1.0, -0.15]), dim=-1)
    ra = render_chunked(a.field, o, d, a.scene, a.grid, a.n_samples, a.background)
    rb = render_chunked(b.field, o, d, b.scene, b.grid, b.n_samples, b.background)
    assert ra["opacity"].sum() > 0  # the rays see the scene
    assert torch.equal(ra["rgb"], rb["rgb"])


def test_nerfacc_without_kernels_selects_torch_with_one_log_line(monkeypatch, caplog):
    """``import nerfacc`` works without its compiled extension (``_C`` is None without nvcc):
    the probe must see that rather than crash on the first CUDA render."""
    fake = types.ModuleType("nerfacc.cuda._backend")
    fake._C = None
    monkeypatch.setitem(sys.modules, "nerfacc.cuda._backend", fake)
    import nerfacc.cuda

    monkeypatch.setattr(nerfacc.cuda, "_backend", fake, raising=False)
    monkeypatch.setattr(backend, "_probes", {})
    monkeypatch.setattr(backend, "_announced", set())
    ok, reason = backend.nerfacc_probe()
    assert not ok and "not built" in reason
    cuda_tensor = types.SimpleNamespace(is_cuda=True)
    with caplog.at_level(logging.INFO, logger="pvdal"):
        assert backend.use_nerfacc(cuda_tensor) is False
        assert backend.use_nerfacc(cuda_tensor) is False
    lines = [r.getMessage() for r in caplog.records if "volume rendering" in r.getMessage()]
    assert len(lines) == 1 and "uses torch" in lines[0] and "not built" in lines[0]
    assert backend.use_nerfacc(torch.zeros(2)) is False  # CPU tensors never ask nerfacc


def test_lpips_null_says_why_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "lpips", None)  # not installed: import fails
    monkeypatch.setattr(metrics, "_LPIPS", {})
    img = torch.rand(8, 8, 3)
    with caplog.at_level(logging.INFO, logger="pvdal"):
        assert metrics.lpips(img, img) is None
        assert metrics.lpips(img, img) is None
    lines = [r.getMessage() for r in caplog.records if "lpips" in r.getMessage()]
    assert len(lines) == 1 and "lpips is null" in lines[0]


def test_lpips_runs_on_the_images_device(monkeypatch):
    """The network is built on, and fed from, the device of the render (a stand-in package)."""
    seen = {}

    class LPIPS(torch.nn.Module):
        def __init__(self, net, verbose):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, p, t):
            seen["devices"] = {p.device, t.device, self.w.device}
            return ((p - t) ** 2).mean() * self.w

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=LPIPS))
    monkeypatch.setattr(metrics, "_LPIPS", {})
    a, b = torch.zeros(4, 4, 3), torch.ones(4, 4, 3)
    assert metrics.lpips(a, b) == pytest.approx(4.0)
    assert seen["devices"] == {a.device}
    assert np.isfinite(metrics.lpips(a, a))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for real")
def test_gpu_check_without_cuda_prints_its_plan_and_exits_0(capsys, tmp_path):
    from bench.gpu_check import main

    out = tmp_path / "gpu_check.json"
    assert main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no CUDA device" in text and "hash-grid parity" in text
    assert not out.exists()  # nothing measured, nothing written
