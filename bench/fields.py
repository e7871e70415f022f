"""Every architecture on the default scene (run by hand).

    python -m bench.fields [--archs mlp,plenoxels,tensorf,ngp] [--budget 900] [--points 5] [--merge]

For each arch: parameters, MB, train and render rays/s, and test PSNR at fixed wall-clock points.
Writes bench/results/fields.json (one object per arch) and bench/results/fields.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import md_table, previous_rows, run_curve, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", default="mlp,plenoxels,tensorf,ngp")
    ap.add_argument("--budget", type=float, default=900.0, help="training seconds per arch")
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of archs not run from the existing fields.json")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pvdal-bench-fields-"))
    archs = args.archs.split(",")
    previous = previous_rows("fields", "arch") if args.merge else {}
    rows = [r for a, r in previous.items() if a not in archs]
    for arch in archs:
        run = run_curve("train", [f"arch={arch}", *args.overrides], work / arch, args.budget,
                        args.points)
        res = run["result"]
        batch = run["settings"]["batch_size"]  # resolved from the config
        row = {"arch": arch, "settings": run["settings"], "num_params": res["num_params"],
               "size_mb": res["size_mb"],
               "train_rays_per_s": res["steps"] * batch / res["train_time_s"],
               "render_rays_per_s": res.get("render_rays_per_s"), "steps": res["steps"],
               "train_time_s": res["train_time_s"], "final_psnr": res.get("psnr"),
               "ssim": res.get("ssim"), "curve": run["curve"]}
        for c in run["curve"]:
            row[f"psnr@{int(c['time_s'])}s"] = c["psnr"]
        rows.append(row)
        at = sorted({k for r in rows for k in r if k.startswith("psnr@")},
                    key=lambda k: float(k[5:-1]))
        keys = ["arch", "num_params", "size_mb", "train_rays_per_s", "render_rays_per_s",
                "steps", *at, "train_time_s", "final_psnr"]
        write_results("fields", rows, "## Architectures on the default scene\n\n"
                      + md_table(rows, keys))


if __name__ == "__main__":
    main()
