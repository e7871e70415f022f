"""Importing a nerfstudio nerfacto run trained with ``--pipeline.model.implementation tcnn``. No
such run can be made here (tiny-cuda-nn needs CUDA), so the test writes one from the spec (shared
FORMATS.md "nerfstudio run" and "tiny-cuda-nn hash grid"; nerfstudio 1.1.5 ``MLPWithHashEncoding``
/ ``MLP`` / ``SHEncoding`` tcnn branches; tcnn's NetworkWithInputEncoding, FullyFusedMLP, Identity
and SH encodings): the real fixture's config.yml with the tcnn fields, a dataparser transform, and
a checkpoint with random fp16 flat parameter vectors of the right sizes. Checked: a dense and a
hashed grid level by hand, the whole field against a numpy forward pass written from tcnn's source,
the frame, eval/render through the task functions, and clear errors."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pvdal.fields.nerfacto_native import NerfactoNativeField
from pvdal.io.checkpoint import load_field
from pvdal.io.formats import detect_format
from pvdal.tasks import evaluate, render_video
from pvdal.utils.errors import CheckpointError
from tests import tcnn_reference as ref
from tests.conftest import TINY_DATA, compose_cfg

REAL = Path(__file__).parent / "data" / "nerfstudio_nerfacto"
L, F, LOG2_T, BASE, MAX = 8, 2, 10, 4, 64  # levels 0-2 dense (4^3, 6^3, 9^3 <= 1024), 3+ hashed
PLS = float(np.exp((np.log(MAX) - np.log(BASE)) / (L - 1)))  # nerfstudio's growth_factor
N_IMAGES, APP = 5, 32
T = [[0.0, 1.0, 0.0, 0.1], [0.0, 0.0, 1.0, -0.2], [1.0, 0.0, 0.0, 0.05]]  # data -> nerfstudio
SCALE = 0.8


GRID = {"L": L, "base": BASE, "pls": PLS, "log2_t": LOG2_T}


def grid_rows(grid: dict = GRID) -> int:
    lv = ref.levels(grid["L"], grid["base"], grid["pls"], grid["log2_t"])
    return lv[-1][2] + lv[-1][3]


def weights(seed: int = 0, grid: dict = GRID) -> dict[str, np.ndarray]:
    """fp16 as tcnn stores them: base [64, L * 2], [16, 64]; head [64, 64] (input 16 + 15 + 32 +
    pad 1), [64, 64], [16, 64]; the grid [rows, 2]; float32 appearance codes."""
    rng = np.random.default_rng(seed)
    shapes = {"b0": (64, grid["L"] * F), "b1": (16, 64), "h0": (64, 64), "h1": (64, 64),
              "h2": (16, 64)}
    w = {k: (rng.normal(0, 1.5, s) / math.sqrt(s[1])).astype(np.float16) for k, s in shapes.items()}
    w["grid"] = rng.uniform(-1, 1, (grid_rows(grid), F)).astype(np.float16)
    w["app"] = rng.normal(0, 0.5, (N_IMAGES, APP)).astype(np.float32)
    return w


def config_text(impl: str = "tcnn") -> str:
    text = (REAL / "config.yml").read_text()
    for key, val in (("implementation", impl), ("num_levels", L), ("base_res", BASE),
                     ("max_res", MAX), ("log2_hashmap_size", LOG2_T)):
        text, n = re.subn(rf"(?m)^    {key}: .*$", f"    {key}: {val}", text)
        assert n == 1, key
    return text


def write_run(run: Path, w: dict, impl: str = "tcnn", text: str | None = None,
              transform: tuple = (T, SCALE), **extra) -> Path:
    (run / "nerfstudio_models").mkdir(parents=True, exist_ok=True)
    (run / "config.yml").write_text(config_text(impl) if text is None else text)
    (run / "dataparser_transforms.json").write_text(json.dumps(
        {"transform": transform[0], "scale": transform[1]}))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    base = np.concatenate([w["b0"].ravel(), w["b1"].ravel(), w["grid"].ravel()])
    head = np.concatenate([w["h0"].ravel(), w["h1"].ravel(), w["h2"].ravel()])
    f = "_model.field."
    pipe = {f + "aabb": torch.tensor([[-1.0] * 3, [1.0] * 3]), f + "max_res": torch.tensor(MAX),
            f + "num_levels": torch.tensor(L), f + "log2_hashmap_size": torch.tensor(LOG2_T),
            f + "embedding_appearance.embedding.weight": t(w["app"]),
            f + "direction_encoding.tcnn_encoding.params": torch.zeros(0, dtype=torch.half),
            f + "position_encoding.tcnn_encoding.params": torch.zeros(0, dtype=torch.half),
            f + "mlp_base.model.params": t(base), f + "mlp_head.tcnn_encoding.params": t(head),
            "_model.proposal_networks.0.mlp_base.model.params": torch.zeros(64, dtype=torch.half),
            **extra}
    ckpt = run / "nerfstudio_models" / "step-000000100.ckpt"
    torch.save({"step": 100, "pipeline": pipe}, ckpt)
    return ckpt


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("ns_tcnn") / "run"
    write_run(r, weights())
    return r


@pytest.fixture(scope="module")
def imported(run):
    return load_field(run, "teacher.ckpt")


def test_import_reads_the_tcnn_layout(run, caplog):
    assert {detect_format(p) for p in (run, run / "config.yml")} == {"nerfstudio"}
    with caplog.at_level(logging.INFO, logger="pvdal"):
        lf = load_field(run / "nerfstudio_models" / "step-000000100.ckpt")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("import:")]
    assert len(lines) == 1 and "nerfstudio nerfacto (tcnn)" in lines[0] and "step 100" in lines[0]
    f = lf.field
    assert isinstance(f, NerfactoNativeField) and f.tcnn and lf.arch["field"][
        "implementation"] == "tcnn"
    assert f.mlp_base.encoding.n_rows == grid_rows() and f.feature_dim == 17
    assert sum(f.mlp_base.encoding.layout.dense) == 3
    assert f.length_scale == pytest.approx(1.5 * SCALE)
    # the field's own state round-trips (how pvdal saves a teacher's arch + state)
    g = NerfactoNativeField(**{k: v for k, v in lf.arch["field"].items() if k != "_target_"})
    g.load_state_dict(f.state_dict(), strict=True)


def test_hash_grid_dense_and_hashed_levels_by_hand(imported):
    """Level 0 (scale 3, res 4: dense, x + 4y + 16z) and level 3 (res 14, 14^3 > 2^10: prime
    hash mod 1024) by hand; every level against the independent numpy model of tcnn's grid."""
    table = weights()["grid"].astype(np.float32)
    lv = ref.levels(L, BASE, PLS, LOG2_T)
    assert [v[1] for v in lv[:4]] == [4, 6, 9, 14] and lv[3][2] == 64 + 216 + 736
    u = np.array([[0.3141, 0.7182, 0.5772], [0.05, 0.999, 0.5], [0.9, 0.1, 0.37]], np.float32)
    enc = imported.field.encode(torch.from_numpy(u)).detach().numpy()

    def level(m: int, scale: float, index) -> np.ndarray:
        pos = float(scale) * u[m].astype(np.float64) + 0.5
        c0, t = np.floor(pos).astype(np.int64), pos - np.floor(pos)
        acc = np.zeros(F)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    wt = (t[0] if dx else 1 - t[0]) * (t[1] if dy else 1 - t[1]) * (
                        t[2] if dz else 1 - t[2])
                    acc += wt * table[index(c0[0] + dx, c0[1] + dy, c0[2] + dz)]
        return acc

    for m in range(len(u)):
        dense = level(m, 3.0, lambda x, y, z: (x + 4 * y + 16 * z) % 64)
        np.testing.assert_allclose(enc[m, 0:F], dense, rtol=1e-5, atol=1e-6)
        hashed = level(m, lv[3][0], lambda x, y, z: 1016 + ((x ^ ((y * 2654435761) & 0xFFFFFFFF)
                                                            ^ ((z * 805459861) & 0xFFFFFFFF))
                                                           % 1024))
        np.testing.assert_allclose(enc[m, 3 * F:4 * F], hashed, rtol=1e-5, atol=1e-6)
    want, _ = ref.encode(u, table, L, BASE, PLS, LOG2_T)
    np.testing.assert_allclose(enc, want, rtol=1e-5, atol=1e-6)


