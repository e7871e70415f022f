"""Importing an svox2 / Plenoxels ``.npz``: no public sample file exists, so the test writes one
from the spec (shared FORMATS.md, svox2's ``SparseGrid.save``) and checks hand-computed values at
voxel centres and interpolated points, the frame against svox2's own rays, a render against an
independent svox2-style marcher, eval/render/distill through the task functions, and that broken
or foreign files are one clear error."""

from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pvdal import metrics
from pvdal.data.scenes import load_synthetic
from pvdal.fields.svox2_native import EMPTY_RAW, Svox2NativeField
from pvdal.io.checkpoint import load_field
from pvdal.io.formats import detect_format
from pvdal.tasks import distill, evaluate, render_video
from pvdal.tasks.evaluate import render_view
from pvdal.utils.errors import CheckpointError
from tests.conftest import TINY_DATA, TINY_RUN, compose_cfg

C0, C1 = 0.28209479177387814, 0.4886025119029199
R = (12, 10, 8)  # anisotropic on purpose: x-major links must stay x-major
RADIUS = np.array([1.0, 1.0, 1.0], np.float32)
CENTER = np.array([0.0, 0.0, 0.0], np.float32)


def grid_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny svox2 grid: a soft blob of density, some empty voxels, SH degree 2 (basis_dim 4)
    stored as f16 like svox2's save()."""
    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in R], indexing="ij"), -1)
    g = (ijk + 0.5) / np.array(R) * 2 - 1  # voxel centres in world units
    r = np.linalg.norm(g, axis=-1)
    keep = (r < 0.85) | (rng.random(R) < 0.05)
    keep[3, 4, 2] = keep[4, 4, 2] = True  # a pair used below ...
    keep[5, 4, 2] = False  # ... and an empty neighbour
    links = np.full(R, -1, np.int32)
    links[keep] = np.arange(int(keep.sum()), dtype=np.int32)
    n = int(keep.sum())
    dens = (30.0 * np.exp(-6 * r[keep] ** 2) - 2.0 + rng.normal(0, 0.5, n))
    sh = rng.normal(0, 0.3, (n, 12)).astype(np.float16)
    sh[:, [0, 4, 8]] += np.array([0.8, 0.2, -0.4], np.float16)  # DC terms: some colour
    return {"radius": RADIUS, "center": CENTER, "links": links,
            "density_data": dens.astype(np.float32)[:, None], "sh_data": sh,
            "basis_type": np.array(1)}


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("svox2") / "ckpt.npz"
    np.savez(p, **grid_arrays())
    return p


@pytest.fixture(scope="module")
def imported(npz):
    return load_field(npz, "teacher.ckpt")


def centre(i: int, j: int, k: int) -> torch.Tensor:
    """World position of voxel (i, j, k)'s centre (svox2: values at voxel centres)."""
    return torch.tensor([[((v + 0.5) / n * 2 - 1) for v, n in zip((i, j, k), R)]])


def test_import_reads_the_file_safely(npz, caplog):
    with caplog.at_level(logging.INFO, logger="pvdal"):
        lf = load_field(npz)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("import:")]
    assert len(lines) == 1 and "svox2 grid" in lines[0] and str(npz) in lines[0]
    assert "links [12, 10, 8]" in lines[0] and "SH 4 x 3" in lines[0]
    f = lf.field
    assert isinstance(f, Svox2NativeField) and lf.arch["native"] == "svox2"
    assert f.feature_dim == 1 + 12 + 1 and not f.has_color_feature
    assert lf.meta["frame"]["world_from_scene"]["scale"] == 1.0
    # step <= svox2's 0.5 voxel along the finest axis (0.5 * 2 / 12 world units)
    assert 2 * math.sqrt(3) / lf.n_samples <= 0.5 * 2 / 12 + 1e-9
    assert detect_format(npz) == "svox2"


