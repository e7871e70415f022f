"""Choose the kernel implementation: pure torch (reference, default on CPU) or tcnn / nerfacc."""

from __future__ import annotations

import importlib
import logging

import torch

log = logging.getLogger("pvdal")
_announced: set[str] = set()


def module_available(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # ImportError, or a CUDA extension failing to load
        return False
    return True


def announce(part: str, backend: str) -> None:
    """Log once per part which backend runs it."""
    key = f"{part}:{backend}"
    if key not in _announced:
        _announced.add(key)
        log.info("backend: %s uses %s", part, backend)


def resolve_implementation(implementation: str, part: str, package: str = "tinycudann") -> str:
    """``auto`` -> the CUDA package when CUDA is available and it imports, else ``torch``."""
    if implementation not in ("auto", "torch", "tcnn"):
        raise ValueError(f"implementation must be auto|torch|tcnn, got {implementation!r}")
    if implementation == "auto":
        ok = torch.cuda.is_available() and module_available(package)
        implementation = "tcnn" if ok else "torch"
    elif implementation == "tcnn" and not module_available(package):
        raise ImportError(
            f"implementation=tcnn for {part} but '{package}' does not import; install tiny-cuda-nn "
            "(see README, 'CUDA extras') or set implementation=torch"
        )
    announce(part, implementation)
    return implementation
