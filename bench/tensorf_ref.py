"""TensoRF's own field (apchenstu/TensoRF@6a1e23b, ``models.tensoRF.TensorVMSplit``) trained by
TensoRF's recipe on a pvdal scene, for a wall-clock budget. Used by ``bench/reference.py``.

TensoRF's code is not part of pvdal: pass a folder holding its ``models/`` package
(``git --git-dir=<TensoRF git dir> archive HEAD models | tar -x -C DIR``). Only ``models/``
(torch + numpy) is imported; the training loop below follows ``train.py`` (``reconstruction``),
``opt.py`` and ``configs/lego.txt`` without its cv2/kornia/lpips imports.

The recipe (``configs/lego.txt``, sizes of ``../shared/fixtures/tensorf_synthetic``): VM split,
8/24 components, ``MLP_Fea`` (featureC 128, view_pe = fea_pe = 2, pos_pe 6), app_dim 27, softplus
density with shift -10, distance_scale 25, step_ratio 0.5, 2048 rays a step, 32^3 -> 96^3 voxels
over five log-spaced upsamplings (the optimizer rebuilt at the full rate, lr_upsample_reset=1),
Adam (0.9, 0.99), lr 0.02 (planes/lines) and 1e-3 (basis + MLP) decayed exponentially to 0.1x,
L1 on density 8e-5 then 4e-5, alpha-mask updates (the first shrinks the box, the second filters
the training rays by the mask), rays first filtered by the box, white background.

Scaling to the budget: the run is paced by time, like pvdal's ``bench.common.budget_run``. Every
schedule point of lego.txt (upsamplings at 2000..7000 of 30000 iterations, alpha masks at 2000
and 4000) becomes that fraction of the training time, and the learning rate at progress
``p = elapsed / budget`` is ``lr0 * 0.1 ** (p - p_reset)`` (TensoRF's per-iteration factor,
restarted at each upsampling); training stops at the budget (the iteration ending nearest it).
With a budget of a few seconds the schedule points fall within the first iterations (an empty
alpha mask is retried 10 iterations later): use short budgets only as smoke tests.
Test renders are timed out.

Rays are TensoRF's Blender rays: pvdal's pixel-centre rays (``c2w · diag(1, -1, -1)``, the same
directions) with the origins taken back to the Blender world (x ``1 / data.world.scale`` = 1.5),
box ±1.5, near/far 2-6.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import RefProgress

LEGO_ITERS = 30000
UPSAMPLE = [2000, 3000, 4000, 5500, 7000]  # configs/lego.txt
ALPHA_MASK = [2000, 4000]
RECIPE = {"n_lamb_sigma": [8, 8, 8], "n_lamb_sh": [24, 24, 24], "app_dim": 27,
          "shadingMode": "MLP_Fea", "fea2denseAct": "softplus", "pos_pe": 6, "view_pe": 2,
          "fea_pe": 2, "featureC": 128, "density_shift": -10, "distance_scale": 25,
          "alpha_mask_thre": 1e-4, "step_ratio": 0.5, "batch_size": 2048,
          "N_voxel_init": 32 ** 3, "N_voxel_final": 96 ** 3, "lr_init": 0.02, "lr_basis": 1e-3,
          "lr_decay_target_ratio": 0.1, "lr_upsample_reset": 1, "L1_weight_inital": 8e-5,
          "L1_weight_rest": 4e-5, "near_far": [2.0, 6.0], "aabb": 1.5, "white_bg": True,
          "seed": 20211202, "upsamp_frac": [i / LEGO_ITERS for i in UPSAMPLE],
          "alpha_mask_frac": [i / LEGO_ITERS for i in ALPHA_MASK]}


def scene_rays(data, split: str) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """All rays of ``split`` in TensoRF's Blender world: [N, 6] (origin, unit direction), their
    colours [N, 3] and each image's (H, W)."""
    frames, world_scale = data.split(split), 1.0 / float(data.world.scale)
    rays, rgbs, hw = [], [], []
    for i in range(len(frames)):
        o, d = data.image_rays(frames, i)
        rays.append(torch.cat([o * world_scale, d], -1))
        rgbs.append(frames.images[i].reshape(-1, 3))
        hw.append(tuple(int(v) for v in frames.hw[i]))
    return torch.cat(rays).float(), torch.cat(rgbs).float(), hw


