"""``export.py format=tensorf|svox2|ingp``: a field under a tool's own conventions goes out as
that tool's file, and the written file holds exactly what was read (compared with the source
file's arrays, not with a second render); anything else is refused with the reason."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from pvdal.fields.ngp import NGPField
from pvdal.io.checkpoint import LoadedField, load_field
from pvdal.io.native_export import check_native
from pvdal.io.safe_load import safe_torch_load
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import SceneSpec
from pvdal.tasks import export
from pvdal.utils.errors import ConfigError
from tests import test_import_ingp as ingp_t
from tests import test_import_svox2 as svox2_t
from tests import test_import_torch_ngp as tngp_t
from tests.conftest import compose_cfg

TH = Path(__file__).parent / "data" / "tensorf_synthetic" / "tensorf.th"


def run_export(src: Path, fmt: str, out: Path, data_dir: Path, **extra) -> dict:
    ov = [f"ckpt={src}", f"format={fmt}", *(f"{k}={v}" for k, v in extra.items())]
    return export.run(compose_cfg("export", out, data_dir, ov))


def test_svox2_round_trip(tmp_path, data_dir):
    src = tmp_path / "src.npz"
    arrays = svox2_t.grid_arrays()
    np.savez(src, **arrays)
    res = run_export(src, "svox2", tmp_path / "run", data_dir)
    out = Path(res["svox2"])
    assert out.name == "field.npz"
    with np.load(out, allow_pickle=False) as z:
        for k, v in arrays.items():
            assert z[k].dtype == v.dtype and np.array_equal(z[k], v), k
    a, b = load_field(src), load_field(out)
    x = torch.rand(4000, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(4000, 3), dim=-1)
    for k, v in a.field.svox2_outputs(x, d).items():
        assert torch.equal(v, b.field.svox2_outputs(x, d)[k]), k
    assert torch.equal(a.grid.binary, b.grid.binary)


def test_tensorf_round_trip_of_a_real_file(tmp_path, data_dir):
    res = run_export(TH, "tensorf", tmp_path / "run", data_dir)
    out = Path(res["tensorf"])
    src = torch.load(TH, weights_only=False)
    got = safe_torch_load(out, "export")  # weights_only + numpy arrays: what TensoRF's holds
    assert set(got) == set(src)
    assert set(got["kwargs"]) == set(src["kwargs"])  # TensoRF's 17 constructor kwargs
    for k, v in src["kwargs"].items():
        w = got["kwargs"][k]
        assert (torch.equal(w, v) if isinstance(v, torch.Tensor) else w == v), k
    assert set(got["state_dict"]) == set(src["state_dict"])  # TensoRF's strict load_state_dict
    for k, v in src["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), k
    assert np.array_equal(got["alphaMask.mask"], src["alphaMask.mask"])
    assert tuple(got["alphaMask.shape"]) == tuple(src["alphaMask.shape"])
    assert torch.equal(got["alphaMask.aabb"], src["alphaMask.aabb"])
    assert load_field(out).field.grid_size == [97, 100, 90]


@pytest.mark.parametrize("suffix", [".ingp", ".msgpack"])
def test_ingp_round_trip(suffix, tmp_path, data_dir):
    src = tmp_path / "src.ingp"
    root = ingp_t.snapshot()
    src.write_bytes(gzip.compress(msgpack.packb(root, use_bin_type=True)))
    out = tmp_path / f"out{suffix}"
    run_export(src, "ingp", tmp_path / "run", data_dir, output=out)
    data = out.read_bytes()
    assert (data[:2] == b"\x1f\x8b") == (suffix == ".ingp")
    got = msgpack.unpackb(gzip.decompress(data) if suffix == ".ingp" else data, raw=False)
    snap, want = got["snapshot"], root["snapshot"]
    assert snap["params_binary"] == want["params_binary"]  # the same fp16 bytes, same order
    assert got["encoding"] == root["encoding"]
    for k in ("network", "rgb_network"):
        assert {n: got[k][n] for n in ("n_neurons", "n_hidden_layers")} == {
            n: root[k][n] for n in ("n_neurons", "n_hidden_layers")}
    assert snap["aabb"] == want["aabb"] and snap["nerf"]["dataset"]["offset"] == [0.5] * 3
    assert snap["nerf"]["dataset"]["scale"] == pytest.approx(ingp_t.SCALE)
    a, b = load_field(src), load_field(out)
    assert torch.equal(a.field.bitfield, b.field.bitfield)  # the Morton grid re-thresholds alike
    p = torch.rand(3000, 3)
    d = torch.nn.functional.normalize(torch.randn(3000, 3), dim=-1)
    for k, v in a.field.ingp_outputs(p, d).items():
        assert torch.equal(v, b.field.ingp_outputs(p, d)[k]), k


def test_other_fields_are_refused_with_the_reason(tmp_path, data_dir):
    src = tngp_t.write(tmp_path / "ngp.pth")
    with pytest.raises(ConfigError, match=r"format=ingp writes ingp's own field exactly, but .*"
                       r"holds an imported torch-ngp field.*student\.native"):
        run_export(src, "ingp", tmp_path / "run", data_dir)
    f = NGPField(n_levels=2, log2_hashmap_size=8, base_resolution=4, max_resolution=8)
    lf = LoadedField(f, OccupancyGrid(4), SceneSpec(), torch.ones(3), 8, {"name": "ngp"}, {},
                     "last.ckpt", "")
    for fmt in ("tensorf", "svox2", "ingp"):
        with pytest.raises(ConfigError, match=re.escape(f"format={fmt} writes {fmt}'s own field")
                           + r".*" + re.escape("holds pvdal's own ngp architecture (NGPField)")):
            check_native(lf, fmt)
    with pytest.raises(ConfigError, match=r"unknown export format 'nerfacto'"):
        run_export(src, "nerfacto", tmp_path / "run2", data_dir)
