"""pvdal's fields against their reference implementations, same scene, same wall-clock.

For each arch, pvdal's ``train`` (the arch's defaults) runs with its schedule filling ``--time``
seconds of training (``bench.common.budget_run``), and so does each of its references, on the
same scene (the config's ``data``: by default ``data=synthetic``, 64x64, 100 training views);
both are scored on the same test views against the same ground truth (white background, mean of
per-view PSNR). ``--jobs 2`` (default) runs two trainings side by side at one thread each, so
both sides of a comparison share the machine alike. Rows (one per arch and reference) go to
``<results-dir>/reference.json`` (+ ``.md``) as each arch completes; ``--merge`` keeps the rows
not rerun.

References (docs/reference.md says how each was run and what differs):

* tensorf -- TensoRF's own ``TensorVMSplit`` (apchenstu/TensoRF@6a1e23b, ``models/`` from
  ``--tensorf-src``) trained by TensoRF's lego recipe scaled to the budget
  (``bench/tensorf_ref.py``).
* mlp -- NeRF's own network and hierarchical sampling (yenchenlin/nerf-pytorch, from
  ``--nerf-src``) by its lego recipe at CPU sizes (``bench/nerf_ref.py``).
* ngp -- instant-ngp and tiny-cuda-nn need CUDA: Instant-NGP's recipe as nerfacc's example
  writes it, on pvdal's torch hash grid (``experiment=ref_instant_ngp``), as written and with
  pvdal's CPU field/grid sizes (the recipe's optimisation alone).
* plenoxels -- svox2 is CUDA only: its synthetic-scene recipe on pvdal's Plenoxels field
  (``experiment=ref_svox2``).

A reference whose code is missing or whose overrides do not compose gives
``reference_psnr: null`` and a ``reference_note``.

Usage::

    git --git-dir=<TensoRF git dir> archive HEAD models | tar -x -C /tmp/tensorf_src
    git --git-dir=<nerf-pytorch git dir> archive HEAD | tar -x -C /tmp/nerf_src
    python -m bench.reference --archs tensorf,ngp,plenoxels,mlp --time 400 \\
        --tensorf-src /tmp/tensorf_src --nerf-src /tmp/nerf_src [pvdal hydra overrides...]
    # smoke: python -m bench.reference --archs ngp --time 20 --results-dir /tmp/ref-smoke \\
    #   preset=tiny data.loader.resolution=16 data.loader.n_train=8
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    RESULTS,
    budget_run,
    compose_cfg,
    md_table,
    previous_rows,
    provenance,
    run_parallel,
    try_compose,
    write_results,
)

TENSORF_COMMIT = "apchenstu/TensoRF@6a1e23b"
NERF_REPO = "yenchenlin/nerf-pytorch"
# pvdal's CPU sizes of arch=ngp (conf/arch/ngp.yaml) and its grid/step (conf/train.yaml)
NGP_CPU_SIZES = ("arch.field.n_levels=12", "arch.field.log2_hashmap_size=17",
                 "arch.field.max_resolution=512", "render.n_samples=128",
                 "grid.resolution=64", "render.target_samples=8192")
KEYS = ["arch", "reference", "pvdal_psnr", "reference_psnr", "time_s", "reference_time_s",
        "commit"]


@dataclass(frozen=True)
class Reference:
    name: str  # the row's "reference"
    how: str  # tensorf | nerf (the reference's own code) | recipe (its recipe on pvdal)
    overrides: tuple[str, ...] = ()  # recipe: pvdal overrides that make it
    note: str = ""
    slow: str = ""  # why it is not run unless --as-written: it does not fit a CPU budget


REFERENCES: dict[str, list[Reference]] = {
    "tensorf": [Reference(f"TensoRF ({TENSORF_COMMIT}, its own code)", "tensorf")],
    "mlp": [Reference(f"NeRF ({NERF_REPO}, its own code, CPU sizes)", "nerf")],
    "ngp": [
        Reference("Instant-NGP recipe (nerfacc example) on pvdal's hash grid", "recipe",
                  ("experiment=ref_instant_ngp",),
                  "instant-ngp / tiny-cuda-nn need CUDA: the recipe as nerfacc's example writes "
                  "it, on pvdal's torch hash grid",
                  "on this CPU the example's 128^3 grid warm-up (2.1 M cells every 16 steps for "
                  "256 steps), 1024-sample steps and 2^19 x 16 table do not fit the budget: a "
                  "400 s run with its test renders had not finished after 26 min"),
        Reference("Instant-NGP recipe (nerfacc example), pvdal's CPU sizes", "recipe",
                  ("experiment=ref_instant_ngp", *NGP_CPU_SIZES),
                  "the example's optimisation (Adam, eps, weight decay, warm-up, steps x0.33, "
                  "samples per step) on arch=ngp's CPU field, step and grid sizes"),
    ],
    "plenoxels": [
        Reference("svox2 recipe (opt/configs/syn.json) on pvdal's svox2 field", "recipe",
                  ("experiment=ref_svox2",),
                  "svox2 is a CUDA extension: its synthetic-scene recipe on pvdal's field"),
    ],
}


def load_scene(overrides: list[str]):
    """pvdal's SceneData for these overrides (the loader writes/reuses outputs/data)."""
    from hydra.utils import instantiate

    with tempfile.TemporaryDirectory(prefix="pvdal-ref-") as tmp:
        cfg = compose_cfg("train", Path(tmp), ["arch=tensorf", *overrides])
    return instantiate(cfg.data.loader)


