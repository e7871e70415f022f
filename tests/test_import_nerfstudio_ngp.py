"""Importing a run of nerfstudio's ``instant-ngp`` method (nerfstudio 1.1.5 models/instant_ngp.py):
a NerfactoField with the field's defaults (16 levels x 2, base 16, density 1 * exp, appearance
code 32 wide *unless* ``use_appearance_embedding``, zeros at inference, tcnn modules) and a nerfacc
occupancy grid. Written from the spec like tests/test_import_nerfstudio_tcnn.py (no tcnn here):
the config.yml nerfstudio writes for the method, a tcnn-layout checkpoint and a nerfacc grid."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch

from pvdal.io.checkpoint import load_field
from pvdal.tasks import evaluate
from tests.conftest import TINY_DATA, compose_cfg
from tests.test_import_nerfstudio_tcnn import REAL, numpy_nerfacto_tcnn, weights, write_run

LOG2_T, MAX = 10, 64
GRID = {"L": 16, "base": 16, "pls": float(np.exp((np.log(MAX) - np.log(16)) / 15)),
        "log2_t": LOG2_T}
EYE = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
RES, BALL = 16, 0.9  # nerfacc grid: 16^3 x 2 levels (+-1.5, +-3); level 0 occupied in a ball

NGP_MODEL = f"""  model: !!python/object:nerfstudio.models.instant_ngp.InstantNGPModelConfig
    _target: !!python/name:nerfstudio.models.instant_ngp.NGPModel ''
    alpha_thre: 0.01
    background_color: white
    collider_params: null
    cone_angle: 0.0
    disable_scene_contraction: false
    enable_collider: false
    eval_num_rays_per_chunk: 8192
    far_plane: 1000.0
    grid_levels: 2
    grid_resolution: {RES}
    log2_hashmap_size: {LOG2_T}
    loss_coefficients:
      rgb_loss_coarse: 1.0
      rgb_loss_fine: 1.0
    max_res: {MAX}
    near_plane: 0.05
    prompt: null
    render_step_size: null
    use_appearance_embedding: false
    use_gradient_scaling: false
"""


def config_text() -> str:
    text = (REAL / "config.yml").read_text()
    text, n = re.subn(r"(?ms)^  model: !!python/object:nerfstudio\.models\.nerfacto\.Nerfacto"
                      r"ModelConfig\n.*?(?=^\S)", NGP_MODEL, text)
    assert n == 1
    text, n = re.subn(r"(?m)^method_name: nerfacto$", "method_name: instant-ngp", text)
    assert n == 1
    return text


def nerfacc_grid() -> dict:
    c = (torch.arange(RES) + 0.5) / RES * 3.0 - 1.5
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    bins = torch.zeros(2, RES, RES, RES, dtype=torch.bool)
    bins[0] = x**2 + y**2 + z**2 < BALL**2
    aabbs = torch.tensor([[-1.5] * 3 + [1.5] * 3, [-3.0] * 3 + [3.0] * 3])
    g = "_model.occupancy_grid."
    return {g + "resolution": torch.tensor([RES] * 3), g + "aabbs": aabbs,
            g + "occs": bins.float().view(-1), g + "binaries": bins}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    r = tmp_path_factory.mktemp("ns_ngp") / "run"
    f = "_model.field."
    write_run(r, weights(3, GRID), text=config_text(), transform=(EYE, 1.0),
              **{f + "num_levels": torch.tensor(16), f + "max_res": torch.tensor(MAX),
                 "_model.scene_aabb": torch.tensor([-1.5] * 3 + [1.5] * 3)}, **nerfacc_grid())
    return r


def test_instant_ngp_run_imports_as_nerfstudio_computes_it(run, caplog):
    with caplog.at_level(logging.INFO, logger="pvdal"):
        lf = load_field(run, "teacher.ckpt")
    msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("import:")]
    assert any("nerfstudio instant-ngp (tcnn)" in m and "hash 16x2 2^10 res 16..64" in m
               and "appearance 32 (zeros)" in m and "density 1*exp" in m for m in msgs)
    assert any("nerfacc occupancy grid [16, 16, 16] x 2 levels" in m for m in msgs)
    f = lf.field
    assert f.tcnn and f.appearance_dim == 32 and not f.use_average_appearance_embedding
    gen = np.random.default_rng(2)
    p = gen.uniform(-2, 2, (200, 3))
    d = gen.normal(size=(200, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    dens, rgb = numpy_nerfacto_tcnn(weights(3, GRID), p, d, GRID, init_density=1.0,
                                    mean_code=False)
    out = f.nerfstudio_outputs(torch.from_numpy(p).float(), torch.from_numpy(d).float())
    np.testing.assert_allclose(out["density"].numpy(), dens, rtol=1e-4)
    np.testing.assert_allclose(out["rgb"].numpy(), rgb, rtol=1e-4, atol=1e-6)
    # pvdal's grid: empty where nerfacc skips (outside the ball, pvdal cells 3/64 nerfstudio
    # units wide, nerfacc's 3/16), occupied inside it (the random field is dense everywhere)
    x = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = (x * 1.5).norm(dim=-1)
    occ = lf.grid.occupied(x)
    assert not occ[r > BALL + 3.0 / 16 * math.sqrt(3)].any()
    assert occ[r < BALL - 3.0 / 16 * math.sqrt(3)].all()


def test_eval_reads_the_instant_ngp_run(run, tmp_path, data_dir):
    res = evaluate.run(compose_cfg("eval", tmp_path / "eval", data_dir,
                                   [f"ckpt={run / 'config.yml'}", "progress=false",
                                    "data=synthetic", *TINY_DATA, "save_images=false"]))
    assert res["n_images"] == 2 and math.isfinite(res["psnr"])
