"""PVD's main table on this machine: every teacher -> student pair over mlp, ngp, plenoxels and
tensorf, each student against the same architecture trained from scratch for the same time.

    python -m bench.matrix [--budget 120] [--teacher-budget 300] [--pairs ngp2mlp,...]
        [--archs mlp,ngp,plenoxels,tensorf] [--teachers-dir DIR] [--results-dir DIR]
        [--points 10] [--merge] [--no-scratch] [hydra overrides...]

Each teacher is trained once (train.py defaults, its schedule filling --teacher-budget seconds)
into --teachers-dir/<arch>/, or reused from there (bench/ablation.py shares them); each student
architecture is trained from scratch once and each pair distilled once, every run with its
schedule (LR decay, stages, upsampling) paced to end exactly at --budget seconds of training
(evaluation excluded). Rows are written to <results-dir>/matrix.json (+ .md) as each pair
completes; --merge keeps the rows of pairs not rerun; --no-scratch distils only (longer
budgets: scratch_psnr and speedup are null). Runs: 4 teachers (--teacher-budget each,
unless cached) + 4 scratch + 16 students (--budget each), plus evaluation.
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
    write_results,
)

ARCHS = ["mlp", "ngp", "plenoxels", "tensorf"]
KEYS = ["pair", "teacher_psnr", "student_psnr", "scratch_psnr", "student_vs_teacher_psnr",
        "speedup", "budget_s", "student_time_s", "teacher_time_s"]


def grid_table(rows: list[dict], archs: list[str]) -> str:
    """Rows: teacher, columns: student, cells: student PSNR (scratch PSNR, speedup x)."""
    by = {r["pair"]: r for r in rows}

    def cell(t: str, s: str) -> str:
        r = by.get(f"{t}2{s}")
        if r is None:
            return "—"
        if r["scratch_psnr"] is None:
            return f"{r['student_psnr']:.2f}"
        sp = "never" if r["speedup"] is None else f"{r['speedup']:.1f}×"
        return f"{r['student_psnr']:.2f} ({r['scratch_psnr']:.2f}, {sp})"

    lines = ["| teacher \\ student | " + " | ".join(archs) + " |", "|---|" + "---|" * len(archs)]
    lines += [f"| {t} | " + " | ".join(cell(t, s) for s in archs) + " |" for t in archs]
    return "\n".join(lines)


def table(rows: list[dict], archs: list[str], budget: float) -> str:
    return (f"## Teacher -> student, equal training time ({budget:g} s)\n\n"
            "Cells: student test PSNR (scratch PSNR, speedup = scratch's time to its final PSNR"
            " / the student's time to reach it).\n\n" + grid_table(rows, archs)
            + "\n\n" + md_table(rows, KEYS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_args(ap, "", 120.0)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--no-scratch", action="store_true", help="students only, no scratch runs")
    args = ap.parse_args()
    archs = args.archs.split(",")
    pairs = args.pairs.split(",") if args.pairs else [f"{t}2{s}" for t in archs for s in archs]
    previous = previous_rows("matrix", "pair", args.results_dir) if args.merge else {}
    rows = [r for p, r in previous.items() if p not in pairs]
    teachers: dict[str, dict] = {}
    scratch: dict[str, dict] = {}
    for pair in pairs:
        t_arch, s_arch = pair.split("2")
        if t_arch not in teachers:
            teachers[t_arch] = resolve_teacher(t_arch, args.teachers_dir, args.teacher_budget,
                                               args.overrides)
        if s_arch not in scratch and not args.no_scratch:
            scratch[s_arch] = scratch_run(s_arch, args.teachers_dir, args.budget,
                                          args.overrides, args.points)
        student = student_run(t_arch, teachers[t_arch], s_arch, args.budget, args.overrides,
                              args.points)
        row = compare_row(teachers[t_arch], scratch.get(s_arch), student)
        row.pop("time_to_scratch_s")
        rows.append({"pair": pair, **row, "budget_s": args.budget,
                     "scratch_curve": scratch[s_arch]["curve"] if s_arch in scratch else None,
                     "student_curve": student["curve"]})
        write_results("matrix", rows, table(rows, ARCHS, args.budget), args.results_dir)


if __name__ == "__main__":
    main()
