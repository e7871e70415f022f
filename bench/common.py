"""Shared benchmark plumbing: compose a config like the CLI, run a task with a wall-clock curve."""

from __future__ import annotations

import json
import os
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


def previous_rows(name: str, key: str) -> dict[str, dict]:
    """Rows of an earlier ``bench/results/<name>.json`` by ``key`` ({} when there is none)."""
    path = RESULTS / f"{name}.json"
    return {r[key]: r for r in json.loads(path.read_text())} if path.exists() else {}


def write_results(name: str, rows: list | dict, table: str) -> None:
    """Write ``bench/results/<name>.json`` (+ ``.md``). Every row (or the one result) records
    what made it (``provenance``: commit, command line, torch); rows merged from an earlier
    file keep their own."""
    prov = provenance()
    for row in rows if isinstance(rows, list) else [rows]:
        if isinstance(row, dict):
            row.setdefault("provenance", prov)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", rows)
    (RESULTS / f"{name}.md").write_text(table + "\n")
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
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {"commit": commit, "argv": sys.argv, "torch": torch.__version__}


def dump(obj) -> str:
    return json.dumps(obj, indent=2)
