"""One process against two (``trainer=ddp_sim``, gloo) at the same global batch: the training
loss curves should coincide, since ``data.batch_size`` is the global batch split across ranks.

    python -m bench.ddp_curve [--arch ngp] [--steps 300] [--batch 1024]

writes ``bench/results/ddp_curve.json``: per run the ``train/loss`` every ``--every`` steps.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from bench.common import RESULTS, compose_cfg, provenance
from pvdal.io.atomic import atomic_write_json


def losses(run: Path) -> dict[int, float]:
    rows = csv.DictReader(open(next(run.glob("csv/version_*/metrics.csv"))))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def main() -> None:
    from pvdal.tasks import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="ngp")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--budget", type=float, default=None, help="trainer.max_time seconds")
    args = p.parse_args()
    out, runs = RESULTS / "runs" / "ddp_curve", {}
    for name, trainer in (("1 process", "cpu"), ("2 processes", "ddp_sim")):
        ov = [f"arch={args.arch}", f"trainer={trainer}", f"trainer.max_steps={args.steps}",
              f"trainer.max_time={args.budget}" if args.budget else "trainer.max_time=null",
              f"data.batch_size={args.batch}", f"trainer.log_every_n_steps={args.every}",
              "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"]
        cfg = compose_cfg("train", out / trainer, ov)
        t0 = time.perf_counter()
        res = train.run(cfg)
        runs[name] = {"overrides": ov, "loss": losses(out / trainer),
                      "test_psnr": res.get("psnr"), "wall_s": time.perf_counter() - t0}
        print(name, runs[name]["test_psnr"], runs[name]["wall_s"])
    a, b = (runs[k]["loss"] for k in ("1 process", "2 processes"))
    common = sorted(set(a) & set(b))
    rel = [abs(a[s] - b[s]) / a[s] for s in common]
    result = {**provenance(), "settings": vars(args), "runs": runs,
              "mean_rel_loss_diff": sum(rel) / len(rel) if rel else None}
    atomic_write_json(RESULTS / "ddp_curve.json", result)
    for s in common:
        print(f"step {s:5d}  1 proc {a[s]:.5f}  2 procs {b[s]:.5f}")


if __name__ == "__main__":
    main()
