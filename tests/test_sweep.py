"""A 2x2 conversion sweep with the joblib launcher, turned into the report (end to end)."""

from __future__ import annotations

import csv
import subprocess
import sys

from tests.conftest import ROOT, TINY_DATA, TINY_RUN


def test_joblib_sweep_and_report(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "distill.py", "-m", "hydra/launcher=joblib",
           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}",
           "teacher=ngp,tensorf", "student=mlp,tensorf", "preset=tiny",
           f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}",
           "teacher_train.max_steps=6", *TINY_DATA, *TINY_RUN, "trainer.max_steps=4"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert len(jobs) == 4 and all((j / "metrics.json").is_file() for j in jobs)
    # each teacher was trained once, although two jobs asked for it
    assert len(list((tmp_path / "logs" / "teachers").glob("*/checkpoints/last.ckpt"))) == 2
    rep = subprocess.run([sys.executable, "-m", "pvdal.report", str(sweep)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr[-2000:]
    for name in ("report.md", "report.csv", "heatmap.png"):
        assert (sweep / name).is_file()
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    pairs = {(r["teacher"], r["student"]) for r in rows}
    assert pairs == {("ngp", "mlp"), ("ngp", "tensorf"), ("tensorf", "mlp"),
                     ("tensorf", "tensorf")}
    md = (sweep / "report.md").read_text()
    assert "tensorf" in md and "mlp" in md