def test_values_at_voxel_centres_and_between(imported):
    """Hand-computed: at a voxel centre svox2 returns that voxel's density and SH colour; half-way
    between two centres the mean (an empty voxel counts as 0); outside the box nothing."""
    a = grid_arrays()
    links, dens, sh = a["links"], a["density_data"][:, 0], a["sh_data"].astype(np.float32)
    f = imported.field
    z = torch.tensor([[0.0, 0.0, 1.0]])
    # voxel (3, 4, 2), viewed along +z: SH basis = [C0, -C1 y, C1 z, -C1 x] = [C0, 0, C1, 0]
    row = links[3, 4, 2]
    out = f.svox2_outputs(centre(3, 4, 2), z)
    assert out["sigma"].item() == pytest.approx(max(dens[row], 0.0), rel=1e-6, abs=1e-6)
    want = [max(C0 * sh[row, 4 * c] + C1 * sh[row, 4 * c + 2] + 0.5, 0.0) for c in range(3)]
    np.testing.assert_allclose(out["rgb"][0].numpy(), want, rtol=1e-6, atol=1e-6)
    # view along -x: basis [C0, 0, 0, C1]
    out = f.svox2_outputs(centre(3, 4, 2), torch.tensor([[-1.0, 0.0, 0.0]]))
    want = [max(C0 * sh[row, 4 * c] + C1 * sh[row, 4 * c + 3] + 0.5, 0.0) for c in range(3)]
    np.testing.assert_allclose(out["rgb"][0].numpy(), want, rtol=1e-6, atol=1e-6)
    # half-way between (3,4,2) and (4,4,2) along x: the mean; between (4,4,2) and the empty
    # (5,4,2): half of (4,4,2)'s value
    mid = (centre(3, 4, 2) + centre(4, 4, 2)) / 2
    s = f.svox2_outputs(mid, z)["sigma"].item()
    assert s == pytest.approx(max((dens[row] + dens[links[4, 4, 2]]) / 2, 0), rel=1e-5, abs=1e-5)
    assert links[5, 4, 2] == -1
    q = centre(4, 4, 2) * 0.75 + centre(5, 4, 2) * 0.25
    s = f.svox2_outputs(q, z)["sigma"].item()
    assert s == pytest.approx(max(0.75 * dens[links[4, 4, 2]], 0), rel=1e-5, abs=1e-5)
    # a general point: trilinear over the 8 surrounding centres, written out by hand
    p = np.array([0.13, -0.27, 0.31])
    g = (p + 1) / 2 * np.array(R) - 0.5
    lo = np.floor(g).astype(int)
    t = g - lo
    sig, col = 0.0, np.zeros(12)
    for da in (0, 1):
        for db in (0, 1):
            for dc in (0, 1):
                w = ((t[0] if da else 1 - t[0]) * (t[1] if db else 1 - t[1])
                     * (t[2] if dc else 1 - t[2]))
                r_ = links[lo[0] + da, lo[1] + db, lo[2] + dc]
                if r_ >= 0:
                    sig += w * dens[r_]
                    col += w * sh[r_]
    d = np.array([0.6, 0.0, 0.8])
    basis = np.array([C0, -C1 * d[1], C1 * d[2], -C1 * d[0]])
    out = f.svox2_outputs(torch.tensor(p[None], dtype=torch.float32),
                          torch.tensor(d[None], dtype=torch.float32))
    assert out["sigma"].item() == pytest.approx(max(sig, 0), rel=1e-5, abs=1e-5)
    want = np.maximum(col.reshape(3, 4) @ basis + 0.5, 0)
    np.testing.assert_allclose(out["rgb"][0].numpy(), want, rtol=1e-5, atol=1e-5)
    # the border half-voxel clamps to the edge centre; outside the box svox2 samples nothing
    edge = centre(0, 4, 2).clone()
    edge[0, 0] = -0.99
    with torch.no_grad():
        np.testing.assert_allclose(f.features_world(edge)[:, :-1].numpy(),
                                   f.features_world(centre(0, 4, 2))[:, :-1].numpy(), atol=1e-6)
    assert f.svox2_outputs(torch.tensor([[1.2, 0.0, 0.0]]), z)["sigma"].item() == 0.0
    # what pvdal's renderer sees: the same density per unit (world = pvdal scene), exp of raw
    x = torch.rand(2000, 3) * 2 - 1
    with torch.no_grad():
        out_p = f.decode(f.features(x), z.expand(2000, 3))
    ref = f.svox2_outputs(x, z.expand(2000, 3))
    np.testing.assert_allclose(f.activate(out_p.sigma_raw).numpy(), ref["sigma"].numpy(),
                               rtol=1e-5, atol=1e-6)
    assert (out_p.sigma_raw[ref["sigma"] == 0] == EMPTY_RAW).all()
    assert 0.1 < (ref["sigma"] > 0).float().mean() < 0.9