def noted(why: str) -> dict:
    """The outcome of a side that is not run: why (a run_parallel call like the others)."""
    return {"note": why}


def train_run(overrides: list[str], budget: float, points: int) -> dict:
    """pvdal's ``train`` with ``overrides``, its schedule filling ``budget`` seconds."""
    with tempfile.TemporaryDirectory(prefix="pvdal-ref-") as tmp:
        run = budget_run("train", overrides, Path(tmp), budget, points)
    return {k: run[k] for k in ("psnr", "time_s", "curve", "settings")}


def code_run(how: str, src: Path | None, overrides: list[str], budget: float,
             points: int) -> dict:
    """The reference's own code (TensoRF or nerf-pytorch) on pvdal's scene, or {"note": why}."""
    probe = {"tensorf": "models/tensoRF.py", "nerf": "run_nerf_helpers.py"}[how]
    if src is None or not (Path(src) / probe).is_file():
        return {"note": f"{probe} not found under --{how}-src {src}: extract the reference's "
                        "source there (see this module's docstring) and rerun"}
    if how == "tensorf":
        from bench.tensorf_ref import train_tensorf as fn
    else:
        from bench.nerf_ref import train_nerf as fn
    return fn(src, load_scene(overrides), budget, points)


def make_row(arch: str, ref: Reference, pv: dict, out: dict, commit: str | None) -> dict:
    """One row: pvdal's run ``pv`` against the reference's ``out`` (a run, or {"note"})."""
    row = {"arch": arch, "reference": ref.name, "pvdal_psnr": pv.get("psnr"),
           "reference_psnr": out.get("psnr"), "time_s": round(pv.get("time_s", 0.0), 2),
           "reference_time_s": round(out["time_s"], 2) if "time_s" in out else None,
           "commit": commit, "how": ref.how,
           "settings": {"pvdal": pv.get("settings"), "reference": out.get("settings") or {
               k: v for k, v in out.items()
               if k not in ("psnr", "time_s", "curve", "train_curve", "note")}},
           "pvdal_curve": pv.get("curve"), "reference_curve": out.get("curve")}
    if "train_curve" in out:
        row["reference_train_curve"] = out["train_curve"]
    pv_note = f"pvdal's run: {pv['note']}" if "note" in pv else None
    if ref.note or "note" in out or pv_note:
        row["reference_note"] = "; ".join(s for s in (ref.note, out.get("note"), pv_note) if s)
    return row


def calls_for(arch: str, args) -> dict:
    """(arch, side) -> (function, args) for the pvdal run and each reference of ``arch``."""
    calls = {(arch, "pvdal"): (train_run, ([f"arch={arch}", *args.overrides], args.time,
                                           args.points))}
    for i, ref in enumerate(REFERENCES.get(arch, [])):
        if ref.slow and not args.as_written:
            calls[(arch, i)] = (noted, (f"not run: {ref.slow} (--as-written runs it)",))
        elif ref.how == "recipe":
            calls[(arch, i)] = (train_run, ([*ref.overrides, *args.overrides], args.time,
                                            args.points))
        else:
            src = args.tensorf_src if ref.how == "tensorf" else args.nerf_src
            calls[(arch, i)] = (code_run, (ref.how, src, list(args.overrides), args.time,
                                           args.points))
    return calls


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="tensorf,ngp,plenoxels,mlp")
    ap.add_argument("--time", type=float, default=400.0,
                    help="seconds of training for each side")
    ap.add_argument("--tensorf-src", type=Path, default=None,
                    help="folder holding TensoRF's models/ package (apchenstu/TensoRF@6a1e23b)")
    ap.add_argument("--nerf-src", type=Path, default=None,
                    help="folder holding yenchenlin/nerf-pytorch's run_nerf_helpers.py")
    ap.add_argument("--jobs", type=int, default=2,
                    help="trainings side by side, one thread each (1: one at a time)")
    ap.add_argument("--as-written", action="store_true",
                    help="also run references that do not fit a CPU budget (see REFERENCES)")
    ap.add_argument("--points", type=int, default=5, help="test-PSNR curve points per run")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--merge", action="store_true", help="keep the rows of arches not rerun")
    ap.add_argument("overrides", nargs="*", help="pvdal Hydra overrides (every side's scene)")
    args = ap.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    commit = provenance()["commit"]
    calls: dict = {}
    for arch in archs:
        calls.update(calls_for(arch, args))
    for key, (fn, fargs) in list(calls.items()):  # a recipe that does not compose: say so
        why = try_compose("train", list(fargs[0])) if fn is train_run else None
        if why:
            calls.pop(key)
            calls[key] = (noted, (f"does not compose: {why}",))
    old = previous_rows("reference", ("arch", "reference"), args.results_dir) if args.merge else {}
    rows = [r for r in old.values() if r["arch"] not in archs]
    done: dict = {}
    for key, out in run_parallel(calls, args.jobs):
        done[key] = out if not isinstance(out, Exception) else {
            "note": f"failed: {type(out).__name__}: {out}"}
        arch = key[0]
        if all(k in done for k in calls if k[0] == arch):
            pv = done[(arch, "pvdal")]
            for i, ref in enumerate(REFERENCES.get(arch, [])):
                rows.append(make_row(arch, ref, pv, done[(arch, i)], commit))
                print(f"{arch} vs {ref.name}: pvdal {pv.get('psnr')}, reference "
                      f"{done[(arch, i)].get('psnr')}", flush=True)
            write_results("reference", rows, md_table(rows, KEYS), args.results_dir)


if __name__ == "__main__":
    main()
