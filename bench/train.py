"""Train throughput and test PSNR against wall-clock on the default scene (run by hand).

    python -m bench.train [--arch ngp] [--budget 600] [--points 10] [OVERRIDE ...]

Writes bench/results/train.json: {arch, budget_s, curve: [{time_s, step, psnr}], train_rays_per_s,
render_rays_per_s, final_psnr, steps}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import md_table, run_curve, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="ngp")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds")
    ap.add_argument("--points", type=int, default=10, help="evaluations along the budget")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="pvdal-bench-train-"))
    run = run_curve("train", [f"arch={args.arch}", *args.overrides], out, args.budget,
                    args.points)
    res, curve = run["result"], run["curve"]
    batch = run["settings"]["batch_size"]  # resolved from the config, not the command line
    row = {"arch": args.arch, "budget_s": args.budget, "settings": run["settings"],
           "curve": curve, "steps": res["steps"],
           "train_rays_per_s": res["steps"] * batch / res["train_time_s"],
           "render_rays_per_s": res.get("render_rays_per_s"), "final_psnr": res.get("psnr"),
           "fps": res.get("fps"), "num_params": res.get("num_params"),
           "size_mb": res.get("size_mb")}
    table = md_table([{"time_s": c["time_s"], "step": c["step"], "psnr": c["psnr"]}
                      for c in curve], ["time_s", "step", "psnr"])
    write_results(f"train_{args.arch}", row, f"## {args.arch}: test PSNR vs training time\n\n"
                  + table + f"\n\nfinal test PSNR {res.get('psnr'):.2f} dB after "
                  f"{res['steps']} steps")


if __name__ == "__main__":
    main()
