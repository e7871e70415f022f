"""LLFF forward-facing captures: ``poses_bounds.npy`` + ``images/`` (or ``images_{downscale}``).

Standard NeRF preprocessing: LLFF's [down, right, back] camera axes become OpenGL's [right, up,
back], poses are scaled so the nearest bound is 1 / ``BD_FACTOR`` and recentred (average pose =
identity, cameras look down -z). ``ndc=True`` maps rays into NDC, where the frustum from the near
plane to infinity is the unit box; ``ndc=False`` keeps world rays, scaled so the nearest bound is
1 (cameras to nearest content = the unit box), and contracts the rest of the scene.
``SceneData.world`` records the scale and recentring (on OpenGL-axis poses of the file's world).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pvdal.data.frames import Frames, NDCSpec, SceneData, WorldFrame
from pvdal.data.images import check_root, load_image, native_size
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import DataError

BD_FACTOR = 0.75  # NeRF's margin between the NDC near plane and the nearest scene content
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """NeRF's ``poses_avg``: mean centre, summed viewing (+z) and up axes -> [3, 4]."""
    z = _normalize(c2w[:, :, 2].sum(0))
    x = _normalize(np.cross(c2w[:, :, 1].sum(0), z))
    y = np.cross(z, x)
    return np.stack([x, y, z, c2w[:, :, 3].mean(0)], 1)


def recenter(c2w: np.ndarray) -> np.ndarray:
    """Express all poses [N, 3, 4] in the frame of their average pose (average -> identity)."""
    avg = np.eye(4)
    avg[:3] = average_pose(c2w)
    homo = np.concatenate([c2w, np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(c2w), 1, 4))], 1)
    return (np.linalg.inv(avg) @ homo)[:, :3]


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


def _image_dir(root: Path, n: int, downscale: int) -> tuple[list[Path], bool]:
    """Image files and whether they are already downscaled (LLFF ships ``images_4`` etc.)."""
    pre = root / f"images_{downscale}"
    if downscale > 1 and pre.is_dir():
        files = _list_images(pre)
        if len(files) == n:
            return files, True
    folder = root / "images"
    if not folder.is_dir() and downscale > 1 and pre.is_dir():
        folder = pre  # only the pre-scaled folder exists: report its count below
    if not folder.is_dir():
        raise DataError(str(folder), "image folder not found",
                        "an LLFF scene has images/ next to poses_bounds.npy")
    files = _list_images(folder)
    if len(files) != n:
        raise DataError(str(folder), f"holds {len(files)} images but poses_bounds.npy has {n} "
                        "poses", "keep exactly the images that were posed (sorted by name)")
    return files, False


