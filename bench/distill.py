"""PVD's headline on this machine: distilled student vs the same architecture from scratch.

    python -m bench.distill [--pairs ngp2mlp,ngp2tensorf] [--budget 600] [--teacher-budget 600]
        [--teacher-ckpt PATH] [--student-steps N] [--merge] [--reuse-scratch]
        [--al none|full|...] [hydra overrides]

For each pair: train the teacher (or reuse --teacher-ckpt), train the student architecture from
scratch for --budget seconds, distil the student for the same budget, and record test PSNR
against training wall-clock for both. Writes bench/results/distill.json: one object per pair with
pair, teacher_psnr, student_psnr, scratch_psnr, scratch_time_s, student_time_to_scratch_psnr_s,
speedup, teacher_time_s (+ the curves).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import md_table, previous_rows, run_curve, time_to_reach, write_results

KEYS = ["pair", "al", "teacher_psnr", "student_psnr", "scratch_psnr", "scratch_time_s",
        "student_time_to_scratch_psnr_s", "speedup", "teacher_time_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", default="ngp2mlp,ngp2tensorf")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for student and scratch")
    ap.add_argument("--teacher-budget", type=float, default=600.0)
    ap.add_argument("--teacher-ckpt", default=None, help="reuse a train.py checkpoint")
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--al", default="ray")
    ap.add_argument("--student-steps", type=int, default=None,
                    help="the student's schedule length (trainer.max_steps); default: the config's")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of pairs not run from the existing distill.json")
    ap.add_argument("--reuse-scratch", action="store_true",
                    help="take each pair's scratch curve from the existing distill.json")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pvdal-bench-distill-"))
    teachers: dict[str, tuple[str, float, float]] = {}
    pairs = args.pairs.split(",")
    previous = previous_rows("distill", "pair")
    rows = [r for p, r in previous.items() if p not in pairs] if args.merge else []
    for pair in pairs:
        t_arch, s_arch = pair.split("2")
        if t_arch not in teachers:
            if args.teacher_ckpt:
                ck = Path(args.teacher_ckpt)
                m = json.loads((ck.parents[1] / "metrics.json").read_text())
                teachers[t_arch] = (str(ck), m["psnr"], m["train_time_s"])
            else:
                run = run_curve("train", [f"arch={t_arch}", *args.overrides],
                                work / f"teacher_{t_arch}", args.teacher_budget, 2)
                ck = work / f"teacher_{t_arch}" / "checkpoints" / "last.ckpt"
                teachers[t_arch] = (str(ck), run["result"]["psnr"],
                                    run["result"]["train_time_s"])  # measured
        ckpt, t_psnr, t_time = teachers[t_arch]
        if args.reuse_scratch and "scratch_curve" in previous.get(pair, {}):
            scratch_curve = previous[pair]["scratch_curve"]  # the same train.py defaults
        else:
            scratch_curve = run_curve("train", [f"arch={s_arch}", *args.overrides],
                                      work / f"scratch_{pair}", args.budget, args.points)["curve"]
        student = run_curve("distill", [f"teacher.ckpt={ckpt}", f"student={s_arch}",
                                        f"al={args.al}", "distill.stages.feat_end=50",
                                        "distill.stages.point_end=200", *args.overrides],
                            work / f"student_{pair}", args.budget, args.points,
                            max_steps=args.student_steps)
        # scratch stops at the budget or at its schedule's end, whichever comes first; the
        # student is read at the same time (its last curve point not after it)
        c_time = min(args.budget, scratch_curve[-1]["time_s"])
        c_psnr = scratch_curve[-1]["psnr"]
        s_psnr = next((r["psnr"] for r in reversed(student["curve"])
                       if r["time_s"] <= c_time + 1e-6), None)
        reach = time_to_reach(student["curve"], c_psnr)
        rows.append({"pair": pair, "al": args.al, "settings": student["settings"],
                     "teacher_psnr": t_psnr, "student_psnr": s_psnr,
                     "scratch_psnr": c_psnr, "scratch_time_s": c_time,
                     "student_time_to_scratch_psnr_s": reach,
                     "speedup": (c_time / reach) if reach else None,
                     "teacher_time_s": t_time,
                     "student_vs_teacher_psnr": student["result"]["student_vs_teacher_psnr"],
                     "student_curve": student["curve"], "scratch_curve": scratch_curve})
        write_results("distill", rows, "## Distilled student vs scratch (equal wall-clock)\n\n"
                      + md_table(rows, KEYS))


if __name__ == "__main__":
    main()