def tcnn_sh16(v: np.ndarray) -> np.ndarray:
    """tcnn's ``sh_enc`` (common_device.h), degree 4, as written there."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    x2, y2, z2 = x * x, y * y, z * z
    return np.stack([
        np.full_like(x, 0.28209479177387814), -0.48860251190291987 * y,
        0.48860251190291987 * z, -0.48860251190291987 * x, 1.0925484305920792 * x * y,
        -1.0925484305920792 * y * z, 0.94617469575755997 * z2 - 0.31539156525251999,
        -1.0925484305920792 * x * z, 0.54627421529603959 * (x2 - y2),
        0.59004358992664352 * y * (-3 * x2 + y2), 2.8906114426405538 * x * y * z,
        0.45704579946446572 * y * (1 - 5 * z2), 0.3731763325901154 * z * (5 * z2 - 3),
        0.45704579946446572 * x * (1 - 5 * z2), 1.4453057213202769 * z * (x2 - y2),
        0.59004358992664352 * x * (-x2 + 3 * y2)], -1)


def numpy_nerfacto_tcnn(w: dict, p: np.ndarray, d: np.ndarray, grid: dict = GRID,
                        init_density: float = 0.01, mean_code: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
    """nerfstudio's NerfactoField (tcnn) at nerfstudio points p, unit directions d: L-inf
    contraction, (p + 2) / 4, selector; tcnn grid; base MLP (no bias, ReLU); density 0.01 *
    exp(out0); head on [SH16 of (2 * (d + 1) / 2 - 1), geo15, mean code (or zeros), 1] ->
    sigmoid[:3]."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    mag = np.abs(p).max(-1, keepdims=True)
    c = np.where(mag < 1, p, (2 - 1 / mag) * p / mag)
    u = (c + 2) / 4
    sel = ((u > 0) & (u < 1)).all(-1)
    enc, _ = ref.encode((u * sel[:, None]).astype(np.float32), w["grid"].astype(np.float32),
                        grid["L"], grid["base"], grid["pls"], grid["log2_t"])
    h = np.maximum(enc @ g["b0"].T, 0) @ g["b1"].T
    dens = init_density * np.exp(h[:, 0]) * sel
    app = np.broadcast_to(g["app"].mean(0) if mean_code else np.zeros(APP), (len(p), APP))
    x = np.concatenate([tcnn_sh16((d + 1) / 2 * 2 - 1), h[:, 1:], app, np.ones((len(p), 1))], -1)
    x = np.maximum(np.maximum(x @ g["h0"].T, 0) @ g["h1"].T, 0) @ g["h2"].T
    return dens, 1 / (1 + np.exp(-x[:, :3]))


