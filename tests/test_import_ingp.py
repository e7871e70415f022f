"""Importing an instant-ngp snapshot (``.msgpack`` / gzip-wrapped ``.ingp``): no public sample
file exists, so the test writes one from the spec (shared FORMATS.md: tcnn's flat fp16 parameter
vector, Morton-ordered density grid, cycled-axes frame) and checks hand-computed hash-grid values
at a dense and a hashed level, the MLPs against a numpy forward pass, the frame, the density
grid's Morton order, eval/render/distill through the task functions, and one clear error per
broken or foreign file."""

from __future__ import annotations

import functools
import gzip
import logging
import math
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from pvdal.encodings.sh import sh_basis
from pvdal.fields.ingp_native import EMPTY_RAW, IngpNativeField
from pvdal.io.checkpoint import load_field
from pvdal.io.formats import detect_format
from pvdal.tasks import distill, evaluate, render_video
from pvdal.utils.errors import CheckpointError
from tests import tcnn_reference as ref
from tests.conftest import TINY_DATA, TINY_RUN, compose_cfg

L, F, LOG2_T, BASE, PLS = 8, 4, 12, 4, 2.0  # levels 0-2 dense (4^3, 8^3, 16^3 <= 4096), 3+ hashed
SCALE, OFFSET = 0.33, [0.5, 0.5, 0.5]


def config(**enc) -> dict:
    return {"encoding": {"otype": "HashGrid", "n_levels": L, "n_features_per_level": F,
                         "log2_hashmap_size": LOG2_T, "base_resolution": BASE,
                         "per_level_scale": PLS, **enc},
            "network": {"otype": "FullyFusedMLP", "activation": "ReLU",
                        "output_activation": "None", "n_neurons": 64, "n_hidden_layers": 1},
            "dir_encoding": {"otype": "Composite", "nested": [
                {"n_dims_to_encode": 3, "otype": "SphericalHarmonics", "degree": 4},
                {"otype": "Identity"}]},
            "rgb_network": {"otype": "FullyFusedMLP", "activation": "ReLU",
                            "output_activation": "None", "n_neurons": 64, "n_hidden_layers": 2}}


def grid_rows(n_levels=L, base=BASE, pls=PLS, log2_t=LOG2_T) -> int:
    lv = ref.levels(n_levels, base, pls, log2_t)
    return lv[-1][2] + lv[-1][3]


def make_params(seed: int = 0, rows: int | None = None, n_pos: int = L * F, feat: int = F) -> dict:
    """fp16 weights in tcnn's order: density [64, n_pos], [16, 64]; rgb [64, 32], [64, 64],
    [16, 64]; then the hash table [rows, F]."""
    rng = np.random.default_rng(seed)
    rows = grid_rows() if rows is None else rows
    shapes = {"d0": (64, n_pos), "d1": (16, 64), "c0": (64, 32), "c1": (64, 64), "c2": (16, 64)}
    w = {k: (rng.normal(0, 1, s) / math.sqrt(s[1])).astype(np.float16) for k, s in shapes.items()}
    w["grid"] = rng.uniform(-1, 1, (rows, feat)).astype(np.float16)
    return w


def occupied_cells() -> np.ndarray:
    """Cascade 0's density grid (x, y, z): a ball of radius 0.3 around the centre, and (1, 2, 3)."""
    c = (np.arange(128) + 0.5) / 128
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    vals = np.where((x - 0.5) ** 2 + (y - 0.5) ** 2 + (z - 0.5) ** 2 < 0.09, 1.0, 0.0)
    vals[1, 2, 3] = 5.0
    return vals.astype(np.float16)


def morton_by_hand(x, y, z):
    """Bit b of x, y, z goes to bit 3b, 3b + 1, 3b + 2 (ints or integer arrays)."""
    out = 0
    for b in range(7):
        out |= ((x >> b) & 1) << (3 * b) | ((y >> b) & 1) << (3 * b + 1) | ((z >> b) & 1) << (
            3 * b + 2)
    return out


@functools.cache
def density_grid() -> bytes:
    """Cascade 0 in Morton order, computed bit by bit (independent of the importer's morton3d)."""
    i = np.arange(128, dtype=np.int64)
    x, y, z = np.meshgrid(i, i, i, indexing="ij")
    dg = np.zeros(128**3, np.float16)
    dg[morton_by_hand(x, y, z).reshape(-1)] = occupied_cells().reshape(-1)
    return dg.tobytes()


