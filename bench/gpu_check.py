"""One command that proves the GPU path on a GPU: ``python bench/gpu_check.py``.

Writes ``bench/results/gpu_check.json``:
- ``nerfacc``: compiled extension loads (yes/no, the reason, seconds to build or load it);
- ``tcnn``: tinycudann importable;
- ``hashgrid_parity``: torch vs tcnn hash grid, U(-1, 1) parameters, points over the whole cube
  and in the slab near the far faces: max |difference| of outputs and of parameter gradients;
- ``nerfacc_parity``: packed nerfacc weights vs the torch reference, and their gradients;
- ``checkpoint_round_trip``: an NGP field on the GPU backend saved and loaded into a CPU torch
  field (and back), max |difference| of the outputs;
- ``train``: ``train.py trainer=gpu`` on the default scene at ``--resolution`` for each backend
  (``torch``: torch hash grid + torch compositing; ``cuda``: tcnn + nerfacc where they load):
  s/step, samples per ray, peak memory, host syncs in one non-logging step
  (``torch.cuda.set_sync_debug_mode``).

Without CUDA it prints what it would run and exits 0; ``--cpu`` runs the torch-only parts on
the CPU at a small size (a smoke run of this script, no GPU figures).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT, compose_cfg, dump, provenance  # noqa: E402
from pvdal.encodings import backend  # noqa: E402
from pvdal.io.atomic import atomic_write_json  # noqa: E402

PARITY_GRID = dict(n_levels=16, n_features=2, log2_hashmap_size=19, base_resolution=16,
                   max_resolution=2048)  # Instant-NGP's paper sizes
ATOL = 1e-5


def parity_points(n: int, device) -> torch.Tensor:
    """x in [-1, 1]^3: half spread over the cube, half in the slab x, y or z > 0.98."""
    x = torch.rand(n, 3, device=device) * 2 - 1
    slab = x[n // 2:]
    axis = torch.randint(0, 3, (slab.shape[0],), device=device)
    slab[torch.arange(slab.shape[0], device=device), axis] = 1 - 0.02 * torch.rand(
        slab.shape[0], device=device)
    return x


def hashgrid_parity(device) -> dict:
    from pvdal.encodings.hashgrid import HashGridEncoding

    ok, reason = backend.tcnn_probe()
    if not ok or device.type != "cuda":
        return {"skipped": reason if not ok else "needs CUDA"}
    torch.manual_seed(0)
    ref = HashGridEncoding(**PARITY_GRID, implementation="torch").to(device)
    with torch.no_grad():
        ref.params.uniform_(-1, 1)
    fast = HashGridEncoding(**PARITY_GRID, implementation="tcnn")
    fast.load_state_dict(ref.state_dict())
    fast.to(device)
    x = parity_points(1 << 18, device)
    a, b = ref(x), fast(x)
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    fwd = (a - b).abs().max().item()
    grad = (ref.params.grad - fast.tcnn.params.grad.view_as(ref.params)).abs().max().item()
    return {"backend": fast.implementation, "points": x.shape[0], "forward_max_abs": fwd,
            "grad_max_abs": grad, "atol": ATOL, "pass": fwd <= ATOL and grad <= ATOL}


def nerfacc_parity(device) -> dict:
    from pvdal.render.march import march_rays
    from pvdal.render.scene import SceneSpec
    from pvdal.render.volrend import packed_render_weights, render_weights

    ok, reason = backend.nerfacc_probe()
    if not ok or device.type != "cuda":
        return {"skipped": reason if not ok else "needs CUDA"}
    torch.manual_seed(0)
    o = torch.tensor([[0.0, 0.0, 3.0]], device=device).repeat(4096, 1)
    d = torch.nn.functional.normalize(torch.randn(4096, 3, device=device) * 0.2
                                      + torch.tensor([0.0, 0.0, -1.0], device=device), dim=-1)
    s = march_rays(o, d, SceneSpec(), None, n_samples=256)
    sig = (torch.rand(s.positions.shape[0], device=device) * 20).requires_grad_()
    dense, _ = render_weights(s.scatter(sig), s.deltas)
    m = s.mask
    packed = packed_render_weights(sig, s.t_starts[m], s.t_ends[m], s.ray_indices, s.n_rays)
    w = torch.rand_like(dense)
    g_ref, = torch.autograd.grad((dense * w).sum(), sig)
    g_fast, = torch.autograd.grad((s.scatter(packed) * w).sum(), sig)
    fwd = (s.scatter(packed) - dense).abs().max().item()
    grad = ((g_fast - g_ref).abs() / (1 + g_ref.abs())).max().item()
    return {"samples": int(sig.shape[0]), "weights_max_abs": fwd, "grad_max_rel": grad,
            "atol": ATOL, "pass": fwd <= ATOL and grad <= 1e-4}


def checkpoint_round_trip(device) -> dict:
    """NGP field on ``device``'s backend -> state dict -> CPU torch field, and back."""
    from pvdal.fields.ngp import NGPField

    sizes = {k: v for k, v in PARITY_GRID.items() if k != "n_features"}
    torch.manual_seed(0)
    gpu = NGPField(**sizes, n_features_per_level=2).to(device)
    with torch.no_grad():
        gpu.encoding.table().uniform_(-1, 1)
    state = {k: v.detach().cpu() for k, v in gpu.state_dict().items()}
    cpu = NGPField(**sizes, n_features_per_level=2, implementation="torch")
    cpu.load_state_dict(state, strict=True)
    back = NGPField(**sizes, n_features_per_level=2).to(device)
    back.load_state_dict(cpu.state_dict(), strict=True)
    x = parity_points(1 << 14, device)
    d = torch.nn.functional.normalize(torch.randn_like(x), dim=-1)
    with torch.no_grad():
        a = gpu(x, d).rgb
        b = cpu(x.cpu(), d.cpu()).rgb.to(device)
        c = back(x, d).rgb
    diff = max((a - b).abs().max().item(), (a - c).abs().max().item())
    return {"backend": gpu.encoding.implementation, "keys": sorted(state)[:3],
            "max_abs": diff, "atol": ATOL, "pass": diff <= ATOL}


