"""eval.py / render.py / export.py on the tiny checkpoint; mesh extraction on an analytic sphere."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch import Tensor

from pvdal.fields.base import FieldOutput, RadianceField
from pvdal.io.checkpoint import load_field
from pvdal.io.export import density_volume, load_safetensors, marching_cubes, write_ply
from pvdal.tasks import evaluate, export, render_video
from pvdal.utils.errors import CheckpointError, ConfigError
from tests.conftest import ROOT, TINY_DATA, compose_cfg


@pytest.fixture
def surface_cfg(tmp_path, data_dir):
    def make(name: str, overrides: list[str]):
        return compose_cfg(name, tmp_path / "run", data_dir, ["progress=false", *overrides]
                           if name != "export" else overrides)
    return make


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Minimal PLY reader for what ``write_ply`` writes: vertices, faces, colours or None."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    head = raw[:end].decode().splitlines()
    nv = int(next(h for h in head if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in head if h.startswith("element face")).split()[-1])
    color = any("red" in h for h in head)
    if "format ascii 1.0" in head:
        rows = raw[end:].decode().splitlines()
        v = np.array([[float(x) for x in r.split()] for r in rows[:nv]])
        f = np.array([[int(x) for x in r.split()[1:]] for r in rows[nv:nv + nf]])
        return v[:, :3], f, (v[:, 3:].astype(np.uint8) if color else None)
    vt = [("p", "<f4", (3,))] + ([("c", "u1", (3,))] if color else [])
    v = np.frombuffer(raw, dtype=vt, count=nv, offset=end)
    f = np.frombuffer(raw, dtype=[("n", "u1"), ("i", "<i4", (3,))], count=nf,
                      offset=end + v.nbytes)
    assert (f["n"] == 3).all()
    return v["p"], f["i"], (v["c"] if color else None)


# --- eval ------------------------------------------------------------------------------------
def test_eval_matches_training_test_images(surface_cfg, tiny_teacher):
    cfg = surface_cfg("eval", [f"ckpt={tiny_teacher}"])
    res = evaluate.run(cfg)
    out = Path(cfg.paths.output_dir)
    m = json.loads((out / "metrics.json").read_text())
    for k in ("psnr", "ssim", "lpips", "fps", "num_params", "size_mb"):
        assert k in m
    assert m["psnr"] == res["psnr"] and math.isfinite(m["psnr"]) and m["num_params"] > 0
    assert m["n_images"] == 2 and m["fps"] > 0
    # data from the checkpoint, scene/background from the checkpoint: same pixels as training
    trained = tiny_teacher.parent.parent / "test_images" / "000.png"
    assert np.array_equal(iio.imread(out / "test_images" / "000.png"), iio.imread(trained))


def test_eval_data_override(surface_cfg, tiny_teacher):
    cfg = surface_cfg("eval", [f"ckpt={tiny_teacher}", "data=synthetic", *TINY_DATA,
                               "data.loader.n_test=1", "save_images=false"])
    assert evaluate.run(cfg)["n_images"] == 1


@pytest.mark.parametrize("bad", ["missing", "garbage"])
def test_bad_ckpt_names_the_file(surface_cfg, tmp_path, bad):
    path = tmp_path / "nope.ckpt"
    if bad == "garbage":
        path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        evaluate.run(surface_cfg("eval", [f"ckpt={path}"]))
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        load_safetensors(path)


def test_ckpt_required(surface_cfg):
    with pytest.raises(ConfigError, match="ckpt"):
        export.run(surface_cfg("export", []))


def test_eval_cli_subprocess(tmp_path, tiny_teacher):
    cmd = [sys.executable, str(ROOT / "eval.py"), f"ckpt={tiny_teacher}",
           f"hydra.run.dir={tmp_path}", "progress=false"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["psnr"] > 0
    assert (tmp_path / "test_images" / "001.png").is_file()


# --- render ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path,frames", [("spiral", 3), ("test", 2)])
def test_render_video(surface_cfg, tiny_teacher, path, frames):
    cfg = surface_cfg("render", [f"ckpt={tiny_teacher}", f"path={path}", "seconds=0.5",
                                 "fps=6", "resolution=12"])
    res = render_video.run(cfg)
    video = Path(res["video"])
    assert video.name == f"video_{path}.mp4" and video.parent == Path(cfg.paths.output_dir)
    assert not list(video.parent.glob(".*.tmp*")) and not list(video.parent.glob(".video*"))
    imgs = iio.imread(video, index=None)
    assert imgs.shape == (frames, 12, 24, 3)  # rgb | depth side by side


def test_orbit_and_spiral_paths():
    angles = torch.linspace(0, 2 * math.pi, 9)[:-1]
    pos = torch.stack([2 * angles.cos(), torch.full_like(angles, 1.0), 2 * angles.sin()], -1)
    c2w = render_video.look_at_origin(pos, torch.tensor([0.0, 1.0, 0.0]))
    orbit = render_video.orbit_path(c2w, 12)
    t = orbit[:, :, 3]
    assert torch.allclose(t.norm(dim=-1), torch.full((12,), math.sqrt(5.0)), atol=1e-4)
    assert torch.allclose(t[:, 1], torch.ones(12), atol=1e-4)  # same elevation
    assert torch.allclose(-orbit[:, :, 2], -t / t.norm(dim=-1, keepdim=True), atol=1e-5)
    R = orbit[:, :, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(12, 3, 3), atol=1e-5)
    ff = torch.eye(4)[:3].expand(5, 3, 4).clone()
    ff[:, 0, 3] = torch.linspace(-0.1, 0.1, 5)
    sp = render_video.spiral_path(ff, 10)
    assert torch.allclose(sp[:, :, :3], torch.eye(3).expand(10, 3, 3), atol=1e-6)
    assert sp[:, :, 3].sub(ff[:, :, 3].mean(0)).norm(dim=-1).max() < 0.2


# --- export ----------------------------------------------------------------------------------
def test_export_safetensors_reloads_identical(surface_cfg, tiny_teacher):
    res = export.run(surface_cfg("export", [f"ckpt={tiny_teacher}", "format=safetensors"]))
    a, b = load_field(tiny_teacher), load_safetensors(res["safetensors"])
    x, d = torch.rand(256, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(256, 3), dim=-1)
    with torch.no_grad():
        oa, ob = a.field(x, d), b.field(x, d)
    assert torch.equal(oa.sigma_raw, ob.sigma_raw) and torch.equal(oa.rgb, ob.rgb)
    assert torch.equal(a.grid.density, b.grid.density) and torch.equal(a.grid.binary,
                                                                       b.grid.binary)
    assert b.scene == a.scene and b.n_samples == a.n_samples and b.arch == a.arch
    assert torch.equal(a.background, b.background)
    head = json.loads(Path(res["header"]).read_text())
    for k in ("arch", "field_extra", "scene", "grid", "background", "n_samples", "pvdal_version"):
        assert k in head
    assert head["source"]["sha256"] == a.sha256
    # eval.py takes the export as ckpt= too (its header carries the data config)
    m = evaluate.run(surface_cfg("eval", [f"ckpt={res['safetensors']}", "save_images=false"]))
    assert m["psnr"] == evaluate.run(surface_cfg("eval", [f"ckpt={tiny_teacher}",
                                                          "save_images=false"]))["psnr"]


def test_export_mesh_of_tiny_checkpoint(surface_cfg, tiny_teacher):
    lf = load_field(tiny_teacher)
    thr = float(np.median(density_volume(lf.field.density, 12)))
    cfg = surface_cfg("export", [f"ckpt={tiny_teacher}", "format=mesh", "resolution=12",
                                 f"threshold={thr}"])
    res = export.run(cfg)
    v, f, c = read_ply(Path(res["mesh"]))
    assert len(v) == res["vertices"] > 0 and len(f) == res["faces"] > 0 and c is not None
    assert np.abs(v).max() <= 1.0 + 1e-6 and f.max() < len(v)
    with pytest.raises(ConfigError, match="threshold"):
        export.run(surface_cfg("export", [f"ckpt={tiny_teacher}", "resolution=4",
                                          "threshold=1e30"]))


class SphereField(RadianceField):
    """Analytic field: log-density k * (r - |x|), so density == 1 exactly on the sphere."""

    feature_dim = 3

    def __init__(self, radius: float = 0.5, k: float = 20.0) -> None:
        super().__init__()
        self.radius, self.k = radius, k

    def features(self, x: Tensor) -> Tensor:
        return x

    def decode(self, feat: Tensor, d: Tensor) -> FieldOutput:
        sigma_raw = self.k * (self.radius - feat.norm(dim=-1))
        rgb = (feat * 0.5 + 0.5).clamp(0, 1)
        return FieldOutput(sigma_raw, None, rgb)

    def param_groups(self) -> dict:
        return {"features": [], "decoder": []}


@pytest.mark.parametrize("binary", [True, False])
def test_sphere_mesh_radius(tmp_path, binary):
    from pvdal.io.export import face_normals, vertex_colors

    field, res, r = SphereField(0.5), 33, 0.5
    verts, faces = marching_cubes(density_volume(field.density, res), 1.0)
    voxel = 2.0 / (res - 1)
    radii = np.linalg.norm(verts, axis=-1)
    assert np.abs(radii - r).max() < voxel
    centres = verts[faces].mean(1)
    assert (np.einsum("ij,ij->i", face_normals(verts, faces), centres) > 0).mean() > 0.99
    colors = vertex_colors(field, verts, faces)
    write_ply(tmp_path / "s.ply", verts, faces, colors, binary=binary)
    v, f, c = read_ply(tmp_path / "s.ply")
    assert np.allclose(v, verts, atol=1e-5) and np.array_equal(f, faces)
    assert np.array_equal(c, colors)


def test_render_cli_bad_ckpt_subprocess(tmp_path):
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"\x00junk")
    cmd = [sys.executable, str(ROOT / "render.py"), f"ckpt={bad}", f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    errs = [ln for ln in res.stderr.splitlines() if "pvdal: error" in ln]
    assert len(errs) == 1 and "junk.ckpt" in errs[0] and "Traceback" not in res.stderr


def test_export_cli_missing_ckpt_subprocess(tmp_path):
    cmd = [sys.executable, str(ROOT / "export.py"), f"ckpt={tmp_path}/gone.ckpt",
           "format=safetensors", f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    errs = [ln for ln in res.stderr.splitlines() if "pvdal: error" in ln]
    assert len(errs) == 1 and "gone.ckpt" in errs[0] and "Traceback" not in res.stderr