def snapshot(w: dict | None = None, cfg: dict | None = None, **snap) -> dict:
    w = make_params() if w is None else w
    flat = np.concatenate([w[k].reshape(-1) for k in ("d0", "d1", "c0", "c1", "c2", "grid")])
    root = dict(cfg or config())
    root["snapshot"] = {"params_type": "__half", "n_params": int(flat.size),
                        "params_binary": flat.astype(np.float16).tobytes(),
                        "density_grid_binary": density_grid(), "density_grid_size": 128,
                        "mode": "Nerf", "training_step": 1234,
                        "nerf": {"dataset": {"scale": SCALE, "offset": OFFSET, "aabb_scale": 1}},
                        "aabb": {"min": [0.0, 0.0, 0.0], "max": [1.0, 1.0, 1.0]}, **snap}
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ingp")
    data = msgpack.packb(snapshot(), use_bin_type=True)
    (d / "snap.msgpack").write_bytes(data)
    (d / "snap.ingp").write_bytes(gzip.compress(data))
    return {"msgpack": d / "snap.msgpack", "ingp": d / "snap.ingp"}


@pytest.fixture(scope="module")
def imported(files):
    return load_field(files["ingp"], "teacher.ckpt")


def test_import_reads_both_containers(files, caplog):
    for kind in ("msgpack", "ingp"):
        assert detect_format(files[kind]) == "ingp"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pvdal"):
            lf = load_field(files[kind])
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("import:")]
        assert len(lines) == 1 and "instant-ngp snapshot" in lines[0] and str(files[kind]) in \
            lines[0]
        assert "8 levels x 4 features" in lines[0] and "(3 dense levels)" in lines[0]
        f = lf.field
        assert isinstance(f, IngpNativeField) and lf.arch["native"] == "ingp"
        assert f.encoding.n_rows == grid_rows() and f.feature_dim == 33
        assert lf.meta["frame"]["ngp"]["scale"] == SCALE
        # marching step <= instant-ngp's sqrt(3)/1024 in its units (x 1.5 x 0.33 per pvdal unit)
        assert 2 * math.sqrt(3) / lf.n_samples * 1.5 * SCALE <= math.sqrt(3) / 1024 + 1e-12


def test_hash_grid_dense_and_hashed_levels_by_hand(imported):
    """Level 0 (4^3, dense: x + 4y + 16z) and level 3 (32^3 > 2^12: prime hash, mod 4096), by
    hand, and every level against the independent numpy tcnn model."""
    w = make_params()
    table = w["grid"].astype(np.float32)
    u = np.array([[0.3141, 0.7182, 0.5772], [0.05, 0.999, 0.5]], np.float32)
    enc = imported.field.encoding._torch_forward(torch.from_numpy(u)).detach().numpy()
    for m in range(len(u)):
        # level 0: scale 2^0 * 4 - 1 = 3, res 4, dense rows from 0
        pos = 3.0 * u[m].astype(np.float64) + 0.5
        c0, t = np.floor(pos).astype(int), pos - np.floor(pos)
        acc = np.zeros(F)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    x, y, z = c0 + (dx, dy, dz)
                    wt = (t[0] if dx else 1 - t[0]) * (t[1] if dy else 1 - t[1]) * (
                        t[2] if dz else 1 - t[2])
                    acc += wt * table[(x + 4 * y + 16 * z) % 64]
        np.testing.assert_allclose(enc[m, 0:F], acc, rtol=1e-5, atol=1e-6)
        # level 3: scale 2^3 * 4 - 1 = 31, res 32, hashed; rows start at 64 + 512 + 4096
        pos = 31.0 * u[m].astype(np.float64) + 0.5
        c0, t = np.floor(pos).astype(np.uint64), pos - np.floor(pos)
        acc = np.zeros(F)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    x, y, z = (int(v) for v in c0 + np.array((dx, dy, dz), np.uint64))
                    h = (x * 1) ^ ((y * 2654435761) & 0xFFFFFFFF) ^ ((z * 805459861) & 0xFFFFFFFF)
                    wt = (t[0] if dx else 1 - t[0]) * (t[1] if dy else 1 - t[1]) * (
                        t[2] if dz else 1 - t[2])
                    acc += wt * table[64 + 512 + 4096 + h % 4096]
        np.testing.assert_allclose(enc[m, 3 * F:4 * F], acc, rtol=1e-5, atol=1e-6)
    want, _ = ref.encode(u, table, L, BASE, PLS, LOG2_T)
    np.testing.assert_allclose(enc, want, rtol=1e-5, atol=1e-6)


