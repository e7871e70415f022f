"""Conversion matrix of a distillation sweep: ``python -m pvdal.report <multirun dir>``.

Reads every job dir (a folder holding ``.hydra/``): its ``metrics.json`` and
``.hydra/config.yaml`` (teacher, student; the ``al`` choice from ``.hydra/hydra.yaml`` or the
overrides). A job with ``error.txt`` or without ``metrics.json`` is *failed*. Writes, in the
multirun dir: ``report.md`` (teacher x student matrices per al value), ``report.csv`` (one row
per job, with an ``al`` column) and ``heatmap.png`` (student PSNR). ``train.py`` sweeps work too
(teacher ``images``, student = the trained arch).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from pvdal.io.atomic import atomic_open, atomic_write_bytes
from pvdal.utils.errors import PvdalError

COLUMNS = ["job", "al", "teacher", "student", "status", "psnr", "ssim", "lpips",
           "student_vs_teacher_psnr", "teacher_psnr", "train_time_s", "size_mb", "num_params",
           "fps", "error"]
MATRICES = [("psnr", "Student PSNR (dB)", "{:.2f}"), ("ssim", "Student SSIM", "{:.3f}"),
            ("student_vs_teacher_psnr", "Student vs teacher PSNR (dB)", "{:.2f}"),
            ("train_time_s", "Time (s)", "{:.0f}"), ("size_mb", "Student size (MB)", "{:.2f}")]


def _get(cfg: Any, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # unresolvable interpolation etc.
        return None


def _load_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path) if path.is_file() else None
    except Exception:
        return None


def al_name(hydra_dir: Path, cfg: Any) -> str:
    """The ``al`` group choice: hydra.yaml's runtime choices, the overrides, or the flags."""
    choice = _get(_load_yaml(hydra_dir / "hydra.yaml"), "hydra.runtime.choices.al")
    if choice:
        return str(choice)
    for o in _load_yaml(hydra_dir / "overrides.yaml") or []:
        if str(o).split("=")[0].lstrip("+~") == "al":
            return str(o).split("=", 1)[1]
    on = [k for k in ("view", "ray", "point") if _get(cfg, f"al.{k}.enabled")]
    if cfg is None or _get(cfg, "al") is None:
        return "-"
    return {0: "none", 3: "full"}.get(len(on), "+".join(on))


def read_job(job: Path, root: Path) -> dict:
    """One job dir -> a row (COLUMNS); status ``ok`` or ``failed`` with the reason."""
    cfg = _load_yaml(job / ".hydra" / "config.yaml")
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(job=str(job.relative_to(root)), al=al_name(job / ".hydra", cfg))
    teacher, student = _get(cfg, "teacher.name"), _get(cfg, "student.name")
    if student is None and _get(cfg, "arch.name") is not None:  # a train.py sweep
        teacher, student = "images", _get(cfg, "arch.name")
    metrics_path, error_path = job / "metrics.json", job / "error.txt"
    m: dict = {}
    if metrics_path.is_file():
        try:
            m = json.loads(metrics_path.read_text())
        except (OSError, ValueError):
            row["error"] = "metrics.json unreadable"
    if error_path.is_file():
        lines = error_path.read_text(errors="replace").strip().splitlines()
        row["error"] = lines[0].removeprefix("pvdal: error: ")[:300] if lines else "error.txt"
    elif not metrics_path.is_file():
        row["error"] = "no metrics.json (crashed, killed or still running)"
    pair = str(m.get("pair", ""))
    if (teacher is None or student is None) and "2" in pair:
        teacher, student = pair.split("2", 1)
    row.update(teacher=str(teacher or "?"), student=str(student or "?"),
               status="failed" if row["error"] else "ok")
    if row["status"] == "ok":
        s = m.get("student", m)
        row.update({k: s.get(k) for k in ("psnr", "ssim", "lpips", "size_mb", "num_params",
                                          "fps")})
        row.update(student_vs_teacher_psnr=m.get("student_vs_teacher_psnr"),
                   teacher_psnr=(m.get("teacher") or {}).get("psnr"),
                   train_time_s=m.get("train_time_s"))
    return row


def collect(root: Path) -> list[dict]:
    jobs = sorted({h.parent for h in root.rglob(".hydra") if h.is_dir()},
                  key=lambda p: [(0, int(t), "") if t.isdigit() else (1, 0, t)
                                 for t in p.relative_to(root).parts])
    return [read_job(j, root) for j in jobs]


def _mean(rows: list[dict], key: str) -> float | None:
    v = [float(r[key]) for r in rows if r["status"] == "ok" and r.get(key) is not None]
    return float(np.mean(v)) if v else None


