"""``python -m pvdal.report``: conversion matrix of a (fake) multirun dir, failed jobs marked."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from pvdal.report import main, write_report
from pvdal.utils.plugins import RequirePlugin, plugin_available
from tests.conftest import CONF, ROOT


def fake_job(root: Path, num: int, teacher: str, student: str, al: str = "none",
             psnr: float | None = 30.0, error: str | None = None) -> Path:
    """A job dir as a distill.py sweep leaves it (psnr None: no metrics.json)."""
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    flags = {"none": (), "full": ("view", "ray", "point")}.get(al, (al,))
    cfg = {"teacher": {"name": teacher, "ckpt": None}, "student": {"name": student},
           "al": {k: {"enabled": k in flags} for k in ("view", "ray", "point")},
           "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"teacher={teacher}", f"student={student}", f"al={al}"]))
    if psnr is not None:
        m = {"student": {"psnr": psnr, "ssim": 0.9, "lpips": None, "fps": 2.0,
                         "num_params": 1000, "size_mb": 1.5},
             "teacher": {"psnr": psnr + 1, "ssim": 0.92, "lpips": None, "fps": 2.0,
                         "num_params": 900, "size_mb": 1.2},
             "student_vs_teacher_psnr": 35.0, "train_time_s": 120.0, "steps": 100,
             "pair": f"{teacher}2{student}"}
        (job / "metrics.json").write_text(json.dumps(m))
    if error:
        (job / "error.txt").write_text(f"pvdal: error: {error}\n")
    return job


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_2x2_with_a_failed_job(tmp_path):
    fake_job(tmp_path, 0, "ngp", "mlp", psnr=28.5)
    fake_job(tmp_path, 1, "ngp", "tensorf", psnr=31.25)
    fake_job(tmp_path, 2, "mlp", "mlp", psnr=27.0)
    fake_job(tmp_path, 3, "mlp", "tensorf", psnr=None, error="teacher.ckpt: not found")
    paths = write_report(tmp_path)
    assert all(p.is_file() for p in paths.values())
    md = paths["md"].read_text()
    assert "| ngp | 28.50 | 31.25 |" in md
    assert "| mlp | 27.00 | FAILED |" in md
    assert "teacher.ckpt: not found" in md and "4 jobs, 1 failed" in md
    for title in ("Student SSIM", "Student vs teacher PSNR", "Time (s)", "Student size (MB)"):
        assert title in md
    rows = read_csv(paths["csv"])
    assert len(rows) == 4
    by_job = {r["job"]: r for r in rows}
    assert by_job["3"]["status"] == "failed" and by_job["3"]["psnr"] == ""
    assert by_job["1"]["status"] == "ok" and float(by_job["1"]["psnr"]) == 31.25
    assert by_job["0"]["teacher_psnr"] == "29.5" and by_job["0"]["al"] == "none"
    img = iio.imread(paths["png"])
    assert img.ndim == 3 and img.shape[0] > 100


def test_report_several_al_values_and_crashed_job(tmp_path):
    fake_job(tmp_path, 0, "ngp", "mlp", al="none", psnr=28.0)
    fake_job(tmp_path, 1, "ngp", "mlp", al="full", psnr=29.0)
    fake_job(tmp_path, 2, "ngp", "tensorf", al="full", psnr=None)  # crashed: no metrics.json
    (tmp_path / "2" / ".hydra" / "overrides.yaml").unlink()  # al from the config's flags
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    paths = write_report(tmp_path)
    md = paths["md"].read_text()
    assert "## al = full" in md and "## al = none" in md
    assert "no metrics.json" in md
    rows = {r["job"]: r for r in read_csv(paths["csv"])}
    assert rows["2"]["al"] == "full" and rows["2"]["status"] == "failed"
    assert rows["1"]["al"] == "full" and rows["0"]["al"] == "none"


def test_report_cli(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2  # no job dirs
    fake_job(tmp_path, 0, "ngp", "ngp")
    res = subprocess.run([sys.executable, "-m", "pvdal.report", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "report.md").is_file() and (tmp_path / "heatmap.png").is_file()


def test_slurm_preset_names_the_extra_when_plugin_missing(tmp_path, capsys):
    """``hydra/launcher=slurm``: full launcher config + a callback that checks the plugin."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("distill", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    for key in ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "submitit_folder"):
        assert key in launcher
    cb = instantiate(cfg.hydra.callbacks.require_slurm_plugin)
    assert isinstance(cb, RequirePlugin)
    if plugin_available(cb.module):
        pytest.skip("hydra-submitit-launcher is installed")
    with pytest.raises(SystemExit) as e:
        cb.on_multirun_start(cfg)
    assert e.value.code == 2
    assert 'pip install -e ".[slurm]"' in capsys.readouterr().err
