"""Active-learning benchmark: does PVD-AL beat plain PVD at equal student steps?

Runs by hand (not in tests)::

    .venv/bin/python bench/al.py                     # ngp->mlp and ngp->tensorf, 300 s per run
    .venv/bin/python bench/al.py --budget 60 --pairs ngp2mlp trainer=gpu
    .venv/bin/python bench/al.py --quick --out /tmp/al_bench   # seconds: checks that it works

For each pair (``<teacher>2<student>``) on the default scene one cached teacher is trained (or
reused), then ``al=none`` calibrates seconds per step so that a run fits ``--budget``; every run
of the pair then gets the same ``trainer.max_steps`` (``--steps`` overrides the calibration;
``max_time`` = 3 x budget is only a safety stop). ``none`` and ``full`` run for every pair,
``view``, ``ray`` and ``point`` alone for ngp->mlp. Writes ``<out>/al.json`` (a list of
{pair, al, steps, student_psnr, student_vs_teacher_psnr, ...}) and ``<out>/al.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from pvdal.distill.teacher import cached_teacher  # noqa: E402

log = logging.getLogger("bench.al")
ALL_LEVELS = ["none", "view", "ray", "point", "full"]
QUICK = ["data.loader.resolution=16", "data.loader.n_train=8", "data.loader.n_val=1",
         "data.loader.n_test=2", "data.batch_size=128", "data.steps_per_epoch=4",
         "data.val_images=1", "render.n_samples=48", "grid.resolution=16",
         "grid.update_every=4", "grid.warmup_steps=4", "teacher_train.max_steps=8",
         "teacher_train.max_time=null", "trainer.log_every_n_steps=1",
         "al.view.warmup_epochs=0", "al.view.n_views=4", "al.view.pool_size=2",
         "al.ray.pool_batches=2", "callbacks.rich_progress_bar=null"]


def levels_for(pair: str) -> list[str]:
    return ALL_LEVELS if pair == "ngp2mlp" else ["none", "full"]


def make_cfg(pair: str, al: str, out: Path, overrides: list[str]) -> DictConfig:
    teacher, _, student = pair.partition("2")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="distill", overrides=[
            f"teacher={teacher}", f"student={student}", f"al={al}",
            f"paths.root_dir={ROOT}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def max_time(seconds: float) -> str:
    s = max(int(seconds), 1)
    return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_one(pair: str, al: str, out: Path, overrides: list[str]) -> dict:
    from pvdal.tasks import distill

    t0 = time.perf_counter()
    res = distill.run(make_cfg(pair, al, out, overrides))
    return {"pair": pair, "al": al, "steps": res["steps"],
            "student_psnr": res["student"].get("psnr"),
            "student_vs_teacher_psnr": res["student_vs_teacher_psnr"],
            "teacher_psnr": res["teacher"].get("psnr"), "train_time_s": res["train_time_s"],
            "wall_s": time.perf_counter() - t0, "run_dir": str(out)}


def calibrate(pair: str, out: Path, budget: float, overrides: list[str]) -> int:
    """Steps that fit ``budget`` seconds, from a short ``al=none`` run (10% of the budget)."""
    limit = max_time(max(budget / 10, 5))
    probe = run_one(pair, "none", out / "calibrate",
                    [*overrides, "trainer.max_steps=100000", f"trainer.max_time={limit}"])
    per_step = probe["train_time_s"] / max(probe["steps"], 1)
    steps = int(0.9 * budget / per_step)
    log.info("%s: %.3f s/step -> %d steps per run", pair, per_step, steps)
    return max(steps, 10)


def fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (
        f"{v:.2f}" if isinstance(v, float) else str(v))


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "al.json").write_text(json.dumps(rows, indent=2))
    lines = ["| pair | al | steps | student PSNR (dB) | student vs teacher (dB) | train s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['pair']} | {r['al']} | {fmt(r.get('steps'))} | {fmt(r.get('student_psnr'))}"
              f" | {fmt(r.get('student_vs_teacher_psnr'))} | {fmt(r.get('train_time_s'))} |"
              + (f" error: {r['error']}" if r.get("error") else "") for r in rows]
    (out / "al.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=300.0, help="seconds per run (default 300)")
    p.add_argument("--pairs", default="ngp2mlp,ngp2tensorf", help="comma-separated t2s pairs")
    p.add_argument("--steps", type=int, default=None, help="student steps (skip calibration)")
    p.add_argument("--quick", action="store_true", help="tiny scene and 8 steps: smoke check")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--teacher-ckpt", default=None, help="reuse this teacher (a train.py run)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer=gpu")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = (QUICK if a.quick else []) + list(a.overrides)
    runs = a.out / "runs"
    rows: list[dict] = []
    for pair in [s.strip() for s in a.pairs.split(",") if s.strip()]:
        # one teacher per teacher arch (cached by config hash under outputs/teachers)
        ckpt = a.teacher_ckpt or cached_teacher(make_cfg(pair, "none", runs / pair / "teacher",
                                                         base))
        common = [*base, f"teacher.ckpt={ckpt}"]
        steps = 8 if a.quick else a.steps
        if steps is None:
            steps = calibrate(pair, runs / pair, a.budget, common)
        limit = [f"trainer.max_steps={steps}",
                 f"trainer.max_time={max_time(3 * a.budget)}" if not a.quick else
                 "trainer.max_time=null"]
        for al in levels_for(pair):
            log.info("=== %s al=%s (%d steps)", pair, al, steps)
            try:
                rows.append(run_one(pair, al, runs / pair / al, [*common, *limit]))
            except Exception as e:  # keep benchmarking the other runs; the table says why
                log.exception("%s al=%s failed", pair, al)
                rows.append({"pair": pair, "al": al, "steps": None, "student_psnr": None,
                             "student_vs_teacher_psnr": None, "error": repr(e)[:200]})
            write(rows, a.out)
    print((a.out / "al.md").read_text())
    return rows


if __name__ == "__main__":
    main()
