"""Importing a real TensoRF checkpoint (tests/data/tensorf_synthetic, made by TensoRF's own code):
pvdal must reproduce TensoRF's per-point values, its renders and its reported test PSNR, distil
from it into every student, and refuse broken or foreign files with one clear error."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pvdal import metrics
from pvdal.data.scenes import load_synthetic
from pvdal.fields.tensorf_native import EMPTY_RAW, TensoRFNativeField
from pvdal.io.checkpoint import load_field
from pvdal.io.formats import FORMATS, detect_format
from pvdal.render.march import march_rays
from pvdal.tasks import distill, evaluate, render_video
from pvdal.tasks.evaluate import render_view
from pvdal.utils.errors import CheckpointError
from tests.conftest import TINY_DATA, TINY_RUN, compose_cfg

FIX = Path(__file__).parent / "data" / "tensorf_synthetic"
TH = FIX / "tensorf.th"
STUDENTS = ("ngp", "mlp", "plenoxels", "tensorf")


@pytest.fixture(scope="module")
def imported():
    return load_field(TH, "teacher.ckpt")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The fixture's test views: pvdal's embedded scene at 64 px, seed 0, 10 test views (the test
    split does not depend on the train/val counts, so one of each is enough)."""
    return load_synthetic(tmp_path_factory.mktemp("tf_scene"), 0, 64, 1, 1, 10)


def test_import_reads_the_file_safely(monkeypatch, caplog):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real(*a, **k))
    with caplog.at_level(logging.INFO, logger="pvdal"):
        lf = load_field(TH)
    assert loads and all(k.get("weights_only") is True for k in loads)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("import:")]
    assert len(lines) == 1 and "TensoRF VM" in lines[0] and str(TH) in lines[0]
    assert "97, 100, 90" in lines[0] and "softplus" in lines[0] and "x 1.5" in lines[0]
    f = lf.field
    assert isinstance(f, TensoRFNativeField) and lf.arch["name"] == "tensorf"
    assert f.color_feature_dim == 27 and f.feature_dim == 24 + 72 + 1
    assert (f.distance_scale, f.density_shift, f.fea2dense_act) == (25.0, -10.0, "softplus")
    assert f.has_alpha_mask and list(f.alpha_volume.shape[-3:]) == [52, 58, 56]
    assert lf.meta["frame"]["world_from_scene"]["scale"] == 1.5
    assert lf.n_samples >= 368 and lf.scene.near == pytest.approx(2.0 / 1.5)


def test_points_match_tensorf(imported):
    """TensoRF's own density, colour and alpha-mask verdict at 12000 points."""
    ref = np.load(FIX / "points.npz")
    w, d = torch.from_numpy(ref["points"]), torch.from_numpy(ref["dirs"])
    f = imported.field
    out = f.tensorf_outputs(w, d)
    np.testing.assert_allclose(out["sigma"].numpy(), ref["sigma"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["rgb"].numpy(), ref["rgb"], rtol=1e-4, atol=1e-4)
    assert np.array_equal(out["alpha_mask"].numpy(), ref["alpha_mask"])
    assert 0.2 < ref["alpha_mask"].mean() < 0.8  # both verdicts occur
    # what pvdal's renderer sees at x = w / 1.5: TensoRF's sigma x distance_scale per world
    # unit, x 1.5 per pvdal unit; zero where TensoRF zeroes it (alpha mask, outside its aabb)
    with torch.no_grad():
        feat = f.features(w / 1.5)
        out_p = f.decode(feat, d)
        dens = f.activate(out_p.sigma_raw).numpy()
    inside = ((w >= f.aabb[0]) & (w <= f.aabb[1])).all(-1).numpy()
    valid = inside & ref["alpha_mask"]
    np.testing.assert_allclose(dens, np.where(valid, ref["sigma"] * 25 * 1.5, 0.0), rtol=1e-4,
                               atol=1e-6)
    assert (out_p.sigma_raw.numpy()[~valid] == EMPTY_RAW).all()
    np.testing.assert_allclose(out_p.rgb.numpy(), ref["rgb"], rtol=1e-4, atol=1e-4)


def test_grid_skips_only_where_tensorf_density_is_zero(imported):
    """Cells the imported occupancy grid leaves out hold no point TensoRF would give a density
    (outside its aabb or its alpha mask), so skipping them changes no pixel."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400_000, 3, generator=g) * 2 - 1
    skipped = ~imported.grid.occupied(x)
    valid = imported.field.valid(imported.field.to_world(x))
    assert 0.3 < skipped.float().mean() < 0.95  # the grid does skip space
    assert not (skipped & valid).any()
    assert valid[~skipped].float().mean() > 0.5  # ... and is not much looser than needed


def tensorf_rays(c2w: torch.Tensor, h: int, w: int, focal: float):
    """TensoRF's Blender rays (dataLoader/blender.py + ray_utils.py), world frame."""
    ax = [torch.arange(n, dtype=torch.float64) + 0.5 for n in (h, w)]
    j, i = torch.meshgrid(*ax, indexing="ij")
    dirs = torch.stack([(i - w / 2) / focal, (j - h / 2) / focal, torch.ones_like(i)], -1)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    pose = c2w @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype))
    rays_d = (dirs.view(-1, 3) @ pose[:3, :3].T).float()
    return pose[:3, 3].float().expand_as(rays_d), rays_d


