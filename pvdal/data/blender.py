"""NeRF-Synthetic (Blender) format: ``transforms_{train,val,test}.json`` + RGBA images.

Poses are scaled by ``scale`` (default 1/1.5: the NeRF-Synthetic objects fit in [-1.5, 1.5]^3)
so the object lies in the unit box (``SceneData.world``: that scale, no rotation or shift).
Alpha is composited on ``background`` (white by default).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pvdal.data.frames import Frames, SceneData, WorldFrame
from pvdal.data.images import (
    check_root,
    existing_frames,
    load_image_alpha,
    native_size,
    read_json,
)
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import DataError

SPLITS = ("train", "val", "test")


def _resolve(root: Path, file_path: str) -> Path:
    p = root / file_path
    return p if p.suffix else p.with_suffix(".png")


def load_split(root: Path, split: str, downscale: int, scale: float,
               background: tuple[float, float, float]) -> Frames:
    tf_path = root / f"transforms_{split}.json"
    meta = read_json(tf_path, f"a Blender scene has transforms_{split}.json in data.root")
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list):
        raise DataError(str(tf_path), "has no 'frames' list", "is this a Blender-format scene?")
    if not frames:
        raise DataError(str(tf_path), f"lists no frames: split '{split}' would be empty",
                        "every split (train, val, test) needs at least one frame")
    if "camera_angle_x" not in meta:
        raise DataError(str(tf_path), "lacks 'camera_angle_x'", "Blender format needs it")
    try:
        paths = [_resolve(root, f["file_path"]) for f in frames]
        poses = [f["transform_matrix"] for f in frames]
    except (KeyError, TypeError) as e:
        raise DataError(str(tf_path), f"a frame lacks {e}", "each frame needs file_path and "
                        "transform_matrix") from e
    keep = existing_frames(paths, split, str(tf_path))
    paths = [paths[i] for i in keep]
    c2w = torch.tensor([poses[i] for i in keep], dtype=torch.float32)
    if c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise DataError(str(tf_path), f"transform_matrix has shape {tuple(c2w.shape[1:])}",
                        "expected 4x4 camera-to-world matrices")
    c2w = c2w[:, :3, :4].clone()
    c2w[:, :, 3] *= scale
    h0, w0 = native_size(paths[0])
    h, w = h0 // downscale, w0 // downscale
    images, alphas = [], []
    for p in paths:
        if native_size(p) != (h0, w0):
            hp, wp = native_size(p)
            raise DataError(str(p), f"image is {wp}x{hp}, the others are {w0}x{h0}",
                            "all images of a Blender scene must share one size")
        img, alpha = load_image_alpha(p, (h, w), background)
        images.append(img)
        alphas.append(alpha)
    focal = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
    n = len(paths)
    intr = torch.tensor([focal, focal, w / 2.0, h / 2.0]).expand(n, 4).clone()
    hw = torch.tensor([h, w]).expand(n, 2).clone()
    fr = Frames(c2w, intr, hw, images, None, [str(p.name) for p in paths],
                alphas if all(a is not None for a in alphas) else None)
    fr.validate(split, str(tf_path))
    return fr


def load_blender(root: str | Path, downscale: int = 1, scale: float = 1 / 1.5,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> SceneData:
    if downscale < 1:
        raise DataError("data.downscale", f"must be >= 1, got {downscale}", "use 1, 2, 4, ...")
    r = check_root(root)
    splits = {s: load_split(r, s, downscale, scale, background) for s in SPLITS}
    radii = splits["train"].c2w[:, :, 3].norm(dim=-1)
    return SceneData(splits["train"], splits["val"], splits["test"],
                     SceneSpec(contraction=False, near=0.05), tuple(background), None, str(r),
                     {"radius": [float(radii.min()), float(radii.max())]},
                     WorldFrame(scale=float(scale), source="blender"))