def test_field_matches_nerfstudio_tcnn_and_frame(imported):
    w, f = weights(), imported.field
    gen = np.random.default_rng(1)
    x = gen.uniform(-1, 1, (300, 3)).astype(np.float32) * np.array([1, 1, 3], np.float32)
    x[:5] *= 1e19  # contracted onto the |c| = 2 boundary: (c + 2) / 4 = 1, selector 0
    d = gen.normal(size=(300, 3))
    d = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)
    # the frame by hand: data world = 1.5 x; nerfstudio = 0.8 * (T @ data)
    tm = np.asarray(T)
    p = SCALE * ((1.5 * x.astype(np.float64)) @ tm[:, :3].T + tm[:, 3])
    d_ns = d.astype(np.float64) @ tm[:, :3].T
    torch.testing.assert_close(f.to_ns(torch.from_numpy(x)), torch.from_numpy(p).float())
    dens, rgb = numpy_nerfacto_tcnn(w, p, d_ns)
    assert (dens[:5] == 0).all() and (dens[5:] > 0).all()
    out = f.nerfstudio_outputs(torch.from_numpy(p).float(), torch.from_numpy(d_ns).float())
    np.testing.assert_allclose(out["density"].numpy(), dens, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out["rgb"].numpy(), rgb, rtol=1e-4, atol=1e-6)
    assert np.ptp(rgb) > 0.2  # the weights make colours vary
    with torch.no_grad():  # what pvdal's renderer sees: density per pvdal unit (x 1.5 x 0.8)
        o = f(torch.from_numpy(x), torch.from_numpy(d))
    np.testing.assert_allclose(f.activate(o.sigma_raw).numpy()[dens > 0],
                               dens[dens > 0] * 1.5 * SCALE, rtol=1e-4)
    np.testing.assert_allclose(o.rgb.numpy(), rgb, rtol=1e-4, atol=1e-6)


def test_eval_and_render_read_the_run(run, tmp_path, data_dir):
    common = [f"ckpt={run}", "progress=false", "data=synthetic", *TINY_DATA]
    res = evaluate.run(compose_cfg("eval", tmp_path / "eval", data_dir,
                                   [*common, "save_images=false"]))
    assert res["arch"] == "nerfacto" and res["n_images"] == 2 and math.isfinite(res["psnr"])
    cfg = compose_cfg("render", tmp_path / "render", data_dir,
                      [*common, "path=test", "fps=2", "resolution=8"])
    assert Path(render_video.run(cfg)["video"]).is_file()


def test_config_tcnn_with_torch_layout_reads_torch(tmp_path, caplog):
    """nerfstudio builds torch modules when tinycudann is missing, whatever the config says."""
    import shutil
    shutil.copytree(REAL, tmp_path / "run")
    cfg = tmp_path / "run" / "config.yml"
    cfg.write_text(cfg.read_text().replace("implementation: torch", "implementation: tcnn"))
    with caplog.at_level(logging.INFO, logger="pvdal"):
        lf = load_field(tmp_path / "run")
    assert not lf.field.tcnn and any("holds the torch layout" in r.getMessage()
                                     for r in caplog.records)


def test_wrong_parameter_count_is_one_clear_error(tmp_path):
    w = weights()
    w["grid"] = w["grid"][:-8]
    ckpt = write_run(tmp_path / "run", w)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(ckpt))}: mlp_base\.model\.params "
                       r"holds \d+ parameters; the config's field needs \d+"):
        load_field(tmp_path / "run")