def numpy_ngp(w: dict, p: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """instant-ngp's network by hand: density = exp(out0), rgb = logistic(rgb_net([16 density
    outputs, SH16(d)]))[:3], at instant-ngp positions p (aabb [0, 1]^3) and directions d."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    enc, _ = ref.encode(p.astype(np.float32), w["grid"].astype(np.float32), L, BASE, PLS, LOG2_T)
    h = np.maximum(enc @ g["d0"].T, 0) @ g["d1"].T
    sh = sh_basis(torch.from_numpy(d), 4).double().numpy()
    x = np.concatenate([h, sh], -1)
    x = np.maximum(np.maximum(x @ g["c0"].T, 0) @ g["c1"].T, 0) @ g["c2"].T
    return np.exp(h[:, 0]), 1 / (1 + np.exp(-x[:, :3]))


def test_network_and_frame_match_instant_ngp(imported):
    w = make_params()
    f = imported.field
    gen = np.random.default_rng(1)
    x = gen.uniform(-0.5, 0.5, (64, 3)).astype(np.float32)  # pvdal scene points
    d = gen.normal(size=(64, 3))
    d = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)
    # the frame by hand: NeRF world = 1.5 x; instant-ngp = (y, z, x) x 0.33 + 0.5
    p = np.stack([x[:, 1], x[:, 2], x[:, 0]], -1) * 1.5 * SCALE + 0.5
    d_ngp = np.stack([d[:, 1], d[:, 2], d[:, 0]], -1)
    torch.testing.assert_close(f.to_ngp(torch.from_numpy(x)), torch.from_numpy(p).float())
    dens, rgb = numpy_ngp(w, p, d_ngp)
    out = f.ingp_outputs(torch.from_numpy(p).float(), torch.from_numpy(d_ngp))
    np.testing.assert_allclose(out["density"].numpy(), dens, rtol=1e-4)
    np.testing.assert_allclose(out["rgb"].numpy(), rgb, rtol=1e-4, atol=1e-5)
    # what pvdal's renderer sees: density per pvdal unit = instant-ngp's x 1.5 x 0.33 where
    # instant-ngp samples (inside the ball of the density grid), zero elsewhere
    with torch.no_grad():
        o = f.decode(f.features(torch.from_numpy(x)), torch.from_numpy(d))
    in_ball = ((p - 0.5) ** 2).sum(-1) < 0.09 - 2e-3
    out_ball = ((p - 0.5) ** 2).sum(-1) > 0.09 + 2e-3
    assert in_ball.any() and out_ball.any()
    dens_p = f.activate(o.sigma_raw).numpy()
    np.testing.assert_allclose(dens_p[in_ball], dens[in_ball] * 1.5 * SCALE, rtol=1e-4)
    assert (o.sigma_raw.numpy()[out_ball] == EMPTY_RAW).all()
    np.testing.assert_allclose(o.rgb.numpy(), rgb, rtol=1e-4, atol=1e-5)


def test_density_grid_morton_order_and_occupancy(imported):
    """Morton index 53 = cell (1, 2, 3) (x bits at 3b, y at 3b+1, z at 3b+2): occupied alone in
    its corner; pvdal's occupancy grid leaves out no point instant-ngp would sample."""
    assert morton_by_hand(1, 2, 3) == 53
    bits = imported.field.bitfield[0]
    assert bits[1, 2, 3] and not bits[3, 2, 1] and not bits[2, 1, 3] and not bits[0, 0, 0]
    assert bits[64, 64, 64]
    pts = torch.rand(100_000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sampled = imported.field.sampled(imported.field.to_ngp(pts))
    skipped = ~imported.grid.occupied(pts)
    assert 0.3 < skipped.float().mean() < 0.99
    assert not (skipped & sampled).any()


def ingp_render(f: IngpNativeField, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """instant-ngp's marcher, written independently of pvdal's: rays in instant-ngp space from
    the aabb entry, fixed steps of sqrt(3)/1024 (cone angle 0), samples its bitfield skips are
    skipped, alpha = 1 - exp(-density * dt), white background. Per-point values from
    ``ingp_outputs`` (checked against numpy above)."""
    dt = math.sqrt(3) / 1024
    on, dn = f.to_ngp(o), f.dir_to_ngp(d)
    t1, t2 = (0.0 - on) / dn, (1.0 - on) / dn
    t = torch.minimum(t1, t2).amax(-1).clamp_min(0)
    tmax = torch.maximum(t1, t2).amin(-1)
    n = int(((tmax - t).clamp_min(0) / dt).max()) + 1
    ts = t[:, None] + dt * torch.arange(n)  # [rays, n]: every step at once
    pts = on[:, None, :] + ts[..., None] * dn[:, None, :]
    out = f.ingp_outputs(pts.reshape(-1, 3), dn[:, None, :].expand_as(pts).reshape(-1, 3))
    a = (1 - torch.exp(-out["density"] * dt)).view(ts.shape)
    a = torch.where((ts <= tmax[:, None]) & out["sampled"].view(ts.shape), a, torch.zeros_like(a))
    trans = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1 - a[:, :-1]], 1), 1)
    rgb = ((trans * a)[..., None] * out["rgb"].view(*ts.shape, 3)).sum(1)
    return rgb + (trans[:, -1] * (1 - a[:, -1]))[:, None]


