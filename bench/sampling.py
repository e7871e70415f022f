"""Sampling efficiency: steps/s, samples per ray and test PSNR at equal wall-clock, before/after.

    python -m bench.sampling [--budget 120 | --steps N] [--archs ngp mlp plenoxels tensorf]
                             [--base REV] [--jobs 2] [--fixed-batch]
                             [--unbounded-size 64] [OVERRIDE ...]

Each row trains one architecture with ``train.py`` for ``--budget`` seconds (``trainer.max_time``;
the schedule is paced to fit) on the default scene and, for ngp, on an unbounded
``transforms.json`` capture written by ``bench/unbounded_scene.py``. With ``--base REV`` the same
runs are repeated in a git worktree of REV (the "before"), interleaved with the current tree so
both see the same machine load; ``--jobs 2`` runs two at a time, one thread each (the base and
current runs of a row side by side). ``--fixed-batch`` adds the ngp rows again at a fixed batch
of ``data.batch_size`` rays (``render.target_samples=null``; ngp's default adapts its rays to a
number of samples, which evens out steps/s between scenes). Writes
bench/results/sampling.json: one row per (scene, arch, code, batch) with ``steps_per_s``,
``rays_per_s`` (rays per step, as logged or from the config, times steps/s),
``cpu_s_per_step`` (the run's CPU seconds, setup and test included, per step, on one thread:
comparable when the machine is busy, where steps/s is not),
``samples_per_ray`` (mean of the logged values over the second half of the run), ``psnr``
(test split), ``render_rays_per_s``, ``steps``, plus ``provenance`` (commit, command line) and
the settings.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from bench.common import ROOT, md_table, provenance, run_parallel, write_results
from bench.unbounded_scene import write as write_unbounded


def _logged(run: Path, key: str) -> list[float]:
    """Every value of the metric ``key`` in the run's CSV logs, in order."""
    vals = []
    for f in run.glob("csv/**/metrics.csv"):
        with f.open() as fh:
            vals += [float(r[key]) for r in csv.DictReader(fh) if r.get(key)]
    return vals


def _samples_per_ray(run: Path) -> float | None:
    vals = _logged(run, "train/samples_per_ray")
    half = vals[len(vals) // 2:]
    return sum(half) / len(half) if half else None


def _rays_per_batch(run: Path) -> float:
    """Mean logged rays per batch (adaptive batches), else the config's fixed batch size."""
    if vals := _logged(run, "train/rays_per_batch"):
        return sum(vals) / len(vals)
    return float(OmegaConf.select(OmegaConf.load(run / ".hydra" / "config.yaml"),
                                  "data.batch_size"))


def train_run(tree: Path, out: Path, overrides: list[str], budget: float,
              steps: int | None = None) -> dict:
    """One ``train.py`` run in ``tree`` (``budget`` seconds, or exactly ``steps`` steps);
    the metrics it wrote and the CPU time it took."""
    secs = int(budget)
    limit = ([f"trainer.max_steps={steps}", "trainer.max_time=null"] if steps else
             [f"trainer.max_time=00:00:{secs // 60:02d}:{secs % 60:02d}"])
    cmd = [sys.executable, "train.py", f"hydra.run.dir={out}", *limit,
           "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    sps = m["steps"] / m["train_time_s"]
    return {"steps": m["steps"], "steps_per_s": sps, "rays_per_s": sps * _rays_per_batch(out),
            "cpu_s_per_step": cpu / m["steps"] if m["steps"] else None, "cpu_s": cpu,
            "samples_per_ray": _samples_per_ray(out), "psnr": m.get("psnr"),
            "render_rays_per_s": m.get("render_rays_per_s"), "train_time_s": m["train_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds per run")
    ap.add_argument("--steps", type=int, default=None,
                    help="train exactly this many steps instead (a busy machine)")
    ap.add_argument("--archs", nargs="+", default=["ngp", "mlp", "plenoxels", "tensorf"])
    ap.add_argument("--base", default=None, help="git revision to compare against")
    ap.add_argument("--unbounded-size", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    ap.add_argument("--fixed-batch", action="store_true",
                    help="also run the ngp rows at a fixed batch of rays")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pvdal-bench-sampling-"))
    trees = {"current": ROOT}
    if args.base:
        base = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT,
                       check=True, capture_output=True)
        trees = {"base": base, "current": ROOT}
    scene = write_unbounded(tmp / "unbounded", args.unbounded_size, 48, 6)
    unb = ["data=transforms", f"data.root={scene}"]
    jobs = [("synthetic", a, [], "default") for a in args.archs]
    jobs.append(("unbounded", "ngp", unb, "default"))
    if args.fixed_batch:
        fixed = ["++render.target_samples=null"]  # ++: the base may predate the key
        jobs += [("synthetic", "ngp", fixed, "fixed"), ("unbounded", "ngp", unb + fixed, "fixed")]
    calls = {}
    for scene_name, arch, extra, batch in jobs:
        for code, tree in trees.items():
            out = tmp / f"{scene_name}-{arch}-{batch}-{code}"
            calls[(scene_name, arch, code, batch)] = (
                train_run, (tree, out, [f"arch={arch}", *extra, *args.overrides], args.budget,
                            args.steps))
    rows = []
    try:
        for (scene_name, arch, code, batch), res in run_parallel(calls, args.jobs):
            if isinstance(res, Exception):
                raise res
            rows.append({"scene": scene_name, "arch": arch, "code": code, "batch": batch, **res})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if args.base:
            subprocess.run(["git", "worktree", "remove", "--force", str(trees["base"])],
                           cwd=ROOT, capture_output=True)
    rows.sort(key=lambda r: (r["batch"], r["scene"], r["arch"], r["code"]))
    result = {"provenance": provenance(), "base": args.base, "budget_s": args.budget,
              "steps": args.steps, "jobs": args.jobs, "load_avg_at_end": os.getloadavg(),
              "overrides": args.overrides, "unbounded_scene": {
                  "writer": "bench/unbounded_scene.py", "size": args.unbounded_size,
                  "n_views": 54, "aabb_scale": 16}, "rows": rows}
    table = md_table(rows, ["scene", "arch", "code", "batch", "steps", "steps_per_s",
                            "rays_per_s", "cpu_s_per_step", "samples_per_ray",
                            "psnr", "render_rays_per_s"])
    write_results("sampling", result, table)


if __name__ == "__main__":
    main()