def test_frame_round_trip_is_identity(imported, scene):
    """pvdal's rays of a test view, mapped by the imported field's frame, are TensoRF's rays of
    the same camera (cameras.json), and its march samples where TensoRF's field is defined."""
    cams = json.loads((FIX / "cameras.json").read_text())
    assert len(cams["frames"]) == len(scene.test) == 10
    for i in (0, 7):
        c2w = torch.tensor(cams["frames"][i]["transform_matrix"], dtype=torch.float64)
        o_t, d_t = tensorf_rays(c2w, cams["height"], cams["width"], cams["focal"])
        o, d = scene.image_rays(scene.test, i)
        torch.testing.assert_close(imported.field.to_world(o), o_t, atol=1e-5, rtol=0)
        torch.testing.assert_close(d, d_t, atol=1e-5, rtol=0)
    s = march_rays(o, d, imported.scene, imported.grid, imported.n_samples)
    w = imported.field.to_world(s.positions)
    assert s.positions.shape[0] > 0 and imported.field.valid(w).float().mean() > 0.5


def test_renders_match_tensorf_and_its_psnr(imported, scene):
    """Every test view: >= 40 dB against TensoRF's own render; the mean PSNR against the ground
    truth within 0.05 dB of what TensoRF reported (summary.json)."""
    summary = json.loads((FIX / "summary.json").read_text())
    vs_tensorf, vs_gt = [], []
    for i in range(len(scene.test)):
        img = render_view(imported, scene, scene.test, i, imported.n_samples, 1 << 14)["rgb"]
        ref = torch.from_numpy(np.load(FIX / f"test_{i:03d}.npy"))
        vs_tensorf.append(float(metrics.psnr(img, ref)))
        vs_gt.append(float(metrics.psnr(img, scene.test.images[i])))
    assert min(vs_tensorf) >= 40.0, vs_tensorf
    assert abs(np.mean(vs_gt) - summary["tensorf_test_psnr"]) < 0.05, (vs_gt, summary)
    assert np.abs(np.array(vs_gt) - np.array(summary["per_view"])).max() < 0.1


def test_eval_and_render_read_the_file(tmp_path, data_dir):
    common = [f"ckpt={TH}", "progress=false", "data=synthetic", *TINY_DATA]
    cfg = compose_cfg("eval", tmp_path / "eval", data_dir, [*common, "save_images=false"])
    res = evaluate.run(cfg)
    assert res["arch"] == "tensorf" and res["n_images"] == 2 and res["psnr"] > 12
    cfg = compose_cfg("render", tmp_path / "render", data_dir,
                      [*common, "path=test", "fps=2", "resolution=8"])
    assert Path(render_video.run(cfg)["video"]).is_file()


@pytest.mark.parametrize("student,extra", [(s, []) for s in STUDENTS]
                         + [("ngp", ["distill.align=volume"])],
                         ids=[*STUDENTS, "ngp-align_volume"])
