"""Shared benchmark plumbing: compose a config like the CLI, run a task with a wall-clock curve."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from pvdal.callbacks.wallclock import WallClockEval
from pvdal.io.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
os.environ.setdefault("WANDB_MODE", "disabled")


def compose_cfg(name: str, out_dir: Path, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg["hydra"]
    return cfg


def checkpoints(budget: float, n: int = 10) -> list[float]:
    return [round(budget * (i + 1) / n, 1) for i in range(n)]


def run_curve(task: str, overrides: list[str], out_dir: Path, budget: float,
              n_points: int = 10, max_images: int | None = None,
              max_steps: int | None = None) -> dict:
    """Run ``train`` or ``distill`` for ``budget`` seconds of training; returns the curve.

    The config's own ``trainer.max_steps`` (which also sets the learning-rate decay and the
    distillation stages) is kept unless ``max_steps`` is given; training ends at the budget or
    at max_steps, whichever comes first.
    """
    from pvdal.tasks import distill, train

    steps = [f"trainer.max_steps={max_steps}"] if max_steps else []
    cfg = compose_cfg(task, out_dir, overrides + ["trainer.max_time=null", *steps,
                                                  "callbacks.rich_progress_bar=null"])
    cb = WallClockEval(checkpoints(budget, n_points), max_images)
    t0 = time.perf_counter()
    result = (train.run if task == "train" else distill.run)(cfg, [cb])
    settings = {"task": task, "overrides": list(overrides), "budget_s": budget,
                "batch_size": int(cfg.data.batch_size), "max_steps": int(cfg.trainer.max_steps)}
    return {"curve": cb.rows, "result": result, "wall_s": time.perf_counter() - t0,
            "settings": settings}


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """First wall-clock point whose PSNR reaches ``target`` (linear interpolation)."""
    prev_t, prev_p = 0.0, None
    for row in curve:
        if row["psnr"] >= target:
            if prev_p is None or row["psnr"] == prev_p:
                return row["time_s"]
            frac = (target - prev_p) / (row["psnr"] - prev_p)
            return prev_t + frac * (row["time_s"] - prev_t)
        prev_t, prev_p = row["time_s"], row["psnr"]
    return None


def previous_rows(name: str, key: str | tuple[str, ...],
                  results: Path | None = None) -> dict:
    """Rows of an earlier ``bench/results/<name>.json`` by ``key`` (a tuple of keys: by the
    tuple of their values); {} when there is none."""
    path = (results or RESULTS) / f"{name}.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())
    if isinstance(key, tuple):
        return {tuple(r.get(k) for k in key): r for r in rows}
    return {r[key]: r for r in rows}


def write_results(name: str, rows: list | dict, table: str,
                  results: Path | None = None) -> None:
    """Write ``bench/results/<name>.json`` (+ ``.md``). Every row (or the one result) records
    what made it (``provenance``: commit, command line, torch); rows merged from an earlier
    file keep their own."""
    prov = provenance()
    for row in rows if isinstance(rows, list) else [rows]:
        if isinstance(row, dict):
            row.setdefault("provenance", prov)
    results = results or RESULTS
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / f"{name}.json", rows)
    (results / f"{name}.md").write_text(table + "\n")
    print(table)


def md_table(rows: list[dict], keys: list[str]) -> str:
    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else ("—" if v is None else str(v))

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def provenance() -> dict:
    """What a result was made with: the commit (``+dirty`` with uncommitted changes), the
    command line, torch's version."""
    import subprocess
    import sys

    import torch

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or None
    # results being written (this or another benchmark) and docs do not change the code that ran
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":(exclude)bench/results", ":(exclude)*.md"):
        commit += "+dirty"
    return {"commit": commit, "argv": sys.argv, "torch": torch.__version__}


def dump(obj) -> str:
    return json.dumps(obj, indent=2)


# --- budget-filling runs and shared teachers (bench/matrix.py, bench/ablation.py) -------------

TEACHERS = ROOT / "outputs" / "bench_teachers"


class BudgetPacedEval(WallClockEval):
    """``WallClockEval`` whose run fills its budget exactly: the module's schedule clock reads
    the same training-only time as the curve (evaluation and validation excluded) and is paced
    by that time alone, so every schedule (LR decay, stages, upsampling, AL warm-ups, laid out
    over the config's ``max_steps``) ends at the budget; neither the step count nor Lightning's
    ``max_steps`` ends the run before it."""

    def on_train_start(self, trainer, pl_module) -> None:
        clock = pl_module.clock
        tick = clock.tick
        clock.tick = lambda done, sync=None: tick(0, sync)  # p = elapsed / budget only
        trainer.fit_loop.epoch_loop.max_steps = -1  # the budget ends the run

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        pl_module.clock.set_state(elapsed=self._elapsed)
        pl_module.clock.start()  # the clock counts on from the curve's training time

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if pl_module.clock.complete:
            trainer.should_stop = True