def test_grid_skips_only_where_svox2_density_is_zero(imported):
    x = torch.rand(200_000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    skipped = ~imported.grid.occupied(x)
    sigma = imported.field.svox2_outputs(x, torch.zeros_like(x))["sigma"]
    assert 0.05 < skipped.float().mean() < 0.95
    assert not (skipped & (sigma > 0)).any()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return load_synthetic(tmp_path_factory.mktemp("sv_scene"), 0, 24, 1, 1, 2)


def svox2_rays(c2w: np.ndarray, h: int, w: int, focal: float):
    """svox2's synthetic rays (nerf_dataset.py + Camera.gen_rays): c2w translation x 2/3
    (scene_scale), OpenGL -> OpenCV, pixel centres."""
    c2w = torch.tensor(c2w, dtype=torch.float64) @ torch.diag(
        torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    c2w[:3, 3] *= 2.0 / 3.0
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                            torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    dirs = torch.stack([(xx - w * 0.5) / focal, (yy - h * 0.5) / focal, torch.ones_like(xx)], -1)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    d = (dirs.view(-1, 3) @ c2w[:3, :3].T).float()
    return c2w[:3, 3].float().expand_as(d), d


def svox2_render(f: Svox2NativeField, o: torch.Tensor, d: torch.Tensor, step: float = 0.5):
    """svox2's reference marcher (``_volume_render_gradcheck_lerp``): from the grid-box entry in
    grid units, ``step`` voxels at a time, alpha from ``sigma * step * delta_scale``, white
    background. Per-point values from ``svox2_outputs`` (checked by hand above)."""
    gsz = torch.tensor(R, dtype=torch.float32)
    scaling = 0.5 / f.radius * gsz
    og = f.world2grid(o)
    dg = d * scaling
    delta_scale = 1.0 / dg.norm(dim=-1)
    dg = dg * delta_scale[:, None]
    t1, t2 = (-0.5 - og) / dg, (gsz - 0.5 - og) / dg
    t = torch.minimum(t1, t2).amax(-1).clamp_min(0)
    tmax = torch.maximum(t1, t2).amin(-1)
    log_t = torch.zeros(len(o))
    rgb = torch.zeros(len(o), 3)
    while True:
        act = t <= tmax
        if not act.any():
            break
        w = o + (t * delta_scale)[:, None] * d  # world point at grid distance t
        out = f.svox2_outputs(w, d)
        log_att = -step * out["sigma"] * delta_scale * act
        rgb += (torch.exp(log_t) * (1 - torch.exp(log_att)))[:, None] * out["rgb"]
        log_t += log_att
        t = t + step
    return rgb + torch.exp(log_t)[:, None]


def test_frame_and_render_match_svox2(imported, scene):
    """pvdal's rays of a test view are svox2's rays of the same camera (its synthetic world is
    Blender x 2/3), and pvdal's render of the imported grid matches svox2's marcher."""
    meta = json.loads((Path(scene.source) / "transforms_test.json").read_text())
    for i in range(2):
        h, w = (int(v) for v in scene.test.hw[i])
        focal = 0.5 * w / math.tan(0.5 * meta["camera_angle_x"])
        o_s, d_s = svox2_rays(np.array(meta["frames"][i]["transform_matrix"]), h, w, focal)
        o, d = scene.image_rays(scene.test, i)
        torch.testing.assert_close(imported.field.to_world(o), o_s, atol=1e-5, rtol=0)
        torch.testing.assert_close(d, d_s, atol=1e-5, rtol=0)
        ref = svox2_render(imported.field, o_s, d_s).view(h, w, 3)
        img = render_view(imported, scene, scene.test, i, imported.n_samples, 1 << 14)["rgb"]
        assert ref.min() < 0.9  # the grid is in view
        assert float(metrics.psnr(img.clamp(0, 1), ref.clamp(0, 1))) > 45.0  # measured: 58 dB


def test_eval_render_distill_read_the_file(npz, tmp_path, data_dir):
    common = [f"ckpt={npz}", "progress=false", "data=synthetic", *TINY_DATA]
    res = evaluate.run(compose_cfg("eval", tmp_path / "eval", data_dir,
                                   [*common, "save_images=false"]))
    assert res["arch"] == "plenoxels" and res["n_images"] == 2 and math.isfinite(res["psnr"])
    cfg = compose_cfg("render", tmp_path / "render", data_dir,
                      [*common, "path=test", "fps=2", "resolution=8"])
    assert Path(render_video.run(cfg)["video"]).is_file()
    for student in ("ngp", "plenoxels"):
        cfg = compose_cfg("distill", tmp_path / student, data_dir,
                          [f"student={student}", *TINY_DATA, *TINY_RUN, "preset=tiny",
                           f"teacher.ckpt={npz}", "trainer.max_steps=3"])
        res = distill.run(cfg)
        assert res["pair"] == f"plenoxels2{student}" and res["steps"] == 3
        assert math.isfinite(res["student"]["psnr"])


# --- bad files -------------------------------------------------------------------------------
def _save(p: Path, **changes) -> None:
    a = grid_arrays()
    a.update(changes)
    np.savez(p, **{k: v for k, v in a.items() if v is not None})


BAD = {
    "truncated": (lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
                  r"cannot be read as a checkpoint \(BadZipFile\): the file is truncated"),
    "missing_array": (lambda p, good: _save(p, radius=None),
                      r"svox2 grid lacks \['radius'\]"),
    "object_array": (lambda p, good: np.savez(p, **{**grid_arrays(), "radius": np.array(
        [{"r": 1}], dtype=object)}), r"object array 'radius'.*does not load"),
    "mlp_basis": (lambda p, good: _save(p, basis_type=np.array(255)),
                  r"basis_type 255 is not imported"),
    "background": (lambda p, good: _save(p, background_links=np.zeros((2, 2), np.int32),
                                         background_data=np.zeros((1, 2, 4), np.float32)),
                   r"multi-sphere background"),
    "bad_links": (lambda p, good: _save(p, links=np.full(R, 10**6, np.int32)),
                  r"links point outside"),
    "bad_sh": (lambda p, good: _save(p, sh_data=np.zeros((1, 5), np.float16)),
               r"are not \[N, 1\] and \[N, 3 \* basis_dim\]"),
    "other_npz": (lambda p, good: np.savez(p, a=np.zeros(3)),
                  r"zip archive but not a torch checkpoint nor an svox2 grid .*'a'.*"
                  r"pvdal reads, by content: .*svox2: an svox2 / Plenoxels grid"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_file_is_one_clear_error(name, npz, tmp_path):
    make, pattern = BAD[name]
    bad = tmp_path / "bad.npz"
    make(bad, npz)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(bad))}[: ].*" + pattern):
        load_field(bad, "teacher.ckpt")


def test_content_not_name_decides(npz, tmp_path):
    renamed = tmp_path / "model.pth"
    renamed.write_bytes(npz.read_bytes())
    assert detect_format(renamed) == "svox2"
    compressed = tmp_path / "c.ckpt"  # svox2's save(compress=True): deflated members
    with open(compressed, "wb") as fh:
        np.savez_compressed(fh, **grid_arrays())
    assert zipfile.ZipFile(compressed).infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    assert load_field(compressed).field.reso == list(R)
