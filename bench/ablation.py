"""Which of PVD's choices matter here: one distillation per variant of the method, each against
the same teacher and the same scratch run at the same training time.

    python -m bench.ablation [--pairs ngp2mlp,ngp2tensorf] [--budget 120] [--teachers-dir DIR]
        [--variants default,loss_mse,...] [--results-dir DIR] [--points 10] [--merge]
        [hydra overrides...]

A variant is a list of Hydra overrides on top of the current defaults (VARIANTS below). The
teacher comes from --teachers-dir/<arch>/ (shared with bench/matrix.py; trained there for
--teacher-budget seconds when missing); the student architecture's scratch run and every
distillation have their schedule paced to end at --budget seconds of training. A variant whose
overrides do not compose (e.g. a key that does not exist yet) is skipped with its reason. Rows
go to <results-dir>/ablation.json (+ .md) as each run completes; --merge keeps the rows of
(pair, variant) not rerun. Runs per pair: 1 scratch (per student arch) + one per variant
(--budget each).
"""

from __future__ import annotations

import argparse

from bench.common import (
    bench_args,
    compare_row,
    md_table,
    previous_rows,
    resolve_teacher,
    scratch_run,
    student_run,
    try_compose,
    write_results,
)

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "align_features": ["distill.align=features"],
    "align_volume": ["distill.align=volume"],
    "init_decoder": ["distill.init_decoder=auto", "shared_decoder=true"],
    "no_init_decoder": ["distill.init_decoder=false"],
    "random_views": ["distill.random_views.ratio=0.5"],
    "no_random_views": ["distill.random_views.ratio=0.0"],
    "loss_norm_l2": ["distill.loss_type=norm_l2"],
    "loss_mse": ["distill.loss_type=mse"],
    **{f"al_{x}": [f"al={x}"] for x in ("none", "view", "ray", "point", "full")},
    "early_stop_off": ["distill.early_stop_eps=0"],
    "no_stage2": ["distill.stages.point_end=0.05"],  # = feat_end: stage 3 follows stage 1
    "volume_norm_l2": ["distill.align=volume", "distill.loss_type=norm_l2"],
    "volume_norm_l2_views": ["distill.align=volume", "distill.loss_type=norm_l2",
                             "distill.random_views.ratio=0.5"],
    "paper": ["distill=paper"],  # also data.batch_size=4096, shared_decoder=true
}
KEYS = ["pair", "variant", "student_psnr", "scratch_psnr", "teacher_psnr",
        "student_vs_teacher_psnr", "time_to_scratch_s", "psnr_at"]
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def psnr_at(curve: list[dict], budget: float) -> dict[str, float | None]:
    """PSNR at 25/50/75/100 % of the budget: the last curve point not after each."""
    out: dict[str, float | None] = {}
    for f in FRACTIONS:
        t = round(budget * f, 1)
        out[f"{t:g}"] = next((r["psnr"] for r in reversed(curve) if r["time_s"] <= t + 1e-6),
                             None)
    return out


def table(rows: list[dict], budget: float) -> str:
    flat = [{**r, "psnr_at": " / ".join("—" if v is None else f"{v:.2f}"
                                        for v in r["psnr_at"].values())} for r in rows]
    pts = " / ".join(f"{budget * f:g}" for f in FRACTIONS)
    return (f"## PVD ablation, equal training time ({budget:g} s)\n\n"
            f"psnr_at: test PSNR at {pts} s of training.\n\n" + md_table(flat, KEYS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_args(ap, "ngp2mlp,ngp2tensorf", 120.0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    pairs, variants = args.pairs.split(","), args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    todo = {(p, v) for p in pairs for v in variants}
    previous = (previous_rows("ablation", ("pair", "variant"), args.results_dir)
                if args.merge else {})
    rows = [r for k, r in previous.items() if k not in todo]
    teachers: dict[str, dict] = {}
    scratch: dict[str, dict] = {}
    for pair in pairs:
        t_arch, s_arch = pair.split("2")
        for variant in variants:
            overrides = [*VARIANTS[variant], *args.overrides]
            why = try_compose("distill", [f"teacher={t_arch}", f"student={s_arch}", *overrides])
            if why:
                print(f"skipping {pair} {variant} ({' '.join(overrides)}): {why}")
                continue
            if t_arch not in teachers:
                teachers[t_arch] = resolve_teacher(t_arch, args.teachers_dir,
                                                   args.teacher_budget, args.overrides)
            if s_arch not in scratch:
                scratch[s_arch] = scratch_run(s_arch, args.teachers_dir, args.budget,
                                              args.overrides, args.points)
            student = student_run(t_arch, teachers[t_arch], s_arch, args.budget, overrides,
                                  args.points)
            row = compare_row(teachers[t_arch], scratch[s_arch], student)
            for k in ("speedup", "student_time_s", "teacher_time_s"):
                row.pop(k)
            rows.append({"pair": pair, "variant": variant, "overrides": VARIANTS[variant],
                         **row, "psnr_at": psnr_at(student["curve"], args.budget),
                         "budget_s": args.budget, "student_curve": student["curve"]})
            write_results("ablation", rows, table(rows, args.budget), args.results_dir)


if __name__ == "__main__":
    main()