def budget_run(task: str, overrides: list[str], out_dir: Path, budget: float,
               n_points: int = 10) -> dict:
    """Run ``train`` or ``distill`` whose schedule is stretched (or squeezed) to exactly
    ``budget`` seconds of training time (``trainer.max_time=budget``, paced by time only; the
    config's ``max_steps`` stays the length the schedule is laid out over). Returns the curve
    (``n_points`` evenly spaced), ``result`` (metrics.json), ``time_s`` (training time) and
    ``settings`` (overrides, batch size, max_steps, steps done)."""
    from pvdal.tasks import distill, train

    cfg = compose_cfg(task, out_dir, [*overrides, f"trainer.max_time={float(budget)}",
                                      "callbacks.rich_progress_bar=null",
                                      "trainer.enable_progress_bar=false"])
    cb = BudgetPacedEval(checkpoints(budget, n_points))
    result = (train.run if task == "train" else distill.run)(cfg, [cb])
    settings = {"task": task, "overrides": list(overrides), "budget_s": budget,
                "batch_size": int(cfg.data.batch_size), "max_steps": int(cfg.trainer.max_steps),
                "steps": cb.rows[-1]["step"] if cb.rows else None}
    return {"curve": cb.rows, "result": result, "time_s": cb._elapsed, "settings": settings,
            "psnr": cb.rows[-1]["psnr"] if cb.rows else result.get("psnr")}


def resolve_teacher(arch: str, teachers_dir: Path, budget: float, overrides: list[str]) -> dict:
    """The ``arch`` teacher: ``<teachers_dir>/<arch>/checkpoints/last.ckpt`` when it exists,
    else trained there once (train.py defaults, its schedule filling ``budget`` seconds).
    Returns ckpt, psnr, time_s (training time, measured when it was trained)."""
    out = teachers_dir / arch
    ckpt, info = out / "checkpoints" / "last.ckpt", out / "bench_teacher.json"
    if not ckpt.is_file():
        run = budget_run("train", [f"arch={arch}", *overrides], out, budget, 2)
        info.write_text(dump({"psnr": run["psnr"], "time_s": run["time_s"],
                              "settings": run["settings"]}))
    if info.is_file():
        meta = json.loads(info.read_text())
        if meta["settings"]["overrides"] != [f"arch={arch}", *overrides]:
            print(f"note: reusing {ckpt}, trained with {meta['settings']['overrides']}")
    else:  # a train.py run put there by hand
        m = json.loads((out / "metrics.json").read_text())
        meta = {"psnr": m["psnr"], "time_s": m["train_time_s"]}
    return {"ckpt": str(ckpt), "psnr": meta["psnr"], "time_s": meta["time_s"]}


def scratch_run(arch: str, teachers_dir: Path, budget: float, overrides: list[str],
                n_points: int = 10) -> dict:
    """``arch`` trained from scratch with its schedule filling ``budget``; cached under
    ``<teachers_dir>/scratch/`` by arch, budget and overrides (matrix and ablation share it)."""
    import hashlib

    ov = [f"arch={arch}", *overrides]
    key = hashlib.sha256(dump([ov, budget, n_points]).encode()).hexdigest()[:10]
    path = teachers_dir / "scratch" / f"{arch}-{budget:g}s-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    with tempfile.TemporaryDirectory(prefix="pvdal-scratch-") as tmp:
        run = budget_run("train", ov, Path(tmp), budget, n_points)
    out = {k: run[k] for k in ("curve", "psnr", "time_s", "settings")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(out))
    return out


def student_run(teacher_arch: str, teacher: dict, student: str, budget: float,
                overrides: list[str], n_points: int = 10) -> dict:
    """Distil ``teacher`` into ``student`` with the schedule filling ``budget`` seconds."""
    with tempfile.TemporaryDirectory(prefix="pvdal-student-") as tmp:
        return budget_run("distill", [f"teacher={teacher_arch}", f"teacher.ckpt={teacher['ckpt']}",
                                      f"student={student}", *overrides], Path(tmp), budget,
                          n_points)


