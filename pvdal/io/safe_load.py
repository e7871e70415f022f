"""Foreign pickles, loaded safely: ``torch.load(weights_only=True)`` plus an allow-list of the
numpy types such files hold (TensoRF stores its alpha mask as a numpy ``packbits`` array).
Numpy archives (svox2's ``.npz``) load with ``allow_pickle=False``: plain arrays only.

Nothing else is allowed: a file whose pickle names any other global (a class, a function) would
need an unrestricted unpickler, which can run arbitrary code, so it is refused with the global's
name as the reason.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvdal.utils.errors import CheckpointError


def _numpy_globals() -> list:
    """The numpy globals an array or scalar pickle names, under numpy 2's and numpy 1's module
    paths (``numpy._core`` / ``numpy.core``): what a file written by either loads with."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    allowed: list = [np.ndarray, np.dtype]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        allowed.append(fn)
        allowed.append((fn, f"numpy.core.multiarray.{fn.__name__}"))
    for t in (np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16,
              np.float32, np.float64):
        allowed.append(type(np.dtype(t)))  # numpy.dtypes.UInt8DType, ... (numpy >= 1.25)
    return allowed


NUMPY_ALLOW_LIST = _numpy_globals()
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL (\S+)")


def safe_torch_load(path: str | Path, what: str) -> Any:
    """``torch.load`` of a foreign file with ``weights_only=True`` + ``NUMPY_ALLOW_LIST``.
    A file that needs any other global is refused with that global's name."""
    try:
        with torch.serialization.safe_globals(NUMPY_ALLOW_LIST):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSUPPORTED.search(str(e))
        name = found.group(1) if found else str(e).splitlines()[-1][:200]
        raise CheckpointError(str(path), f"{what} needs {name}, which pvdal does not load "
                              "(foreign files load with torch.load(weights_only=True) and an "
                              "allow-list of numpy array types; anything else could run code)",
                              "re-save the file holding only tensors, numbers, strings, lists, "
                              "dicts and numpy arrays") from e
    except Exception as e:  # truncated archive, bad records, ...
        raise CheckpointError(str(path), f"cannot be read as a {what} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                              "the file is truncated or damaged; copy it again") from e


def safe_npz_load(path: str | Path, what: str) -> dict[str, np.ndarray]:
    """Every array of a numpy ``.npz`` archive, loaded with ``allow_pickle=False`` (an object
    array, which would need the pickle, is refused with its name)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for name in z.files:
                try:
                    out[name] = z[name]
                except ValueError as e:
                    if "allow_pickle" not in str(e):
                        raise
                    raise CheckpointError(str(path), f"{what} holds an object array {name!r}, "
                                          "which needs a pickle; pvdal does not load it (it "
                                          "could run code)", "re-save it holding plain numeric "
                                          "arrays only") from e
            return out
    except CheckpointError:
        raise
    except Exception as e:  # truncated archive, bad CRC, bad .npy header, ...
        raise CheckpointError(str(path), f"cannot be read as a {what} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                              "the file is truncated or damaged; copy it again") from e
