"""One architecture's training under named variants of its recipe, at equal wall-clock: the
measured effect of each difference between pvdal's recipe and a reference's (docs/reference.md).

    python -m bench.variants --arch tensorf --time 200 [--variants base,lr_reset,...]
        [--jobs 2] [--results-dir DIR] [--merge] [hydra overrides for every run...]

A variant is a list of Hydra overrides on top of ``arch=<arch>`` (VARIANTS below: each names the
reference's choice it adopts); ``base`` is pvdal's defaults. Every run's schedule fills
``--time`` seconds of training (``bench.common.budget_run``); ``--jobs 2`` runs two side by side
at one thread each. Rows ``arch, variant, psnr, delta_psnr`` (against ``base``), ``time_s``,
``steps``, ``overrides``, ``commit`` go to ``<results-dir>/variants.json`` (+ ``.md``);
``--merge`` keeps the rows of (arch, variant) not rerun. A variant that does not compose is
skipped with its reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import (
    RESULTS,
    md_table,
    previous_rows,
    provenance,
    run_parallel,
    try_compose,
    write_results,
)
from bench.reference import NGP_CPU_SIZES, train_run

# TensoRF's lego recipe (docs/reference_tensorf.md rows): upsampling at 2000..7000 of 30000
# iterations scaled to 2500 steps, the shrink with the first alpha mask
TENSORF_EARLY = ["arch.field.upsample_steps=[167,250,333,458,583]", "arch.field.shrink_steps=[167]"]
VARIANTS: dict[str, dict[str, list[str]]] = {
    "tensorf": {
        "base": [],
        "lr_reset": ["arch.lr_upsample_reset=true"],  # row 5
        "early_upsample_lr_reset": [*TENSORF_EARLY, "arch.lr_upsample_reset=true"],  # rows 4-5
        "mlp_hidden_128": ["arch.field.mlp_hidden=128"],  # row 15 (app_dim 27: not a key)
        "voxels_96": ["arch.field.n_voxel_final=884736"],  # rows 1-3
        "samples_384": ["arch.n_samples=384"],  # row 1: ~0.5 voxel at 128^3
        "adam_eps_1e-8": ["arch.optimizer.eps=1e-8"],  # row 7
        "batch_2048": ["data.batch_size=2048"],  # rows 10, 17
        "grid_threshold_1e-3": ["grid.threshold=1e-3"],  # row 8
        "white_background": ["render.random_background=false"],  # row 11
        "lego_recipe": [*TENSORF_EARLY, "arch.lr_upsample_reset=true",  # all of the above
                        "arch.field.mlp_hidden=128", "arch.field.n_voxel_final=884736",
                        "arch.optimizer.eps=1e-8", "data.batch_size=2048",
                        "render.random_background=false"],
    },
    "ngp": {
        "base": [],
        "recipe_cpu_sizes": ["experiment=ref_instant_ngp", *NGP_CPU_SIZES],
        "multistep_warmup": ["arch.lr_schedule=multistep", "+arch.lr_milestones=[0.5,0.75,0.9]",
                             "+arch.lr_gamma=0.33", "+arch.lr_warmup=0.005"],
        "weight_decay_1e-6": ["+arch.optimizer.weight_decay=1e-6"],
        "adam_beta2_0.999": ["arch.optimizer.betas=[0.9,0.999]"],
        "white_background": ["render.random_background=false"],
        "target_samples_8192": ["render.target_samples=8192"],
        "grid_128": ["grid.resolution=128", "grid.ema_decay=0.95", "grid.warmup_steps=256"],
        "samples_1024": ["render.n_samples=1024"],
        "paper_field": ["arch.field.n_levels=16", "arch.field.log2_hashmap_size=19",
                        "arch.field.max_resolution=4096"],
    },
}
KEYS = ["arch", "variant", "psnr", "delta_psnr", "time_s", "steps", "commit"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="tensorf", choices=sorted(VARIANTS))
    ap.add_argument("--variants", default=None, help="comma-separated (default: all)")
    ap.add_argument("--time", type=float, default=200.0, help="seconds of training per run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    table = VARIANTS[args.arch]
    names = args.variants.split(",") if args.variants else list(table)
    commit = provenance()["commit"]
    old = previous_rows("variants", ("arch", "variant"), args.results_dir) if args.merge else {}
    rows = {k: r for k, r in old.items() if not (k[0] == args.arch and k[1] in names)}
    calls = {}
    for name in names:
        ov = [f"arch={args.arch}", *table[name], *args.overrides]
        why = try_compose("train", ov)
        if why:
            print(f"skip {name}: {why}")
            continue
        calls[name] = (train_run, (ov, args.time, args.points))
    for name, out in run_parallel(calls, args.jobs):
        if isinstance(out, Exception):
            print(f"{name} failed: {type(out).__name__}: {out}")
            continue
        rows[(args.arch, name)] = {
            "arch": args.arch, "variant": name, "psnr": out["psnr"], "delta_psnr": None,
            "time_s": round(out["time_s"], 2), "steps": out["settings"]["steps"],
            "overrides": table[name], "commit": commit, "settings": out["settings"],
            "curve": out["curve"]}
        base = rows.get((args.arch, "base"))
        for r in rows.values():
            if base and r["arch"] == args.arch:
                r["delta_psnr"] = r["psnr"] - base["psnr"]
        print(f"{args.arch} {name}: {out['psnr']:.2f} dB", flush=True)
        write_results("variants", list(rows.values()), md_table(list(rows.values()), KEYS),
                      args.results_dir)


if __name__ == "__main__":
    main()
