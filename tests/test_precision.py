"""Mixed precision: densities and compositing stay float32, optimizer eps fits the dtype, and
``trainer.precision=bf16-mixed`` trains and distils with finite losses (CPU autocast)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from pvdal.fields.activation import trunc_exp
from pvdal.render.volrend import composite, render_weights
from pvdal.tasks import distill, train
from pvdal.utils.precision import safe_eps


def test_trunc_exp_is_float32_for_half_inputs():
    """A half exp overflows above ~11: the activation runs in float32 whatever comes in."""
    x = torch.tensor([3.0, 12.0, 14.0], dtype=torch.float16, requires_grad=True)
    y = trunc_exp(x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    torch.testing.assert_close(y, torch.exp(x.detach().float()))
    (y * 1e-3).sum().backward()
    assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert trunc_exp(torch.randn(4, dtype=torch.bfloat16)).dtype == torch.float32


def test_compositing_is_float32_under_autocast():
    sig = torch.rand(4, 16, dtype=torch.bfloat16) * 50
    deltas = torch.full((4, 16), 0.02, dtype=torch.bfloat16)
    w, t = render_weights(sig, deltas)
    assert w.dtype == t.dtype == torch.float32
    out = composite(w.bfloat16(), torch.rand(4, 16, 3, dtype=torch.bfloat16), deltas.cumsum(-1),
                    torch.ones(3, dtype=torch.bfloat16))
    assert all(v.dtype == torch.float32 for v in out.values())


def test_optimizer_eps_fits_the_parameter_dtype():
    half = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    full = torch.nn.Parameter(torch.zeros(3))
    opt = safe_eps(torch.optim.Adam([{"params": [half]}, {"params": [full]}], eps=1e-15))
    assert torch.tensor(opt.param_groups[0]["eps"], dtype=torch.float16) > 0
    assert opt.param_groups[1]["eps"] == 1e-15  # float32 (and mixed precision): unchanged
    half.grad = torch.zeros(3, dtype=torch.float16)  # second moment 0: no division by 0
    opt.step()
    assert torch.isfinite(half).all()


def _losses(run_dir: Path, key: str) -> list[float]:
    rows = list(csv.DictReader(open(next(run_dir.glob("csv/*/metrics.csv")))))
    return [float(r[key]) for r in rows if r.get(key)]


def test_bf16_mixed_trains_and_distils(tiny_cfg, distill_cfg):
    cfg = tiny_cfg("train", ["trainer.precision=bf16-mixed", "trainer.max_steps=6"])
    train.run(cfg)
    losses = _losses(Path(cfg.paths.output_dir), "train/loss")
    assert len(losses) >= 5 and all(math.isfinite(v) for v in losses)
    cfg = distill_cfg("tensorf", ["trainer.precision=bf16-mixed", "trainer.max_steps=6",
                                  "al=full"])
    distill.run(cfg)
    losses = _losses(Path(cfg.paths.output_dir), "train/loss")
    assert len(losses) >= 5 and all(math.isfinite(v) for v in losses)
