"""Importing a torch-ngp ``.pth``: no public sample file exists, so the test writes one from the
spec (shared FORMATS.md: torch-ngp's grid encoder with stride res + 1, bias-free MLPs, Morton
bitfield, cycled-axes frame with command-line scale/offset) and checks hand-computed grid values
at a dense and a hashed level, the MLPs against a numpy forward pass, the frame, the bitfield,
eval/distill through the task functions, and one clear error per broken or foreign file."""

from __future__ import annotations

import io
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pvdal.encodings.sh import sh_basis
from pvdal.fields.ingp_native import EMPTY_RAW
from pvdal.fields.torch_ngp_native import TorchNgpNativeField
from pvdal.io.checkpoint import load_field
from pvdal.io.formats import detect_format
from pvdal.tasks import distill, evaluate
from pvdal.utils.errors import CheckpointError
from tests.conftest import TINY_DATA, TINY_RUN, compose_cfg

L, C, LOG2_T, BASE, BOUND = 16, 2, 13, 16, 1.0
B = float(np.exp2(np.log2(2048 * BOUND / BASE) / (L - 1)))  # torch-ngp's per_level_scale
SCALE = 0.8  # torch-ngp's README recipe for the synthetic scenes (--scale 0.8 --bound 1)


def offsets_by_spec() -> list[int]:
    """Sizes min(T, (ceil(base * b^l) + 1)^3), rounded up to 8 (FORMATS.md)."""
    out = [0]
    for lv in range(L):
        n = min(2**LOG2_T, (math.ceil(BASE * B**lv) + 1) ** 3)
        out.append(out[-1] + (n + 7) // 8 * 8)
    return out


def morton_by_hand(x, y, z):
    out = 0
    for b in range(7):
        out = out | ((x >> b) & 1) << (3 * b) | ((y >> b) & 1) << (3 * b + 1) | (
            (z >> b) & 1) << (3 * b + 2)
    return out


def model_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    offs = offsets_by_spec()
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731
    w = {f"sigma_net.{i}.weight": t(rng.normal(0, 1, s) / math.sqrt(s[1]))
         for i, s in enumerate([(64, 32), (16, 64)])}
    w |= {f"color_net.{i}.weight": t(rng.normal(0, 1, s) / math.sqrt(s[1]))
          for i, s in enumerate([(64, 31), (64, 64), (3, 64)])}
    # a ball of radius 0.5 (torch-ngp units) is occupied, and cell (1, 2, 3) alone in its corner
    c = ((np.arange(128) + 0.5) / 128 * 2 - 1) * BOUND
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    occ = (x**2 + y**2 + z**2) < 0.25
    occ[1, 2, 3] = True
    i = np.arange(128, dtype=np.int64)
    bits = np.zeros(128**3, bool)
    bits[morton_by_hand(*np.meshgrid(i, i, i, indexing="ij")).reshape(-1)] = occ.reshape(-1)
    return {"aabb_train": torch.tensor([-BOUND] * 3 + [BOUND] * 3),
            "aabb_infer": torch.tensor([-BOUND] * 3 + [BOUND] * 3),
            "density_grid": torch.from_numpy(occ.reshape(1, -1).astype(np.float32) * 20),
            "density_bitfield": torch.from_numpy(np.packbits(bits, bitorder="little")),
            "encoder.embeddings": t(rng.uniform(-1, 1, (offs[-1], C))),
            "encoder.offsets": torch.tensor(offs, dtype=torch.int32), **w}


def write(path: Path, scale: float | None = SCALE, **model) -> Path:
    m = model_state()
    m.update(model)
    torch.save({"epoch": 30, "global_step": 3000, "stats": {"loss": [0.1, 0.05]},
                "mean_count": 12, "mean_density": 4.2,
                "model": {k: v for k, v in m.items() if v is not None}}, path)
    if scale is not None:
        Path(str(path) + ".frame.json").write_text(json.dumps({"scale": scale,
                                                               "offset": [0, 0, 0]}))
    return path


@pytest.fixture(scope="module")
def pth(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("tngp") / "ngp_ep0030.pth")


@pytest.fixture(scope="module")
def imported(pth):
    return load_field(pth, "teacher.ckpt")


def test_import_reads_the_file_safely(pth, tmp_path, monkeypatch, caplog):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real(*a, **k))
    with caplog.at_level(logging.INFO, logger="pvdal"):
        lf = load_field(pth)
    assert loads and all(k.get("weights_only") is True for k in loads)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("import:")]
    assert len(lines) == 1 and "torch-ngp model" in lines[0] and "(1 dense levels)" in lines[0]
    assert "x 0.8 + [0.0, 0.0, 0.0]" in lines[0] and ".frame.json" in lines[0]
    f = lf.field
    assert isinstance(f, TorchNgpNativeField) and lf.arch["native"] == "torch-ngp"
    assert f.encoder.offsets.tolist() == offsets_by_spec() and f.feature_dim == 33
    assert 2 * math.sqrt(3) / lf.n_samples * 1.5 * SCALE <= 2 * math.sqrt(3) / 1024 + 1e-12
    assert detect_format(pth) == "torch-ngp"
    # without the sidecar: torch-ngp's defaults, said in a warning
    bare = write(tmp_path / "bare.pth", scale=None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pvdal"):
        assert load_field(bare).field.ngp_scale == 0.33
    assert any("--scale/--offset are not in bare.pth" in r.getMessage() for r in caplog.records)


def test_grid_encoder_dense_and_hashed_levels_by_hand(imported):
    """Level 0: scale 15, res 16, dense with stride 17 (x + 17y + 289z); level 1: scale
    exp2f(S) * 16 - 1 in float32, hashed (primes) mod 8192, rows from 4920."""
    table = model_state()["encoder.embeddings"].numpy()
    offs = offsets_by_spec()
    assert offs[:3] == [0, 4920, 4920 + 8192]
    u = np.array([[0.3141, 0.7182, 0.5772], [0.02, 0.98, 0.5]], np.float32)
    enc = imported.field.encoder(torch.from_numpy(u)).detach().numpy()
    f32 = np.float32
    s1 = f32(f32(np.exp2(f32(np.log2(B)))) * f32(16)) - f32(1)
    for m in range(len(u)):
        for lvl, scale in ((0, 15.0), (1, float(s1))):
            pos = (u[m].astype(np.float64) * scale + 0.5).astype(np.float32).astype(np.float64)
            c0, t = np.floor(pos).astype(np.int64), pos - np.floor(pos)
            acc = np.zeros(C)
            for dx in (0, 1):
                for dy in (0, 1):
                    for dz in (0, 1):
                        x, y, z = (int(v) for v in c0 + (dx, dy, dz))
                        if lvl == 0:
                            row = (x + 17 * y + 289 * z) % 4920
                        else:
                            row = (x ^ ((y * 2654435761) & 0xFFFFFFFF)
                                   ^ ((z * 805459861) & 0xFFFFFFFF)) % 8192
                        wt = (t[0] if dx else 1 - t[0]) * (t[1] if dy else 1 - t[1]) * (
                            t[2] if dz else 1 - t[2])
                        acc += wt * table[offs[lvl] + row]
            np.testing.assert_allclose(enc[m, lvl * C:(lvl + 1) * C], acc, rtol=1e-5, atol=1e-6)


def test_network_frame_and_bitfield_match_torch_ngp(imported):
    st = {k: v.double().numpy() for k, v in model_state().items() if "_net." in k}
    f = imported.field
    gen = np.random.default_rng(2)
    x = gen.uniform(-0.5, 0.5, (64, 3)).astype(np.float32)
    d = gen.normal(size=(64, 3))
    d = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)
    p = np.stack([x[:, 1], x[:, 2], x[:, 0]], -1) * 1.5 * SCALE  # offset 0
    d_t = np.stack([d[:, 1], d[:, 2], d[:, 0]], -1)
    torch.testing.assert_close(f.to_ngp(torch.from_numpy(x)), torch.from_numpy(p).float())
    with torch.no_grad():
        enc = f.encoder(torch.from_numpy((p + BOUND) / (2 * BOUND)).float()).double().numpy()
    h = np.maximum(enc @ st["sigma_net.0.weight"].T, 0) @ st["sigma_net.1.weight"].T
    sh = sh_basis(torch.from_numpy(d_t), 4).double().numpy()
    g = np.concatenate([sh, h[:, 1:]], -1)
    for i in range(3):
        g = g @ st[f"color_net.{i}.weight"].T
        g = np.maximum(g, 0) if i < 2 else g
    rgb = 1 / (1 + np.exp(-g))
    out = f.torch_ngp_outputs(torch.from_numpy(p).float(), torch.from_numpy(d_t))
    np.testing.assert_allclose(out["sigma"].numpy(), np.exp(h[:, 0]), rtol=1e-4)
    np.testing.assert_allclose(out["rgb"].numpy(), rgb, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        o = f.decode(f.features(torch.from_numpy(x)), torch.from_numpy(d))
    r2 = (p**2).sum(-1)
    inb, outb = r2 < 0.25 - 0.02, r2 > 0.25 + 0.02
    assert inb.any() and outb.any()
    np.testing.assert_allclose(f.activate(o.sigma_raw).numpy()[inb],
                               np.exp(h[inb, 0]) * 1.5 * SCALE, rtol=1e-4)
    assert (o.sigma_raw.numpy()[outb] == EMPTY_RAW).all()
    np.testing.assert_allclose(o.rgb.numpy(), rgb, rtol=1e-4, atol=1e-5)
    # Morton index 53 = cell (1, 2, 3); occupancy grid covers every sampled point
    assert morton_by_hand(1, 2, 3) == 53
    assert f.bitfield[0, 1, 2, 3] and not f.bitfield[0, 3, 2, 1] and f.bitfield[0, 64, 64, 64]
    pts = torch.rand(100_000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    skipped = ~imported.grid.occupied(pts)
    assert 0.3 < skipped.float().mean() < 0.99
    assert not (skipped & f.sampled(f.to_ngp(pts))).any()


def torch_ngp_render(f: TorchNgpNativeField, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """torch-ngp's marcher (dt_gamma 0), written independently of pvdal's: in its space from the
    aabb entry, steps of 2 sqrt(3) / 1024, samples its bitfield skips are skipped, alpha = 1 -
    exp(-sigma * dt), white background. Per-point values from ``torch_ngp_outputs``."""
    dt = 2 * math.sqrt(3) / 1024
    on, dn = f.to_ngp(o), f.dir_to_ngp(d)
    t1, t2 = (-BOUND - on) / dn, (BOUND - on) / dn
    t = torch.minimum(t1, t2).amax(-1).clamp_min(0.2)  # torch-ngp's min_near
    tmax = torch.maximum(t1, t2).amin(-1)
    n = int(((tmax - t).clamp_min(0) / dt).max()) + 1
    ts = t[:, None] + dt * torch.arange(n)  # [rays, n]: every step at once
    pts = on[:, None, :] + ts[..., None] * dn[:, None, :]
    out = f.torch_ngp_outputs(pts.reshape(-1, 3), dn[:, None, :].expand_as(pts).reshape(-1, 3))
    a = (1 - torch.exp(-out["sigma"] * dt)).view(ts.shape)
    a = torch.where((ts <= tmax[:, None]) & out["sampled"].view(ts.shape), a, torch.zeros_like(a))
    trans = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1 - a[:, :-1]], 1), 1)
    rgb = ((trans * a)[..., None] * out["rgb"].view(*ts.shape, 3)).sum(1)
    return rgb + (trans[:, -1] * (1 - a[:, -1]))[:, None]