def _read_poses(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """poses_bounds.npy -> OpenGL c2w [N, 3, 4], (H, W, focal) [3], bounds [N, 2], float64."""
    if not path.is_file():
        raise DataError(str(path), "file not found", "an LLFF scene has poses_bounds.npy in "
                        "data.root (run LLFF's imgs2poses.py)")
    try:
        arr = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    except (ValueError, OSError, TypeError, EOFError) as e:
        raise DataError(str(path), f"cannot read ({type(e).__name__}: {e})",
                        "regenerate it with LLFF's imgs2poses.py") from e
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        raise DataError(str(path), f"has shape {arr.shape}, expected [N, 17]",
                        "rows are a flattened 3x5 pose (c2w | H W focal) then near, far")
    if not np.isfinite(arr).all():
        bad = int(np.nonzero(~np.isfinite(arr).all(1))[0][0])
        raise DataError(str(path), f"row {bad} contains NaN/inf", "fix or remove that camera")
    raw = arr[:, :15].reshape(-1, 3, 5)
    bounds = arr[:, 15:]
    if (bounds <= 0).any() or (bounds[:, 1] < bounds[:, 0]).any():
        raise DataError(str(path), "near/far bounds must be positive with near <= far",
                        "regenerate it with LLFF's imgs2poses.py")
    hwf = raw[0, :, 4]
    if (hwf <= 0).any():
        raise DataError(str(path), f"H, W, focal = {hwf.tolist()} must be positive", "")
    c2w = np.concatenate([raw[:, :, 1:2], -raw[:, :, 0:1], raw[:, :, 2:4]], 2)
    return c2w, hwf, bounds


def load_llff(root: str | Path, downscale: int = 4, holdout: int = 8,
              ndc: bool = True) -> SceneData:
    """Load an LLFF scene; see the module docstring for the normalisation."""
    if downscale < 1:
        raise DataError("data.downscale", f"must be >= 1, got {downscale}", "use 1, 2, 4, 8")
    if holdout < 2:
        raise DataError("data.holdout", f"must be >= 2, got {holdout}", "8 holds out every 8th")
    r = check_root(root)
    pb_path = r / "poses_bounds.npy"
    src = str(pb_path)
    c2w, (H, W, focal), bounds = _read_poses(pb_path)
    files, pre_scaled = _image_dir(r, len(c2w), downscale)

    h0, w0 = native_size(files[0])
    for p in files[1:]:
        if native_size(p) != (h0, w0):
            hp, wp = native_size(p)
            raise DataError(str(p), f"image is {wp}x{hp}, the others are {w0}x{h0}",
                            "all images of an LLFF scene share one size")
    h, w = (h0, w0) if pre_scaled else (h0 // downscale, w0 // downscale)
    if h < 1 or w < 1:
        raise DataError(str(files[0]), f"image is too small for downscale {downscale}",
                        "lower data.downscale")
    if abs(h - H * w / W) > 1.0 + 0.01 * h:
        raise DataError(str(files[0]), f"image aspect {w0}x{h0} does not match the "
                        f"{int(W)}x{int(H)} in poses_bounds.npy", "are these the posed images?")
    images = [load_image(p, None if pre_scaled else (h, w), None) for p in files]

    # Scale so the nearest bound is 1/BD_FACTOR (NDC, NeRF's choice) or 1 (contraction).
    scale = 1.0 / (bounds.min() * (BD_FACTOR if ndc else 1.0))
    c2w[:, :, 3] *= scale
    bounds = bounds * scale
    avg = average_pose(c2w)  # recentring: x' = avg_R^T (scale x - avg_c)
    c2w = recenter(c2w)
    world = WorldFrame(scale=float(scale), rotation=avg[:, :3].T.tolist(),
                       translation=(-avg[:, :3].T @ avg[:, 3] / scale).tolist(),
                       contraction=not ndc, ndc=ndc, source="llff")

    n = len(c2w)
    fx, fy = focal * w / W, focal * h / H
    intr = torch.tensor([fx, fy, w / 2.0, h / 2.0], dtype=torch.float32).expand(n, 4).clone()
    hw = torch.tensor([h, w]).expand(n, 2).clone()
    full = Frames(torch.from_numpy(c2w).float(), intr, hw, images, None, [p.name for p in files])
    train = full.subset([i for i in range(n) if i % holdout != 0])
    test = full.subset([i for i in range(n) if i % holdout == 0])
    train.validate("train", src)
    test.validate("test", src)

    if ndc:
        spec = SceneSpec(contraction=False, near=0.0, far=2.0 * math.sqrt(3.0))  # cube diagonal
        ndc_spec = NDCSpec(float(fx), int(w), int(h), near=1.0)
    else:
        # bounds are depths along the axis; the corner ray is longer by this factor
        corner = math.sqrt(1.0 + (w / (2 * fx)) ** 2 + (h / (2 * fy)) ** 2)
        spec = SceneSpec(contraction=True, near=BD_FACTOR * float(bounds.min()),
                         far=float(bounds.max()) * corner / BD_FACTOR)
        ndc_spec = None
    mean_dir = _normalize(-c2w[:, :, 2].sum(0))
    meta = {"forward_facing": True, "centers": c2w[:, :, 3].tolist(),
            "mean_dir": mean_dir.tolist(),
            "bounds": [float(bounds.min()), float(bounds.max())]}
    return SceneData(train, test.subset(list(range(len(test)))), test, spec, (1.0, 1.0, 1.0),
                     ndc_spec, str(r), meta, world)
