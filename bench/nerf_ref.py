"""The original NeRF's own code (yenchenlin/nerf-pytorch@63a5a63, a faithful PyTorch port of
bmild/nerf) trained by NeRF's Blender recipe on a pvdal scene, for a wall-clock budget. The
NeRF counterpart of ``bench/tensorf_ref.py``.

nerf-pytorch is not part of pvdal: pass a folder holding its sources
(``git --git-dir=<nerf-pytorch git dir> archive HEAD | tar -x -C DIR``). ``run_nerf_helpers.py``
(``NeRF``, ``get_embedder``, ``sample_pdf``; torch + numpy) and ``run_nerf.py`` are imported
unmodified from there. ``run_nerf.py`` imports imageio, tqdm, matplotlib and the dataset loaders
(cv2) at its top: those of them not installed are stand-in modules in ``sys.modules`` while it
is imported (``import_run_nerf``; a stand-in raises if called, and none is on the path used
here). Used from ``run_nerf.py``: ``create_nerf`` (run_nerf.py:178-259: coarse + fine ``NeRF``
with skips [4], embedders, ``run_network``, Adam (0.9, 0.999), the render kwargs; its module
``device`` is set to the CPU first), ``render`` -> ``batchify_rays`` -> ``render_rays`` ->
``raw2outputs`` + ``sample_pdf`` (run_nerf.py:69-134, 54-66, 308-418, 262-305). Only the
training step of ``train()`` is re-written below, following run_nerf.py:728-785 line by line:
one random training image a step (``no_batching``), ``N_rand`` of its pixels drawn without
replacement (central crops while ``precrop``), loss = coarse + fine MSE, Adam step, learning
rate ``lrate * 0.1 ** (step / (lrate_decay * 1000))``.

The recipe (``configs/lego.txt`` + ``config_parser`` defaults): use_viewdirs, multires 10 /
multires_views 4, white_bkgd, lrate 5e-4 with lrate_decay 500 over ``N_iters`` = 200000
iterations (so 0.1 ** 0.4 of lrate at the end), perturb 1, raw_noise_std 0, N_rand 1024,
precrop 500 iterations at 0.5, near/far 2-6, no NDC. Sized for a CPU like pvdal's
``arch=mlp`` (conf/arch/mlp.yaml: 6 x 128, the paper 8 x 256): both networks 6 x 128 and
32 coarse + 64 fine samples a ray (lego.txt: 8 x 256, 64 + 128: 262144 network points a
step, ~16 s a step on one CPU thread), and 256 rays a step (lego.txt 1024) for 4x the steps in
a short budget (see ``RECIPE``; ``PAPER`` has the paper's sizes for ``recipe_overrides``).

Scaling to the budget: the run is paced by time, like ``bench/tensorf_ref.py``. The learning
rate at progress ``p = elapsed / budget`` is the recipe's at iteration ``p * N_iters``
(``lrate * 0.1 ** (p * N_iters / (lrate_decay * 1000))``) and the central crops last while
``p < precrop_iters / N_iters`` (0.25 %: a step or two of a CPU run); training stops at the
budget (the iteration ending nearest it). Test renders are timed out.

Rays are NeRF's Blender rays: pvdal's pixel-centre rays (``scene_rays`` of
``bench/tensorf_ref.py``: origins taken back to the Blender world, x ``1 / data.world.scale``)
with each direction rescaled to camera depth 1 (``get_rays``' ``(x, -y, -1)`` directions, so
near/far 2-6 are depths; ``render`` normalises view directions itself). nerf-pytorch's
``get_rays`` goes through pixel corners; pvdal's ground truth is rendered at pixel centres, so
both sides use the centres.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bench.common import RefProgress
from bench.tensorf_ref import scene_rays

N_ITERS = 200000  # run_nerf.py:701 (N_iters = 200000 + 1, the loop starts at 1)
RECIPE = {  # configs/lego.txt, then run_nerf.py config_parser defaults
    "netdepth": 6, "netwidth": 128,  # CPU: pvdal arch=mlp's 6 x 128 (recipe 8 x 256, ~5x the
    "netdepth_fine": 6, "netwidth_fine": 128,  # flops a point: a few steps a minute on 1 core)
    "N_samples": 32, "N_importance": 64,  # CPU: half lego.txt's 64 + 128 (96 fine-net points
    # a ray at 2-6, the box +-1.5 still sampled every 0.125 by the coarse net)
    "N_rand": 256,  # CPU: a quarter of lego.txt's 1024, 4x the steps (120 s, 64x64, 1 busy
    # thread: 1024 did 31 steps to 8.6 dB test PSNR, 256 118 steps to 10.0 dB)
    "lrate": 5e-4,  # the recipe's (pvdal arch=mlp's 2e-3: 10.9 dB in that 120 s, 67 steps)
    "lrate_decay": 500, "decay_rate": 0.1,
    "N_iters": N_ITERS, "precrop_iters": 500, "precrop_frac": 0.5, "use_viewdirs": True,
    "white_bkgd": True, "multires": 10, "multires_views": 4, "i_embed": 0, "perturb": 1.0,
    "raw_noise_std": 0.0, "lindisp": False, "no_batching": True, "near": 2.0, "far": 6.0,
    "netchunk": 1024 * 64,
    "chunk": 4096,  # rays a render call at test time (run_nerf's 32768 embeds ~1 GB at once;
    # results are the same)
    "seed": 0,  # run_nerf.py:23 np.random.seed(0)
}
PAPER = {  # configs/lego.txt + defaults: the GPU sizes
    "netdepth": 8, "netwidth": 256, "netdepth_fine": 8, "netwidth_fine": 256,
    "N_samples": 64, "N_importance": 128, "N_rand": 1024}
_OPTIONAL = {"imageio": (), "tqdm": (), "matplotlib": ("pyplot",), "cv2": (),
             "configargparse": ()}  # third-party imports of run_nerf.py and its loaders


def _stub(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    def missing(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def call(*_a, **_k):
            raise RuntimeError(f"{name}.{attr}: {name} is not installed (bench/nerf_ref.py "
                               "stands in for it only to import run_nerf.py)")
        return call

    mod.__getattr__ = missing
    return mod


def import_run_nerf(src: str | Path) -> types.ModuleType:
    """nerf-pytorch's ``run_nerf`` module from ``src``, unmodified; stand-ins for the packages of
    ``_OPTIONAL`` not installed here are in ``sys.modules`` only during the import."""
    src = str(Path(src).resolve())
    if src not in sys.path:
        sys.path.insert(0, src)
    added = []
    for name, subs in _OPTIONAL.items():
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        sys.modules[name] = _stub(name)
        added.append(name)
        for sub in subs:
            sys.modules[f"{name}.{sub}"] = _stub(f"{name}.{sub}")
            setattr(sys.modules[name], sub, sys.modules[f"{name}.{sub}"])
            added.append(f"{name}.{sub}")
    try:
        import run_nerf  # noqa: PLC0415 - nerf-pytorch's own code, from src
    finally:
        for name in added:
            sys.modules.pop(name, None)
    run_nerf.device = torch.device("cpu")  # its models go here (it picks cuda when present)
    return run_nerf


def nerf_rays(data, split: str) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
    """Per image of ``split``: rays [H*W, 6] (Blender-world origin, direction at camera depth 1),
    colours [H*W, 3] and (H, W)."""
    rays, rgbs, hw = scene_rays(data, split)
    frames, out_rays, out_rgbs, at = data.split(split), [], [], 0
    for i, (h, w) in enumerate(hw):
        r = rays[at:at + h * w]
        depth = r[:, 3:] @ -frames.c2w[i][:3, 2].float()  # unit direction . camera forward
        out_rays.append(torch.cat([r[:, :3], r[:, 3:] / depth[:, None]], -1))
        out_rgbs.append(rgbs[at:at + h * w])
        at += h * w
    return out_rays, out_rgbs, hw


@torch.no_grad()
def test_psnr(run_nerf, kwargs: dict, data, chunk: int) -> float:
    """Mean over the test views of pvdal's PSNR of ``render``'s fine rgb (clamped to [0, 1],
    like tensorf_ref; ``render_kwargs_test``: no perturbation, no noise)."""
    from pvdal.metrics import psnr

    vals = []
    for r, rgb, (h, w) in zip(*nerf_rays(data, "test")):
        out = run_nerf.render(h, w, None, chunk=chunk, rays=(r[:, :3], r[:, 3:]), **kwargs)[0]
        vals.append(float(psnr(out.clamp(0, 1), rgb)))
    return sum(vals) / len(vals)


def _crop(h: int, w: int, frac: float) -> torch.Tensor:
    """run_nerf.py:739-745: flat pixel indices of the central crop."""
    dh, dw = int(h // 2 * frac), int(w // 2 * frac)
    rows = torch.arange(h // 2 - dh, h // 2 + dh)
    cols = torch.arange(w // 2 - dw, w // 2 + dw)
    return (rows[:, None] * w + cols[None, :]).reshape(-1)


def train_nerf(src: str | Path, data, budget: float, points: int = 5,
               recipe_overrides: dict | None = None, log_every: int = 25,
               quiet: bool = True) -> dict:
    """Train nerf-pytorch's coarse + fine NeRF for ``budget`` seconds; returns psnr (test),
    curve (test PSNR at ``points`` evenly spaced training times, renders excluded),
    train_curve (batch PSNR of the fine output), iterations, time_s, and the recipe
    (``recipe_overrides``: entries of ``RECIPE`` to change, e.g. ``PAPER``'s sizes)."""
    run_nerf = import_run_nerf(src)
    r = {**RECIPE, **(recipe_overrides or {})}
    torch.manual_seed(r["seed"])
    np.random.seed(r["seed"])
    hush = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    args = SimpleNamespace(**{k: r[k] for k in (
        "netdepth", "netwidth", "netdepth_fine", "netwidth_fine", "N_samples", "N_importance",
        "use_viewdirs", "white_bkgd", "multires", "multires_views", "i_embed", "perturb",
        "raw_noise_std", "lindisp", "netchunk", "lrate")},
        ft_path=None, no_reload=True, expname="nerf_ref", dataset_type="blender", no_ndc=False)
    with tempfile.TemporaryDirectory(prefix="nerf-ref-") as tmp, hush:
        args.basedir = tmp
        os.makedirs(os.path.join(tmp, args.expname))
        kw_train, kw_test, _, _, optimizer = run_nerf.create_nerf(args)
    for kw in (kw_train, kw_test):
        kw.update(near=r["near"], far=r["far"])  # run_nerf.py:574-575, 643-648
    img2mse, mse2psnr = run_nerf.img2mse, run_nerf.mse2psnr

    elapsed, t0 = 0.0, time.perf_counter()
    rays, rgbs, hw = nerf_rays(data, "train")
    i_train = np.arange(len(rays))
    crops = [_crop(h, w, r["precrop_frac"]) for h, w in hw]
    precrop_p = r["precrop_iters"] / r["N_iters"]
    decay_per_p = r["N_iters"] / (r["lrate_decay"] * 1000)
    it = 0
    prog = RefProgress("nerf-ref", budget, points, log_every)
    elapsed += time.perf_counter() - t0
    dt = 0.0
    while elapsed + 0.5 * dt < budget:  # the last iteration ends nearest the budget
        t0 = time.perf_counter()
        p = elapsed / budget
        for g in optimizer.param_groups:  # run_nerf.py:779-784, as a function of time
            g["lr"] = r["lrate"] * r["decay_rate"] ** (p * decay_per_p)
        img_i = np.random.choice(i_train)  # run_nerf.py:728-757 (no_batching)
        h, w = hw[img_i]
        coords = crops[img_i] if p < precrop_p else torch.arange(h * w)
        n_rand = min(r["N_rand"], coords.shape[0])  # a tiny smoke image has fewer pixels
        select = coords[np.random.choice(coords.shape[0], size=[n_rand], replace=False)]
        batch, target_s = rays[img_i][select], rgbs[img_i][select]
        rgb, _, _, extras = run_nerf.render(h, w, None, chunk=r["chunk"],  # :760-762
                                            rays=(batch[:, :3], batch[:, 3:]),
                                            retraw=True, **kw_train)
        optimizer.zero_grad()  # run_nerf.py:764-776
        img_loss = img2mse(rgb, target_s)
        loss = img_loss
        if "rgb0" in extras:
            loss = loss + img2mse(extras["rgb0"], target_s)
        loss.backward()
        optimizer.step()
        it += 1
        prog.window.append(float(mse2psnr(img_loss.detach())))
        dt = time.perf_counter() - t0
        elapsed += dt
        prog.after(it, elapsed, dt, f"lr {optimizer.param_groups[0]['lr']:.2e}",
                   lambda: test_psnr(run_nerf, kw_test, data, r["chunk"]))
    final = prog.finish(test_psnr(run_nerf, kw_test, data, r["chunk"]))
    return {"psnr": final, "curve": prog.curve, "train_curve": prog.train_curve,
            "iterations": it,
            "time_s": elapsed, "final_lr": optimizer.param_groups[0]["lr"],
            "samples_per_ray": r["N_samples"] + (r["N_samples"] + r["N_importance"]
                                                 if r["N_importance"] > 0 else 0),
            "precrop_until_s": round(precrop_p * budget, 3),
            "recipe": {**r, "lr_decay_exponent_at_end": round(decay_per_p, 4)},
            "source": "yenchenlin/nerf-pytorch@63a5a63"}


if __name__ == "__main__":  # smoke: python -m bench.nerf_ref SRC BUDGET [pvdal overrides...]
    from bench.reference import load_scene

    torch.set_num_threads(1)
    res = train_nerf(sys.argv[1], load_scene(sys.argv[3:]), float(sys.argv[2]), points=4,
                     log_every=10)
    print({k: res[k] for k in ("psnr", "time_s", "iterations", "curve")}, flush=True)