def test_renders_match_a_torch_ngp_marcher(imported, tmp_path):
    from pvdal import metrics
    from pvdal.data.scenes import load_synthetic
    from pvdal.tasks.evaluate import render_view

    scene = load_synthetic(tmp_path, 0, 12, 1, 1, 1)
    o, d = scene.image_rays(scene.test, 0)
    img = render_view(imported, scene, scene.test, 0, imported.n_samples, 1 << 14)["rgb"]
    ref_img = torch_ngp_render(imported.field, o, d).view(img.shape)
    assert ref_img.min() < 0.8
    assert float(metrics.psnr(img, ref_img)) > 45.0  # measured: 66 dB


def test_eval_and_distill_read_the_file(pth, tmp_path, data_dir):
    res = evaluate.run(compose_cfg("eval", tmp_path / "eval", data_dir,
                                   [f"ckpt={pth}", "progress=false", "data=synthetic",
                                    *TINY_DATA, "save_images=false"]))
    assert res["arch"] == "ngp" and res["n_images"] == 2 and math.isfinite(res["psnr"])
    cfg = compose_cfg("distill", tmp_path / "d", data_dir,
                      ["student=tensorf", *TINY_DATA, *TINY_RUN, "preset=tiny",
                       f"teacher.ckpt={pth}", "trainer.max_steps=3"])
    res = distill.run(cfg)
    assert res["pair"] == "ngp2tensorf" and res["steps"] == 3
    assert math.isfinite(res["student"]["psnr"])


