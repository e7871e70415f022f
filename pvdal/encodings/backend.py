"""Choose each kernel's implementation by where its tensors are: pure torch (the reference, and
every CPU tensor) or tiny-cuda-nn / nerfacc on CUDA tensors once a probe shows they work.

Never a crash for a missing accelerator: ``import nerfacc`` succeeds without its compiled kernels
(they are built on first use and are ``None`` without ``nvcc``), so nerfacc is used only after a
one-time probe loads the extension; every fallback is said once, with its reason.
"""

from __future__ import annotations

import importlib
import logging
import time

import torch

log = logging.getLogger("pvdal")
_announced: set[str] = set()
_probes: dict[str, tuple[bool, str]] = {}
nerfacc_probe_seconds: float | None = None  # how long the first nerfacc probe took (its build)

IMPLEMENTATIONS = ("auto", "torch", "tcnn")


def announce(part: str, backend: str, reason: str = "") -> None:
    """Log once per part and backend which backend runs it (and why, for a fallback)."""
    key = f"{part}:{backend}"
    if key not in _announced:
        _announced.add(key)
        log.info("backend: %s uses %s%s", part, backend, f" ({reason})" if reason else "")


def tcnn_probe() -> tuple[bool, str]:
    """Whether tiny-cuda-nn imports (cached): (ok, reason)."""
    if "tcnn" not in _probes:
        try:
            importlib.import_module("tinycudann")
            _probes["tcnn"] = (True, "tinycudann imports")
        except Exception as e:
            _probes["tcnn"] = (False, f"tinycudann does not import: {type(e).__name__}: {e}")
    return _probes["tcnn"]


def nerfacc_probe() -> tuple[bool, str]:
    """Whether nerfacc's compiled CUDA kernels load (cached; the first call may build them, which
    takes minutes with ``nvcc``): (ok, reason). Only asked for CUDA tensors."""
    global nerfacc_probe_seconds
    if "nerfacc" not in _probes:
        t0 = time.perf_counter()
        try:
            from nerfacc.cuda import _backend

            ok = getattr(_backend, "_C", None) is not None
            reason = ("compiled kernels load" if ok else "nerfacc's CUDA extension is not "
                      "built and cannot be (no nvcc / CUDA toolkit)")
        except Exception as e:  # OSError CUDA_HOME, build errors, ...
            ok, reason = False, f"nerfacc's CUDA extension fails to load: {type(e).__name__}: {e}"
        _probes["nerfacc"] = (ok, reason)
        nerfacc_probe_seconds = time.perf_counter() - t0
    return _probes["nerfacc"]


def hash_grid_backend(requested: str, device: torch.device) -> str:
    """The hash grid's backend on ``device``: tcnn only for CUDA tensors, else torch.

    ``auto`` falls back to torch (one log line saying why); an explicit ``tcnn`` on a CUDA
    device without tiny-cuda-nn is an error with a hint, on a CPU device it runs torch (the same
    parameters give the same field)."""
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be auto|torch|tcnn, got {requested!r}")
    part = "hash grid"
    if requested == "torch":
        announce(part, "torch")
        return "torch"
    if device.type != "cuda":
        announce(part, "torch", f"tensors on {device.type}; tcnn needs CUDA")
        return "torch"
    ok, reason = tcnn_probe()
    if ok:
        announce(part, "tcnn")
        return "tcnn"
    if requested == "tcnn":
        raise ImportError(
            f"implementation=tcnn for the hash grid but {reason}; install tiny-cuda-nn (see "
            "README, 'GPU') or set implementation=auto|torch")
    announce(part, "torch", reason)
    return "torch"


def use_nerfacc(t: torch.Tensor) -> bool:
    """nerfacc's kernels for ``t``: only CUDA tensors, only when the extension loads."""
    if not t.is_cuda:
        announce("volume rendering", "torch")
        return False
    ok, reason = nerfacc_probe()
    announce("volume rendering", "nerfacc" if ok else "torch", "" if ok else reason)
    return ok
