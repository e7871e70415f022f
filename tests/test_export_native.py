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
from pvdal.tasks import distill, export
from pvdal.utils.errors import ConfigError
from tests import test_import_ingp as ingp_t
from tests import test_import_svox2 as svox2_t
from tests import test_import_torch_ngp as tngp_t
from tests.conftest import TINY_DATA, TINY_RUN, compose_cfg

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
                       r"holds an imported torch-ngp field.*hint: distil a student under ingp's "
                       r"conventions \(distill\.py \.\.\. student\.native=ingp, or "
                       r"student=ingp\)"):
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


def distil(teacher: Path, student: str, out: Path, data_dir: Path,
           extra: tuple[str, ...] = ()) -> Path:
    cfg = compose_cfg("distill", out, data_dir,
                      [f"student={student}", *TINY_DATA, *TINY_RUN, "preset=tiny",
                       f"teacher.ckpt={teacher}", "trainer.max_steps=3", *extra])
    res = distill.run(cfg)
    assert res["steps"] == 3
    return out / "checkpoints" / "last.ckpt"


def test_svox2_student_exports_exactly(tmp_path, data_dir):
    """student=svox2 distils svox2's own field; format=svox2 writes its arrays (sh_data as f16,
    as svox2 saves it) and the file re-imports to the student's values."""
    teacher = tmp_path / "t.npz"
    np.savez(teacher, **svox2_t.grid_arrays())
    ckpt = distil(teacher, "svox2", tmp_path / "d", data_dir)
    st = load_field(ckpt)
    f = st.field
    assert type(f).__name__ == "Svox2NativeField" and f.reso == [8, 8, 8]
    assert not torch.equal(f.density_data, torch.ones_like(f.density_data))  # it trained
    out = Path(run_export(ckpt, "svox2", tmp_path / "e", data_dir)["svox2"])
    with np.load(out, allow_pickle=False) as z:
        assert np.array_equal(z["links"], f.links.numpy())
        assert np.array_equal(z["density_data"], f.density_data.detach().numpy())
        assert np.array_equal(z["sh_data"], f.sh_data.detach().numpy().astype(np.float16))
        assert z["sh_data"].dtype == np.float16 and int(z["basis_type"]) == 1
    back = load_field(out).field
    with torch.no_grad():
        f.sh_data.copy_(f.sh_data.half().float())  # what svox2's own save keeps
    x = torch.rand(3000, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(3000, 3), dim=-1)
    for k, v in f.svox2_outputs(x, d).items():
        assert torch.equal(v, back.svox2_outputs(x, d)[k]), k


def test_ingp_student_exports_exactly(tmp_path, data_dir):
    """``student.native=ingp`` (the issue's key) = ``student=ingp``: instant-ngp's own field."""
    teacher = tmp_path / "t.ingp"
    teacher.write_bytes(gzip.compress(msgpack.packb(ingp_t.snapshot(), use_bin_type=True)))
    ckpt = distil(teacher, "ngp", tmp_path / "d", data_dir, ("student.native=ingp",))
    f = load_field(ckpt).field
    assert type(f).__name__ == "IngpNativeField" and f.encoding.log2_T == 10
    out = Path(run_export(ckpt, "ingp", tmp_path / "e", data_dir)["ingp"])
    got = msgpack.unpackb(gzip.decompress(out.read_bytes()), raw=False)
    flat = np.frombuffer(got["snapshot"]["params_binary"], np.float16)
    weights = [m.weight for m in (*f.density_net, *f.rgb_net) if isinstance(m, torch.nn.Linear)]
    want = torch.cat([w.detach().reshape(-1) for w in weights]
                     + [f.encoding.params.detach().reshape(-1)]).numpy().astype(np.float16)
    assert np.array_equal(flat, want)  # tcnn order, fp16 as instant-ngp's snapshot stores it
    back = load_field(out).field
    with torch.no_grad():
        for p in f.parameters():
            p.copy_(p.half().float())
    assert torch.equal(back.bitfield, f.bitfield)
    p = torch.rand(3000, 3)
    d = torch.nn.functional.normalize(torch.randn(3000, 3), dim=-1)
    for k, v in f.ingp_outputs(p, d).items():
        assert torch.equal(v, back.ingp_outputs(p, d)[k]), k


def test_tensorf_student_exports_exactly(tmp_path, data_dir):
    """student=tensorf_native distils TensoRF's own field; format=tensorf writes TensoRF's kwargs
    and state dict (float32: nothing rounded) and the file re-imports to the student's values."""
    teacher = tmp_path / "t.npz"
    np.savez(teacher, **svox2_t.grid_arrays())
    ckpt = distil(teacher, "tensorf_native", tmp_path / "d", data_dir)
    f = load_field(ckpt).field
    assert type(f).__name__ == "TensoRFNativeField" and f.grid_size == [12, 12, 12]
    out = Path(run_export(ckpt, "tensorf", tmp_path / "e", data_dir)["tensorf"])
    got = safe_torch_load(out, "export")
    real = torch.load(TH, weights_only=False)
    assert set(got["kwargs"]) == set(real["kwargs"]) and "alphaMask.mask" not in got
    assert set(got["state_dict"]) == set(real["state_dict"])
    for k, v in f.state_dict().items():
        if k in got["state_dict"]:
            assert torch.equal(got["state_dict"][k], v), k
    assert got["kwargs"]["gridSize"] == [12, 12, 12] and got["kwargs"]["near_far"] == [2.0, 6.0]
    back = load_field(out).field
    w = (torch.rand(3000, 3) * 2 - 1) * 1.5
    d = torch.nn.functional.normalize(torch.randn(3000, 3), dim=-1)
    for k, v in f.tensorf_outputs(w, d).items():
        assert torch.equal(v, back.tensorf_outputs(w, d)[k]), k


def test_unknown_native_student_is_one_clear_error(tmp_path, data_dir):
    from pvdal.utils.errors import ConfigError as CE

    with pytest.raises(CE, match=r"student\.native.*unknown native format 'nerfacto'"):
        distil(tmp_path / "none.ckpt", "ngp", tmp_path / "d", data_dir,
               ("student.native=nerfacto",))