def compare_row(teacher: dict, scratch: dict | None, student: dict) -> dict:
    """The numbers both benchmarks report for a student against its scratch run and teacher:
    final PSNRs, the student's time to scratch's final PSNR and the speedup (scratch's time to
    its own final PSNR / the student's; None when the student never gets there, or without a
    scratch run)."""
    target = scratch["psnr"] if scratch else None
    reach = time_to_reach(student["curve"], target) if target is not None else None
    own = (time_to_reach(scratch["curve"], target) or scratch["time_s"]) if scratch else None
    return {"teacher_psnr": teacher["psnr"], "student_psnr": student["psnr"],
            "scratch_psnr": target,
            "student_vs_teacher_psnr": student["result"].get("student_vs_teacher_psnr"),
            "time_to_scratch_s": reach, "speedup": own / reach if reach else None,
            "student_time_s": student["time_s"], "teacher_time_s": teacher["time_s"],
            "settings": student["settings"]}


def try_compose(task: str, overrides: list[str]) -> str | None:
    """None when ``overrides`` compose, else why not (a key that does not exist yet, ...)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            compose_cfg(task, Path(tmp), overrides)
    except Exception as e:  # noqa: BLE001 - hydra raises several kinds
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


def bench_args(ap, pairs: str, budget: float) -> None:
    """The options bench/matrix.py and bench/ablation.py share."""
    ap.add_argument("--pairs", default=pairs, help="teacher2student,...")
    ap.add_argument("--budget", type=float, default=budget,
                    help="seconds of training for each scratch and student run")
    ap.add_argument("--teacher-budget", type=float, default=300.0,
                    help="seconds for a teacher not yet in --teachers-dir")
    ap.add_argument("--teachers-dir", type=Path, default=TEACHERS,
                    help="<dir>/<arch>/checkpoints/last.ckpt: reused, or trained there")
    ap.add_argument("--points", type=int, default=10, help="curve points per run")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--merge", action="store_true", help="keep the rows of runs not redone")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def run_parallel(calls: dict, workers: int):
    """Run ``calls`` (key -> (module-level function, args)) and yield ``(key, result)`` as each
    ends, the result an exception when the call raised. ``workers`` > 1: that many spawned
    processes at one thread each, so runs side by side share the machine alike (an odd last
    call runs alone); 1: one after another in this process, at the default thread count."""
    if workers <= 1:
        for key, (fn, args) in calls.items():
            try:
                yield key, fn(*args)
            except Exception as e:  # noqa: BLE001 - the caller reports it in its row
                yield key, e
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
        futures = {pool.submit(fn, *args): key for key, (fn, args) in calls.items()}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except Exception as e:  # noqa: BLE001 - as above
                yield futures[fut], e


class RefProgress:
    """The curves of a reference's own training loop (bench/tensorf_ref.py, nerf_ref.py): the
    mean batch PSNR every ``log_every`` iterations (``train_curve``) and the test PSNR at
    ``points`` evenly spaced training times (``curve``; the caller does not time the render)."""

    def __init__(self, name: str, budget: float, points: int, log_every: int) -> None:
        self.name, self.log_every = name, log_every
        self.marks = [budget * (i + 1) / points for i in range(points)] if points else []
        self.window: list[float] = []  # batch PSNRs since the last log line
        self.curve: list[dict] = []
        self.train_curve: list[dict] = []

    def after(self, it: int, elapsed: float, dt: float, msg: str, test_psnr) -> None:
        """After iteration ``it`` (ending at ``elapsed`` s of training, ``dt`` long): log, and
        call ``test_psnr()`` when a curve point falls within this iteration (the last point is
        left to ``finish``)."""
        if it % self.log_every == 0:
            self.train_curve.append({"iter": it, "time_s": round(elapsed, 2),
                                     "train_psnr": round(sum(self.window) / len(self.window), 3)})
            print(f"{self.name} it {it} t {elapsed:.1f}s batch psnr "
                  f"{self.train_curve[-1]['train_psnr']:.2f} {msg}", flush=True)
            self.window = []
        if self.marks and elapsed + 0.5 * dt >= self.marks[0]:
            while self.marks and elapsed + 0.5 * dt >= self.marks[0]:
                self.marks.pop(0)
            self.curve.append({"step": it, "time_s": round(elapsed, 2),
                               "psnr": test_psnr() if self.marks else None})

    def finish(self, final: float) -> float:
        """The final test PSNR, also the last curve point's."""
        if self.curve:
            self.curve[-1]["psnr"] = final
        return final