def matrices(rows: list[dict]) -> dict[str, tuple[list[str], list[str], dict]]:
    """al -> (teachers, students, {(teacher, student): [rows]})."""
    out: dict[str, tuple[list[str], list[str], dict]] = {}
    for al in sorted({r["al"] for r in rows}, key=lambda a: (a != "none", a)):
        sub = [r for r in rows if r["al"] == al]
        cells: dict = defaultdict(list)
        for r in sub:
            cells[(r["teacher"], r["student"])].append(r)
        out[al] = (sorted({r["teacher"] for r in sub}), sorted({r["student"] for r in sub}),
                   cells)
    return out


def cell_text(cell: list[dict], key: str, fmt: str) -> str:
    if not cell:
        return ""
    ok = [r for r in cell if r["status"] == "ok"]
    if not ok:
        return "FAILED"
    v = _mean(cell, key)
    txt = "n/a" if v is None else fmt.format(v)
    if len(ok) > 1:
        txt += f" (n={len(ok)})"
    return txt + (f" +{len(cell) - len(ok)} failed" if len(ok) < len(cell) else "")


def markdown(root: Path, rows: list[dict]) -> str:
    failed = [r for r in rows if r["status"] == "failed"]
    lines = ["# Conversion report", "", f"`{root}`: {len(rows)} jobs, {len(failed)} failed.", ""]
    for al, (teachers, students, cells) in matrices(rows).items():
        lines += [f"## al = {al}", ""]
        for key, title, fmt in MATRICES:
            lines += [f"### {title}", "", "| teacher \\ student | " + " | ".join(students) + " |",
                      "|---" * (len(students) + 1) + "|"]
            lines += [f"| {t} | " + " | ".join(cell_text(cells.get((t, s), []), key, fmt)
                                               for s in students) + " |" for t in teachers]
            lines.append("")
    if failed:
        lines += ["## Failed jobs", "", "| job | al | teacher | student | reason |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['job']} | {r['al']} | {r['teacher']} | {r['student']} | "
                  f"{str(r['error']).replace('|', '/')} |" for r in failed]
        lines.append("")
    return "\n".join(lines)


def heatmap_png(rows: list[dict]) -> bytes:
    """Student PSNR per (teacher, student), one panel per al value; failed cells hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mats = matrices(rows)
    ok = [float(r["psnr"]) for r in rows if r["status"] == "ok" and r.get("psnr") is not None]
    vmin, vmax = (min(ok), max(ok) + 1e-6) if ok else (0.0, 1.0)  # one scale for all panels
    fig, axes = plt.subplots(1, len(mats), figsize=(4.5 * len(mats) + 1, 4), squeeze=False)
    for ax, (al, (teachers, students, cells)) in zip(axes[0], mats.items()):
        grid = np.full((len(teachers), len(students)), np.nan)
        for (t, s), cell in cells.items():
            v = _mean(cell, "psnr")
            grid[teachers.index(t), students.index(s)] = np.nan if v is None else v
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=vmin, vmax=vmax)
        for i, t in enumerate(teachers):
            for j, s in enumerate(students):
                txt = cell_text(cells.get((t, s), []), "psnr", "{:.1f}").split(" (")[0]
                if txt == "FAILED":
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                               hatch="xx", color="tab:red"))
                    ax.text(j, i, "failed", ha="center", va="center", color="tab:red",
                            weight="bold", bbox={"facecolor": "white", "edgecolor": "none"})
                elif txt:
                    light = np.isfinite(grid[i, j]) and (grid[i, j] - vmin) / (vmax - vmin) > 0.6
                    ax.text(j, i, txt, ha="center", va="center",
                            color="black" if light else "white")
        ax.set_xticks(range(len(students)), students)
        ax.set_yticks(range(len(teachers)), teachers)
        ax.set_xlabel("student")
        ax.set_ylabel("teacher")
        ax.set_title(f"student PSNR (dB), al={al}")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.046 / len(mats))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(root: str | Path) -> dict[str, Path]:
    """Write report.md, report.csv and heatmap.png into ``root``; returns their paths."""
    root = Path(root)
    if not root.is_dir():
        raise PvdalError(str(root), "is not a directory", "pass a multirun dir "
                         "(outputs/distill/multiruns/<time>)")
    rows = collect(root)
    if not rows:
        raise PvdalError(str(root), "holds no job dirs (no */.hydra/)",
                         "pass the multirun dir of a `python distill.py -m ...` sweep")
    paths = {"md": root / "report.md", "csv": root / "report.csv", "png": root / "heatmap.png"}
    atomic_write_bytes(paths["md"], markdown(root, rows).encode())
    with atomic_open(paths["csv"], "w") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    atomic_write_bytes(paths["png"], heatmap_png(rows))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pvdal.report", description=__doc__.split("\n")[0])
    ap.add_argument("multirun_dir", help="a sweep dir, e.g. outputs/distill/multiruns/<time>")
    args = ap.parse_args(argv)
    try:
        paths = write_report(args.multirun_dir)
    except PvdalError as e:
        print(f"pvdal: error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
