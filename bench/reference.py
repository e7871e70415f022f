"""pvdal's fields against their reference implementations, same scene, same wall-clock.

For each arch, pvdal's ``train`` runs with its schedule filling ``--time`` seconds of training
(``bench.common.budget_run``), then, where the reference runs on this machine, the reference
trains on the same scene (the config's ``data``: by default ``data=synthetic``, 64x64, 100
training views) for the same time, and both are scored on the same test views against the same
ground truth (white background, mean of per-view PSNR). Rows go to
``<results-dir>/reference.json`` (+ ``.md``) as each arch completes.

* tensorf: TensoRF's own ``TensorVMSplit`` (apchenstu/TensoRF@6a1e23b, ``models/`` from
  ``--tensorf-src``) trained by TensoRF's recipe scaled to the budget (``bench/tensorf_ref.py``).
* ngp, plenoxels, mlp: instant-ngp / tiny-cuda-nn, svox2 and the nerfacc examples need CUDA;
  their rows carry ``reference_psnr: null`` and a ``reference_note`` (pvdal's side still runs).

Usage::

    git --git-dir=<TensoRF git dir> archive HEAD models | tar -x -C /tmp/tensorf_src
    python -m bench.reference --archs tensorf,ngp,plenoxels,mlp --time 766 \\
        --tensorf-src /tmp/tensorf_src [pvdal hydra overrides...]
    # smoke: python -m bench.reference --archs tensorf --time 20 --tensorf-src /tmp/tensorf_src \\
    #   --results-dir /tmp/ref-smoke preset=tiny data.loader.resolution=16 data.loader.n_train=8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, budget_run, compose_cfg, md_table, provenance, write_results

TENSORF_COMMIT = "apchenstu/TensoRF@6a1e23b"
CUDA_ONLY = {
    "ngp": ("instant-ngp / tiny-cuda-nn (NVlabs) need CUDA (fully fused MLPs, CUDA hash "
            "encoding); no CPU build. pvdal's arch=ngp follows Instant-NGP's recipe: hash grid "
            "+ tiny density/colour MLPs, CPU-sized (conf/arch/ngp.yaml; experiment=paper: the "
            "paper's sizes)."),
    "plenoxels": ("svox2 (sxyu/svox2) is a CUDA extension with no CPU path. pvdal's "
                  "arch=plenoxels follows Plenoxels' recipe: sparse density + SH grid, no "
                  "network, coarse-to-fine with pruning, CPU-sized 32^3 -> 128^3 "
                  "(conf/arch/plenoxels.yaml; the paper 128^3 -> 512^3)."),
    "mlp": ("the nerfacc examples (vanilla NeRF with an occupancy grid) need nerfacc's CUDA "
            "kernels. pvdal's arch=mlp follows the original NeRF: frequency encoding + ReLU "
            "trunk with a skip, CPU-sized 6 x 128 (conf/arch/mlp.yaml; the paper 8 x 256)."),
}
KEYS = ["arch", "pvdal_psnr", "reference_psnr", "time_s", "reference_time_s", "commit"]


def load_scene(overrides: list[str]):
    """pvdal's SceneData for these overrides (the loader writes/reuses outputs/data)."""
    from hydra.utils import instantiate

    with tempfile.TemporaryDirectory(prefix="pvdal-ref-") as tmp:
        cfg = compose_cfg("train", Path(tmp), ["arch=tensorf", *overrides])
    return instantiate(cfg.data.loader)


def pvdal_side(arch: str, overrides: list[str], budget: float, points: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="pvdal-ref-") as tmp:
        return budget_run("train", [f"arch={arch}", *overrides], Path(tmp), budget, points)


def tensorf_side(src: Path | None, overrides: list[str], budget: float,
                 points: int) -> dict:
    """TensoRF's result, or {"note": why not}."""
    if src is None or not (Path(src) / "models" / "tensoRF.py").is_file():
        return {"note": f"TensoRF's models/ not found (--tensorf-src {src}): extract "
                        f"{TENSORF_COMMIT}'s models/ there and rerun"}
    from bench.tensorf_ref import train_tensorf

    try:
        return train_tensorf(src, load_scene(overrides), budget, points)
    except Exception as e:  # noqa: BLE001 - the row says why, the other arches go on
        return {"note": f"TensoRF failed here: {type(e).__name__}: {e}"}


def make_row(arch: str, pv: dict, ref: dict, commit: str | None) -> dict:
    row = {"arch": arch, "pvdal_psnr": pv["psnr"], "reference_psnr": ref.get("psnr"),
           "time_s": round(pv["time_s"], 2), "commit": commit,
           "reference_time_s": round(ref["time_s"], 2) if "time_s" in ref else None,
           "settings": {"pvdal": pv["settings"], "budget_s": pv["settings"]["budget_s"]},
           "pvdal_curve": pv["curve"]}
    if arch == "tensorf" and "psnr" in ref:
        row["reference"] = (
            f"{TENSORF_COMMIT} models.tensoRF.TensorVMSplit (unmodified, imported from "
            "--tensorf-src) trained by bench/tensorf_ref.py: TensoRF's train.py/lego.txt "
            "recipe at the fixture's sizes (8/24 comps, 32^3->96^3, 2048 rays), run by time: "
            "schedule points (upsamples, alpha masks) and the lr decay laid out as fractions "
            f"of the {pv['settings']['budget_s']:g} s budget, stop at the budget; "
            f"{ref['iterations']} iterations done")
        row["settings"]["reference"] = {k: ref[k] for k in (
            "iterations", "final_reso", "aabb", "n_samples", "rays_kept", "recipe")}
        row["reference_curve"] = ref["curve"]
        row["reference_train_curve"] = ref["train_curve"]
    else:
        row["reference"] = (TENSORF_COMMIT if arch == "tensorf" else
                            {"ngp": "instant-ngp", "plenoxels": "svox2",
                             "mlp": "nerfacc examples"}.get(arch, "none")) + ": not run here"
        row["reference_note"] = CUDA_ONLY.get(arch) or ref.get("note", "no reference")
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="tensorf,ngp,plenoxels,mlp")
    ap.add_argument("--time", type=float, default=766.0,
                    help="seconds of training for each side (the TensoRF fixture's 766 s)")
    ap.add_argument("--tensorf-src", type=Path, default=None,
                    help="folder holding TensoRF's models/ package (apchenstu/TensoRF@6a1e23b)")
    ap.add_argument("--points", type=int, default=5, help="test-PSNR curve points per run")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("overrides", nargs="*", help="pvdal Hydra overrides (both sides' scene)")
    args = ap.parse_args(argv)
    commit = provenance()["commit"]
    rows: list[dict] = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        t0 = time.perf_counter()
        pv = pvdal_side(arch, args.overrides, args.time, args.points)
        ref = (tensorf_side(args.tensorf_src, args.overrides, args.time, args.points)
               if arch == "tensorf" else {})
        rows.append(make_row(arch, pv, ref, commit))
        print(f"{arch}: pvdal {pv['psnr']:.2f} dB, reference {ref.get('psnr')} "
              f"({time.perf_counter() - t0:.0f} s wall)", flush=True)
        write_results("reference", rows, md_table(rows, KEYS), args.results_dir)


if __name__ == "__main__":
    main()