class _Sampler:
    """train.py's SimpleSampler: a fresh permutation whenever the next batch would run over."""

    def __init__(self, total: int, batch: int) -> None:
        self.total, self.batch, self.curr, self.ids = total, batch, total, None

    def nextids(self) -> torch.Tensor:
        self.curr += self.batch
        if self.curr + self.batch > self.total:
            self.ids = torch.LongTensor(np.random.permutation(self.total))
            self.curr = 0
        return self.ids[self.curr:self.curr + self.batch]


@torch.no_grad()
def test_psnr(model, data, chunk: int = 4096) -> float:
    """Mean over the test views of pvdal's PSNR (renders clamped to [0, 1], like TensoRF's
    ``evaluation``; ``N_samples=-1``: the model's own step)."""
    from pvdal.metrics import psnr

    rays, rgbs, hw = scene_rays(data, "test")
    out = torch.cat([model(r, is_train=False, white_bg=True, N_samples=-1)[0]
                     for r in rays.split(chunk)]).clamp(0, 1)
    vals, at = [], 0
    for h, w in hw:
        vals.append(float(psnr(out[at:at + h * w], rgbs[at:at + h * w])))
        at += h * w
    return sum(vals) / len(vals)


def train_tensorf(src: str | Path, data, budget: float, points: int = 5,
                  log_every: int = 25, quiet: bool = True, recipe: dict | None = None) -> dict:
    """Train TensorVMSplit for ``budget`` seconds; returns psnr (test), curve (test PSNR at
    ``points`` evenly spaced training times, renders excluded), train_curve (batch PSNR),
    iterations, time_s, final grid and samples, and the recipe (``recipe``: entries of
    ``RECIPE`` to change, e.g. later schedule fractions for a smoke test)."""
    sys.path.insert(0, str(Path(src).resolve()))
    from models.tensoRF import TensorVMSplit  # noqa: PLC0415 - TensoRF's own code, from src

    r = {**RECIPE, **(recipe or {})}
    torch.manual_seed(r["seed"])
    np.random.seed(r["seed"])
    hush = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    dev = torch.device("cpu")
    aabb = torch.tensor([[-r["aabb"]] * 3, [r["aabb"]] * 3])

    def n_to_reso(n_voxels: int, bbox: torch.Tensor) -> list[int]:  # utils.N_to_reso
        size = bbox[1] - bbox[0]
        return (size / (size.prod() / n_voxels).pow(1 / 3)).long().tolist()

    def n_samples(reso: list[int]) -> int:  # utils.cal_n_samples, capped by opt.nSamples
        return min(int(1e6), int(np.linalg.norm(reso) / r["step_ratio"]))

    reso = n_to_reso(r["N_voxel_init"], aabb)
    n_samp = n_samples(reso)
    with hush:
        model = TensorVMSplit(aabb, reso, dev, density_n_comp=r["n_lamb_sigma"],
                              appearance_n_comp=r["n_lamb_sh"], app_dim=r["app_dim"],
                              near_far=r["near_far"], shadingMode=r["shadingMode"],
                              alphaMask_thres=r["alpha_mask_thre"],
                              density_shift=r["density_shift"],
                              distance_scale=r["distance_scale"], pos_pe=r["pos_pe"],
                              view_pe=r["view_pe"], fea_pe=r["fea_pe"], featureC=r["featureC"],
                              step_ratio=r["step_ratio"], fea2denseAct=r["fea2denseAct"])

    def optimizer(scale: float) -> torch.optim.Adam:
        groups = model.get_optparam_groups(r["lr_init"] * scale, r["lr_basis"] * scale)
        for g in groups:
            g["lr0"] = g["lr"]
        return torch.optim.Adam(groups, betas=(0.9, 0.99))

    opt = optimizer(1.0)
    voxels = torch.round(torch.exp(torch.linspace(
        math.log(r["N_voxel_init"]), math.log(r["N_voxel_final"]),
        len(r["upsamp_frac"]) + 1))).long().tolist()[1:]
    allrays, allrgbs, _ = scene_rays(data, "train")
    elapsed, t0 = 0.0, time.perf_counter()
    with hush:
        allrays, allrgbs = model.filtering_rays(allrays, allrgbs, bbox_only=True)
    sampler = _Sampler(allrays.shape[0], r["batch_size"])
    l1 = r["L1_weight_inital"]
    ups, masks = list(r["upsamp_frac"]), list(r["alpha_mask_frac"])
    p_reset, it, retry_at, deferred = 0.0, 0, 0, 0
    prog = RefProgress("tensorf-ref", budget, points, log_every)
    elapsed += time.perf_counter() - t0
    dt = 0.0
    while elapsed + 0.5 * dt < budget:  # the last iteration ends nearest the budget
        t0 = time.perf_counter()
        p = elapsed / budget
        for g in opt.param_groups:  # lr_factor per iteration, as a function of time
            g["lr"] = g["lr0"] * r["lr_decay_target_ratio"] ** (p - p_reset)
        ids = sampler.nextids()
        rgb, _ = model(allrays[ids], is_train=True, white_bg=r["white_bg"], N_samples=n_samp)
        mse = torch.mean((rgb - allrgbs[ids]) ** 2)
        loss = mse + l1 * model.density_L1() if l1 > 0 else mse
        opt.zero_grad()
        loss.backward()
        opt.step()
        it += 1
        prog.window.append(-10.0 * math.log10(max(mse.item(), 1e-10)))
        with hush:
            if masks and p >= masks[0] and it >= retry_at:
                reso_mask = reso  # train.py: reso_cur while under 256^3
                first = len(masks) == len(r["alpha_mask_frac"])
                try:
                    new_aabb = model.updateAlphaMask(tuple(reso_mask))
                except IndexError:  # nothing above the threshold yet (a very short budget)
                    model.alphaMask, retry_at, new_aabb = None, it + 10, None
                    deferred += 1
                if new_aabb is not None and first:
                    model.shrink(new_aabb)
                    l1 = r["L1_weight_rest"]
                if new_aabb is not None and len(masks) == 1:  # the second: filter by the mask
                    allrays, allrgbs = model.filtering_rays(allrays, allrgbs)
                    sampler = _Sampler(allrgbs.shape[0], r["batch_size"])
                if new_aabb is not None:
                    masks.pop(0)
            if ups and p >= ups[0]:
                reso = n_to_reso(voxels.pop(0), model.aabb)
                n_samp = n_samples(reso)
                model.upsample_volume_grid(reso)
                opt = optimizer(1.0 if r["lr_upsample_reset"] else
                                r["lr_decay_target_ratio"] ** p)
                p_reset = p if r["lr_upsample_reset"] else 0.0
                ups.pop(0)
        dt = time.perf_counter() - t0
        elapsed += dt
        prog.after(it, elapsed, dt, f"reso {reso} samples {n_samp}",
                   lambda: test_psnr(model, data))
    final = prog.finish(test_psnr(model, data))
    return {"psnr": final, "curve": prog.curve, "train_curve": prog.train_curve,
            "iterations": it,
            "time_s": elapsed, "final_reso": [int(v) for v in model.gridSize],
            "aabb": model.aabb.tolist(), "n_samples": n_samp,
            "rays_kept": int(allrays.shape[0]), "alpha_mask_deferred": deferred,
            "recipe": r}