# --- bad files -------------------------------------------------------------------------------
def _unsafe(p: Path) -> None:
    torch.save({"model": {**model_state(), "cls": io.StringIO}, "epoch": 1}, p)


def _tcnn(p: Path) -> None:
    torch.save({"model": {"encoder.params": torch.zeros(8), "sigma_net.params": torch.zeros(8),
                          "aabb_infer": torch.zeros(6)}, "epoch": 1}, p)


def _offsets(p: Path) -> None:  # a grid made with another base resolution
    m = model_state()
    m["encoder.offsets"] = m["encoder.offsets"] + torch.arange(L + 1, dtype=torch.int32) * 8
    m["encoder.embeddings"] = torch.zeros(int(m["encoder.offsets"][-1]), C)
    torch.save({"model": m, "epoch": 1}, p)


def _bad_frame(p: Path) -> None:
    write(p)
    Path(str(p) + ".frame.json").write_text('{"scale": "big"}')


BAD = {
    "truncated": (lambda p: p.write_bytes(write(p).read_bytes()[:30000]),
                  r"cannot be read as a checkpoint \(BadZipFile\): the file is truncated"),
    "unsafe_global": (_unsafe, r"torch-ngp checkpoint needs _io\.StringIO, which pvdal does "
                      r"not load"),
    "tcnn_variant": (_tcnn, r"torch-ngp checkpoint of its tcnn variant"),
    "other_offsets": (_offsets, r"encoder\.offsets .* do not match torch-ngp's default grid"),
    "bg_net": (lambda p: write(p, **{"bg_net.0.weight": torch.zeros(2, 2)}),
               r"has a background network"),
    "missing": (lambda p: write(p, aabb_infer=None), r"torch-ngp model lacks \['aabb_infer'\]"),
    "bad_sh_width": (lambda p: write(p, **{"color_net.0.weight": torch.zeros(64, 30)}),
                     r"sigma_net .* / color_net .* do not chain"),
}


@pytest.mark.parametrize("name", [*BAD, "bad_frame"])
def test_bad_file_is_one_clear_error(name, tmp_path):
    bad = tmp_path / "bad.pth"
    if name == "bad_frame":
        _bad_frame(bad)
        with pytest.raises(CheckpointError, match=r"bad\.pth\.frame\.json: is not a torch-ngp "
                           r"frame"):
            load_field(bad)
        return
    make, pattern = BAD[name]
    make(bad)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(bad))}[: ].*(" + pattern + ")"):
        load_field(bad, "teacher.ckpt")