class StepProbe(pl.Callback):
    """s/step after ``warmup`` steps, samples per ray, peak memory, host syncs in one step."""

    def __init__(self, warmup: int, sync_step: int) -> None:
        self.warmup, self.sync_step = warmup, sync_step
        self.t0: float | None = None
        self.rows: dict = {"samples": 0, "rays": 0}
        self._warn = None

    def _sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.warmup:
            self._sync(module)
            self.t0 = time.perf_counter()
            if module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(module.device)
            field = module.field
            decode = type(field).decode

            def counting(feat, d, _f=field):
                self.rows["samples"] += feat.shape[0]
                return decode(_f, feat, d)

            field.decode = counting
        if step == self.sync_step:  # on CPU the mode is a no-op: 0 syncs, same code path
            self._warn = warnings.catch_warnings(record=True)
            self.rows["_log"] = self._warn.__enter__()
            warnings.simplefilter("always")
            if module.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step - 1 == self.sync_step and self._warn is not None:
            if module.device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
            caught = self.rows.pop("_log")
            self._warn.__exit__(None, None, None)
            self._warn = None
            self.rows["host_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
        if self.t0 is not None:
            self.rows["rays"] += int(trainer.datamodule.batch_size)

    def on_train_end(self, trainer, module) -> None:
        self._sync(module)
        steps = trainer.global_step - self.warmup
        dt = time.perf_counter() - (self.t0 or time.perf_counter())
        self.rows.update(steps_timed=steps, s_per_step=dt / max(steps, 1),
                         samples_per_ray=self.rows["samples"] / max(self.rows["rays"], 1))
        if module.device.type == "cuda":
            self.rows["peak_mem_mb"] = torch.cuda.max_memory_allocated(module.device) / 2**20
        module.field.__dict__.pop("decode", None)


def train_run(name: str, args, cpu: bool) -> dict:
    from pvdal.tasks import train

    impl = "torch" if name == "torch" else "auto"
    if name == "torch":  # torch compositing too: pretend nerfacc's kernels are not there
        backend._probes["nerfacc"] = (False, "disabled for the torch run")
    else:
        backend._probes.pop("nerfacc", None)
    steps = args.steps
    overrides = ["arch=ngp", f"trainer={'cpu' if cpu else 'gpu'}", f"trainer.max_steps={steps}",
                 "trainer.max_time=null", f"data.loader.resolution={args.resolution}",
                 f"data.loader.n_train={args.views}", "data.loader.n_test=2",
                 "data.loader.n_val=1", "data.val_images=1", "trainer.log_every_n_steps=1000",
                 f"data.steps_per_epoch={steps + 1}", f"arch.field.implementation={impl}",
                 "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
                 f"paths.data_dir={args.data_dir}"]
    out = Path(args.work) / f"train_{name}"
    cfg = compose_cfg("train", out, overrides)
    probe = StepProbe(warmup=min(10, steps // 3), sync_step=steps - 2)
    t0 = time.perf_counter()
    result = train.run(cfg, [probe])
    row = {k: v for k, v in probe.rows.items() if not k.startswith("_")}
    row.update(backend=name, test_psnr=result.get("psnr"), wall_s=time.perf_counter() - t0,
               overrides=overrides)
    return row


def plan(args) -> str:
    return "\n".join([
        "gpu_check would run, on the first CUDA device:",
        "  1. nerfacc: load (or JIT-build) the CUDA extension, timed; tcnn: import",
        f"  2. hash-grid parity torch vs tcnn at {PARITY_GRID}, U(-1, 1) parameters, 2^18 "
        f"points (half in the slab near the far faces), forward and gradients, atol {ATOL}",
        "  3. nerfacc vs torch weights and their gradients (4096 rays x 256 samples)",
        "  4. checkpoint round trip: GPU-backend NGP -> CPU torch field -> GPU, outputs equal",
        f"  5. train.py trainer=gpu arch=ngp at {args.resolution}x{args.resolution}, "
        f"{args.steps} steps, backends torch and cuda: s/step, samples/ray, peak memory, "
        "host syncs in one step",
        f"  -> {args.out}",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(RESULTS / "gpu_check.json"))
    p.add_argument("--resolution", type=int, default=400)
    p.add_argument("--views", type=int, default=20, help="training views of the scene")
    p.add_argument("--steps", type=int, default=60, help="training steps per backend")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds: the training runs are skipped once this is spent")
    p.add_argument("--cpu", action="store_true",
                   help="run the torch-only parts on the CPU (smoke run, small sizes)")
    p.add_argument("--data-dir", default=str(ROOT / "outputs" / "data"))
    p.add_argument("--work", default=str(ROOT / "bench" / "results" / "runs" / "gpu_check"))
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if not torch.cuda.is_available() and not args.cpu:
        print("no CUDA device: nothing measured.\n" + plan(args))
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu and args.out == str(RESULTS / "gpu_check.json"):
        args.out = str(Path(args.work) / "gpu_check_cpu.json")
    res: dict = {**provenance(), "settings": vars(args).copy(), "device": (
        torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu")}
    if device.type == "cuda":
        ok, reason = backend.nerfacc_probe()
        res["nerfacc"] = {"compiled": ok, "reason": reason,
                          "build_or_load_s": backend.nerfacc_probe_seconds}
    else:
        res["nerfacc"] = {"compiled": False, "reason": "--cpu run"}
    ok, reason = backend.tcnn_probe()
    res["tcnn"] = {"importable": ok, "reason": reason}
    for key, fn in (("hashgrid_parity", hashgrid_parity), ("nerfacc_parity", nerfacc_parity),
                    ("checkpoint_round_trip", checkpoint_round_trip)):
        try:
            res[key] = fn(device)
        except Exception as e:  # record, go on: the check must report every part
            res[key] = {"error": f"{type(e).__name__}: {e}", "pass": False}
        print(key, dump(res[key]), flush=True)
    res["train"] = []
    names = ["torch"] if device.type == "cpu" else ["torch", "cuda"]
    for name in names:
        if time.perf_counter() - t_start > args.budget:
            res["train"].append({"backend": name, "skipped": f"budget {args.budget} s spent"})
            continue
        try:
            res["train"].append(train_run(name, args, device.type == "cpu"))
        except Exception as e:
            res["train"].append({"backend": name, "error": f"{type(e).__name__}: {e}"})
        print("train", dump(res["train"][-1]), flush=True)
    res["wall_s"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, res)
    print(f"wrote {args.out} in {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