def test_distill_from_tensorf(student, extra, tmp_path, data_dir):
    cfg = compose_cfg("distill", tmp_path / "run", data_dir,
                      [f"student={student}", *TINY_DATA, *TINY_RUN, "preset=tiny",
                       f"teacher.ckpt={TH}", "trainer.max_steps=4", *extra])
    res = distill.run(cfg)
    assert res["pair"] == f"tensorf2{student}" and res["steps"] == 4
    assert math.isfinite(res["student"]["psnr"]) and res["teacher"]["psnr"] > 12
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_content_not_name_decides(tmp_path):
    renamed = tmp_path / "last.ckpt"
    shutil.copy(TH, renamed)
    assert detect_format(renamed) == "tensorf"
    assert load_field(renamed).arch["name"] == "tensorf"
    pv = tmp_path / "model.th"
    torch.save({"pvdal": {"format": 1}, "state_dict": {}}, pv)
    assert detect_format(pv) == "pvdal"


# --- bad files -------------------------------------------------------------------------------
def _truncated(p: Path) -> None:
    p.write_bytes(TH.read_bytes()[: TH.stat().st_size // 2])


def _npy(p: Path) -> None:
    shutil.copyfile(FIX / "test_000.npy", p)  # a numpy array named .th


def _other_dict(p: Path) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, p)


def _cp_split(p: Path) -> None:
    torch.save({"kwargs": {"aabb": torch.zeros(2, 3)},
                "state_dict": {"density_line.0": torch.zeros(1, 2, 4, 1)}}, p)


def _unsafe_global(p: Path) -> None:
    ck = torch.load(TH, weights_only=False)
    ck["kwargs"]["where"] = io.StringIO  # a pickled class: needs more than numpy arrays
    torch.save(ck, p)


def _no_kwarg(p: Path) -> None:
    ck = torch.load(TH, weights_only=False)
    del ck["kwargs"]["gridSize"]
    torch.save(ck, p)


def _wrong_shape(p: Path) -> None:
    ck = torch.load(TH, weights_only=False)
    ck["state_dict"]["app_plane.1"] = ck["state_dict"]["app_plane.1"][:, :, :-1]
    torch.save(ck, p)


FORMAT_LIST = r"pvdal reads, by content: pvdal: .*; tensorf: a TensoRF VM-split checkpoint"


@pytest.mark.parametrize("make,pattern", [
    (_truncated, r"cannot be read as a checkpoint \(BadZipFile\): the file is truncated.*"
     + FORMAT_LIST),
    (_npy, r"is not a file pvdal can read \(a numpy \.npy array\).*" + FORMAT_LIST),
    (_other_dict, r"is a torch file holding none of the formats pvdal reads.*" + FORMAT_LIST),
    (_cp_split, r"TensoRF CP-decomposition checkpoint.*VM split"),
    (_unsafe_global, r"TensoRF checkpoint needs _io\.StringIO, which pvdal does not load"),
    (_no_kwarg, r"TensoRF kwargs lack \['gridSize'\]"),
    (_wrong_shape, r"\(TensoRF state_dict\): tensor shapes do not match"),
], ids=["truncated", "mislabelled_npy", "other_torch_dict", "cp_split", "unsafe_global",
        "missing_kwarg", "wrong_shape"])
def test_bad_file_is_one_clear_error(make, pattern, tmp_path):
    bad = tmp_path / "bad.th"
    make(bad)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(bad))}[: ].*" + pattern):
        load_field(bad, "teacher.ckpt")


def test_bad_teacher_file_stops_distill_py(tmp_path, data_dir):
    bad = tmp_path / "tensorf.th"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    cfg = compose_cfg("distill", tmp_path / "run", data_dir,
                      ["student=ngp", *TINY_DATA, *TINY_RUN, "preset=tiny",
                       f"teacher.ckpt={bad}"])
    with pytest.raises(CheckpointError, match=r"tensorf\.th: is not a file pvdal can read "
                       r"\(a PNG image\).*" + FORMAT_LIST):
        distill.run(cfg)
    assert set(FORMATS) >= {"pvdal", "tensorf"}


def test_unpacked_archive_is_refused(tmp_path):
    bad = tmp_path / "weights.th"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("arr_0.npy", b"x")
    with pytest.raises(CheckpointError, match=r"zip archive but not a torch checkpoint"):
        load_field(bad)
