"""Image loading shared by the parsers: read, composite alpha, downscale, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pvdal.utils.errors import DataError

log = logging.getLogger("pvdal")


def read_json(path: Path, hint: str = "") -> dict:
    if not path.is_file():
        raise DataError(str(path), "file not found", hint or "check data.root")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"not valid JSON ({e})", "re-export the transforms file") from e


def check_root(root: str | Path | None, key: str = "data.root") -> Path:
    if root is None or str(root) in ("", "None"):
        raise DataError(key, "no data directory given", f"pass {key}=PATH")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise DataError(str(p), "data directory does not exist", f"check {key}")
    if not any(p.iterdir()):
        raise DataError(str(p), "data directory is empty", f"check {key}")
    return p


def resize(img: Tensor, h: int, w: int) -> Tensor:
    """[H, W, C] -> [h, w, C], area-averaged."""
    if img.shape[:2] == (h, w):
        return img
    x = img.permute(2, 0, 1)[None]
    return F.interpolate(x, size=(h, w), mode="area")[0].permute(1, 2, 0).contiguous()


def load_image(
    path: Path, size: tuple[int, int] | None, background: tuple[float, float, float] | None
) -> Tensor:
    """Read an image -> float [H, W, 3] in [0, 1]; alpha composited onto ``background``.

    ``size`` = (h, w) resizes (downscale); the caller checks native sizes.
    """
    return load_image_alpha(path, size, background)[0]


def load_image_alpha(
    path: Path, size: tuple[int, int] | None, background: tuple[float, float, float] | None
) -> tuple[Tensor, Tensor | None]:
    """Like ``load_image``, plus the alpha [H, W] (None for images without one), so training can
    re-composite onto random backgrounds."""
    try:
        arr = np.asarray(iio.imread(path))
    except Exception as e:  # imageio raises many types for bad files
        raise DataError(str(path), f"cannot read image ({type(e).__name__}: {e})",
                        "the file is corrupt or not an image") from e
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else 1.0
    img = torch.from_numpy(arr.astype(np.float32) / scale)
    alpha = None
    if img.shape[-1] == 4:  # composite before resizing: no colour fringes at object edges
        rgb, alpha = img[..., :3], img[..., 3:]
        bg = torch.tensor(background if background is not None else (1.0, 1.0, 1.0))
        img = rgb * alpha + bg * (1.0 - alpha)
    img = img[..., :3]
    if size is not None:
        img = resize(img, *size)
        alpha = None if alpha is None else resize(alpha, *size)
    return img.clamp(0.0, 1.0), None if alpha is None else alpha[..., 0].clamp(0.0, 1.0)


def native_size(path: Path) -> tuple[int, int]:
    """(h, w) of an image file without decoding more than needed."""
    try:
        props = iio.improps(path)
    except Exception as e:
        raise DataError(str(path), f"cannot read image ({type(e).__name__}: {e})",
                        "the file is corrupt or not an image") from e
    return int(props.shape[0]), int(props.shape[1])


def existing_frames(paths: list[Path], split: str, source: str) -> list[int]:
    """Indices of frames whose image exists; one warning counts the missing ones.

    Raises when none remain, as an empty split cannot train or evaluate.
    """
    keep = [i for i, p in enumerate(paths) if p.is_file()]
    missing = len(paths) - len(keep)
    if missing and keep:
        example = next(p for p in paths if not p.is_file())
        log.warning("%s: %d of %d %s images are missing (e.g. %s); skipping those frames",
                    source, missing, len(paths), split, example)
    if not keep:
        raise DataError(source, f"no image of split '{split}' exists "
                        f"({len(paths)} listed, e.g. {paths[0] if paths else '-'})",
                        "check file_path entries and data.root")
    return keep