def test_renders_match_an_instant_ngp_marcher(imported, tmp_path):
    """pvdal's render of a test view (its rays mapped by the imported frame) equals instant-ngp's
    marcher on the same rays: the frame, the density per unit and the skipping agree."""
    from pvdal import metrics
    from pvdal.data.scenes import load_synthetic
    from pvdal.tasks.evaluate import render_view

    scene = load_synthetic(tmp_path, 0, 12, 1, 1, 1)
    o, d = scene.image_rays(scene.test, 0)
    img = render_view(imported, scene, scene.test, 0, imported.n_samples, 1 << 14)["rgb"]
    ref_img = ingp_render(imported.field, o, d).view(img.shape)
    assert ref_img.min() < 0.8  # the occupied ball is in view
    assert float(metrics.psnr(img, ref_img)) > 45.0  # measured: 71 dB


def test_default_per_level_scale_and_float_params(tmp_path):
    """``per_level_scale`` absent: instant-ngp's exp(ln(2048 * aabb_scale / base) / (L - 1)); a
    ``float`` params_type loads too."""
    cfg = config(n_levels=16, n_features_per_level=2, base_resolution=16)
    del cfg["encoding"]["per_level_scale"]
    pls = float(np.exp(np.log(np.float32(2048.0 / 16)) / 15))
    rows = grid_rows(16, 16, np.float32(pls), LOG2_T)
    w = make_params(rows=rows, n_pos=32, feat=2)
    root = snapshot(w, cfg)
    flat = np.frombuffer(root["snapshot"]["params_binary"], np.float16).astype(np.float32)
    root["snapshot"].update(params_type="float", params_binary=flat.tobytes())
    p = tmp_path / "plain.msgpack"
    p.write_bytes(msgpack.packb(root, use_bin_type=True))
    f = load_field(p).field
    assert np.float32(f.encoding.per_level_scale) == np.float32(pls)
    assert f.encoding.n_rows == rows


def test_eval_render_distill_read_the_file(files, tmp_path, data_dir):
    common = [f"ckpt={files['ingp']}", "progress=false", "data=synthetic", *TINY_DATA]
    res = evaluate.run(compose_cfg("eval", tmp_path / "eval", data_dir,
                                   [*common, "save_images=false"]))
    assert res["arch"] == "ngp" and res["n_images"] == 2 and math.isfinite(res["psnr"])
    cfg = compose_cfg("render", tmp_path / "render", data_dir,
                      [*common, "path=test", "fps=2", "resolution=8"])
    assert Path(render_video.run(cfg)["video"]).is_file()
    cfg = compose_cfg("distill", tmp_path / "ngp", data_dir,
                      ["student=ngp", *TINY_DATA, *TINY_RUN, "preset=tiny",
                       f"teacher.ckpt={files['msgpack']}", "trainer.max_steps=3"])
    res = distill.run(cfg)
    assert res["pair"] == "ngp2ngp" and res["steps"] == 3 and math.isfinite(res["student"]["psnr"])


# --- bad files -------------------------------------------------------------------------------
def _packed(root) -> bytes:
    return msgpack.packb(root, use_bin_type=True)


def _bad_params(p, files):
    root = snapshot()
    root["snapshot"]["params_binary"] = root["snapshot"]["params_binary"][:-20]
    p.write_bytes(gzip.compress(_packed(root)))


def _dense_grid(p, files):
    root = snapshot()
    root["encoding"]["otype"] = "DenseGrid"
    p.write_bytes(_packed(root))


BAD = {
    "truncated_ingp": (lambda p, fl: p.write_bytes(fl["ingp"].read_bytes()[:4000]),
                       r"(truncated or damaged)"),
    "truncated_msgpack": (lambda p, fl: p.write_bytes(fl["msgpack"].read_bytes()[:5000]),
                          r"truncated or damaged"),
    "png_named_ingp": (lambda p, fl: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)),
                       r"is not a file pvdal can read \(a PNG image\)"),
    "gzip_of_text": (lambda p, fl: p.write_bytes(gzip.compress(b"hello world")),
                     r"is a gzip file but not an instant-ngp snapshot"),
    "other_msgpack": (lambda p, fl: p.write_bytes(_packed({"a": 1, "b": [1, 2]})),
                      r"MessagePack map but not an instant-ngp snapshot .*'a', 'b'.*"
                      r"pvdal reads, by content: .*ingp: an instant-ngp snapshot"),
    "params_count": (_bad_params, r"params_binary holds \d+ parameters; the network config "
                     r"needs \d+"),
    "dense_grid": (_dense_grid, r"encoding 'DenseGrid' is not imported"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_file_is_one_clear_error(name, files, tmp_path):
    make, pattern = BAD[name]
    bad = tmp_path / "bad.ingp"
    make(bad, files)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(bad))}[: ].*" + pattern):
        load_field(bad, "teacher.ckpt")
