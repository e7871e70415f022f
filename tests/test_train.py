"""train.py end to end on a tiny scene, then load_field on its checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import torch

from pvdal.io.checkpoint import load_field
from pvdal.render.renderer import render_chunked
from pvdal.tasks import train
from tests.conftest import ROOT, TINY_ARCH, TINY_DATA, TINY_RUN


def test_train_writes_run_dir_and_checkpoint_rebuilds(tiny_cfg):
    cfg = tiny_cfg("train")
    result = train.run(cfg)
    out = ROOT / cfg.paths.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "lpips", "fps", "num_params", "size_mb", "train_time_s"):
        assert key in metrics
    assert metrics["psnr"] == result["psnr"] and np.isfinite(metrics["psnr"])
    ckpt = out / "checkpoints" / "last.ckpt"
    loaded = load_field(ckpt)
    assert loaded.arch["name"] == "ngp"
    # render test image 0 with the rebuilt field: identical to the PNG the run wrote
    from pvdal.tasks.train import build_datamodule

    dm = build_datamodule(cfg)
    o, d = dm.data.image_rays(dm.data.test, 0)
    rgb = render_chunked(loaded.field, o, d, loaded.scene, loaded.grid, loaded.n_samples,
                         loaded.background)["rgb"]
    png = iio.imread(out / "test_images" / "000.png")
    mine = (rgb.view(*png.shape).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(mine, png)
    assert torch.isfinite(rgb).all()


def test_train_cli_subprocess(tmp_path, data_dir):
    """The entry point as a user types it (one subprocess test per entry point)."""
    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", f"paths.data_dir={data_dir}",
           *TINY_DATA, *TINY_RUN, *TINY_ARCH["ngp"], "trainer.max_steps=4"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["psnr"] > 0
