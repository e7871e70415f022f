"""bench/nerf_ref.py against nerf-pytorch's own code: runs only where its source is extracted
(the folder in ``NERF_SRC``: ``git --git-dir=<nerf-pytorch git dir> archive HEAD | tar -x -C
DIR``)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

NERF_SRC = Path(os.environ.get("NERF_SRC") or "nerf-pytorch-not-given")
pytestmark = pytest.mark.skipif(
    not (NERF_SRC / "run_nerf.py").is_file(),
    reason=f"nerf-pytorch's source is not at NERF_SRC={NERF_SRC} (not part of pvdal; CI has none)")


def test_train_nerf_tiny(tmp_path):
    from bench.nerf_ref import _OPTIONAL, import_run_nerf, nerf_rays, train_nerf
    from pvdal.data.scenes import load_synthetic

    missing = [n for n in _OPTIONAL if importlib.util.find_spec(n) is None]
    import_run_nerf(NERF_SRC)
    assert not [n for n in sys.modules if n.split(".")[0] in missing]  # no stand-in left

    data = load_synthetic(tmp_path / "scene", resolution=8, n_train=2, n_val=1, n_test=1)
    rays, _, hw = nerf_rays(data, "train")
    forward = -data.train.c2w[0][:3, 2]
    assert torch.allclose(rays[0][:, 3:] @ forward, torch.ones(hw[0][0] * hw[0][1]), atol=1e-5)
    assert rays[0][:, :3].norm(dim=-1).mean() == pytest.approx(4.0, rel=0.05)  # Blender radius

    tiny = {"netdepth": 2, "netwidth": 16, "netdepth_fine": 2, "netwidth_fine": 16,
            "N_samples": 8, "N_importance": 8, "N_rand": 32}
    res = train_nerf(NERF_SRC, data, budget=1.0, points=2, recipe_overrides=tiny, log_every=5)
    assert res["iterations"] > 0 and abs(res["time_s"] - 1.0) < 0.75
    assert [c["psnr"] is not None for c in res["curve"]] == [True, True]
    assert res["psnr"] == res["curve"][-1]["psnr"] and res["psnr"] > 0
    assert res["recipe"]["netwidth"] == 16 and res["samples_per_ray"] == 8 + 16
