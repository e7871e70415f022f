"""instant-ngp / nerfstudio ``transforms.json``: one file, per-frame intrinsics, holdout splits.

Camera keys (``fl_x fl_y cx cy w h k1 k2 p1 p2``, or ``camera_angle_x/_y``) may be global or per
frame (frame keys win), so frames may differ in size and orientation. Poses (camera-to-world,
OpenGL axes) are re-normalised whatever the exporter did: the point the optical axes converge on
becomes the origin and the cameras sit at mean distance ``CAMERA_RADIUS``, so the object of
interest lies in the unit box (``SceneData.world``: translation -focus, that scale, no
rotation). ``aabb_scale > 1`` (instant-ngp) marks an unbounded capture: the same unit box is kept
and everything outside it is contracted (``world.contraction``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from pvdal.data.frames import Frames, SceneData, WorldFrame
from pvdal.data.images import check_root, existing_frames, load_image, native_size, read_json
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import DataError

CAMERA_RADIUS = 2.5  # mean camera distance to the focus point; ~instant-ngp's 1.33 in a 0.5 box
UNBOUNDED_EXTENT = 16.0  # scene half-extent assumed when unbounded=True without aabb_scale
_FISHEYE = ("FISHEYE", "EQUIRECT")


def focus_point(c2w: Tensor, min_eig: float = 1e-3) -> Tensor:
    """Least-squares point closest to all optical axes (instant-ngp's focus point), [3].

    Falls back to the mean camera position when the axes are (nearly) parallel, i.e. when the
    system is ill-conditioned (forward-facing captures).
    """
    o = c2w[:, :, 3].double()
    d = -c2w[:, :, 2].double()
    d = d / d.norm(dim=-1, keepdim=True)
    proj = torch.eye(3, dtype=o.dtype) - d[:, :, None] * d[:, None, :]  # [N, 3, 3]
    a = proj.mean(0)
    b = (proj @ o[:, :, None]).mean(0)
    if torch.linalg.eigvalsh(a).min() < min_eig:
        return o.mean(0).float()
    p = torch.linalg.solve(a, b)[:, 0]
    return (p if torch.isfinite(p).all() else o.mean(0)).float()


def _num(src: dict, key: str, where: str) -> float | None:
    v = src.get(key)
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError) as e:
        raise DataError(where, f"'{key}' is not a number ({v!r})", "fix the transforms file") from e


def _get(frame: dict, meta: dict, key: str, where: str) -> float | None:
    v = _num(frame, key, where)
    return v if v is not None else _num(meta, key, where)


def _focal(frame: dict, meta: dict, fl_key: str, angle_key: str, size: float,
           where: str) -> float | None:
    """Focal from the most specific level (frame, then file) that gives ``fl`` or an angle."""
    for src in (frame, meta):
        fl = _num(src, fl_key, where)
        if fl is not None:
            return fl
        ang = _num(src, angle_key, where)
        if ang is not None:
            return 0.5 * size / math.tan(0.5 * ang)
    return None


def _camera(frame: dict, meta: dict, path: Path, downscale: int,
            where: str) -> tuple[list[float], list[int], list[float]]:
    """Intrinsics [4], (h, w) and distortion [4] of one frame at the size it is loaded at."""
    model = str(frame.get("camera_model", meta.get("camera_model", "OPENCV"))).upper()
    if any(k in model for k in _FISHEYE) or frame.get("is_fisheye", meta.get("is_fisheye")):
        raise DataError(where, f"camera model {model} / fisheye is not supported",
                        "undistort the images to a pinhole or OPENCV camera first")
    for k in ("k3", "k4"):
        if _get(frame, meta, k, where):
            raise DataError(where, f"{path.name}: distortion '{k}' is not supported",
                            "only OpenCV k1, k2, p1, p2 are modelled")
    h0, w0 = native_size(path)
    w = _get(frame, meta, "w", where) or float(w0)
    h = _get(frame, meta, "h", where) or float(h0)
    if (h0, w0) != (h, w):
        k = round(w / w0)  # nerfstudio's images_2, images_4, ...: declared size / k on disk
        ok = k >= 2 and w0 in (w // k, -(-w // k)) and h0 in (h // k, -(-h // k))
        if not ok:
            raise DataError(str(path), f"image is {w0}x{h0} but the transforms declare "
                            f"{int(w)}x{int(h)}", "use the declared size or that size divided "
                            "by an integer (images_2, ...)")
    fx = _focal(frame, meta, "fl_x", "camera_angle_x", w, where)
    fy = _focal(frame, meta, "fl_y", "camera_angle_y", h, where)
    if fx is None and fy is None:
        raise DataError(where, f"{path.name}: no focal length",
                        "give fl_x (or camera_angle_x) globally or per frame")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    cx = _get(frame, meta, "cx", where)
    cy = _get(frame, meta, "cy", where)
    hn, wn = h0 // downscale, w0 // downscale
    if hn < 1 or wn < 1:
        raise DataError(str(path), f"image is too small for downscale {downscale}",
                        "lower data.downscale")
    sx, sy = wn / w, hn / h  # resampling maps the full image extent, so scale per axis
    cx, cy = w / 2 if cx is None else cx, h / 2 if cy is None else cy
    intr = [fx * sx, fy * sy, cx * sx, cy * sy]
    dist = [_get(frame, meta, k, where) or 0.0 for k in ("k1", "k2", "p1", "p2")]
    return intr, [hn, wn], dist


def _pose(frame: dict, where: str) -> Tensor:
    try:
        m = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise DataError(where, f"{frame['file_path']}: transform_matrix is not a numeric matrix",
                        "expected a 4x4 camera-to-world matrix") from e
    if m.shape not in ((4, 4), (3, 4)):
        raise DataError(where, f"{frame['file_path']}: transform_matrix has shape "
                        f"{tuple(m.shape)}", "expected a 4x4 camera-to-world matrix")
    if not torch.isfinite(m).all():
        raise DataError(where, f"{frame['file_path']}: transform_matrix contains NaN/inf",
                        "fix or remove that frame")
    return m[:3, :4]


def _frames_list(meta: object, where: str) -> list[dict]:
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise DataError(where, "has no 'frames' list", "is this an instant-ngp/nerfstudio file?")
    for i, f in enumerate(frames):
        if not isinstance(f, dict) or not isinstance(f.get("file_path"), str):
            raise DataError(where, f"frame {i} lacks 'file_path'", "each frame needs file_path "
                            "and transform_matrix")
        if "transform_matrix" not in f:
            raise DataError(where, f"frame {i} ({f['file_path']}) lacks 'transform_matrix'",
                            "each frame needs file_path and transform_matrix")
    return sorted(frames, key=lambda f: f["file_path"])  # stable holdout across exporters


def _resolve(base: Path, file_path: str) -> Path:
    p = base / file_path
    return p if p.suffix else p.with_suffix(".png")


def load_transforms(root: str | Path, downscale: int = 1, holdout: int = 8,
                    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                    unbounded: bool | str = "auto") -> SceneData:
    """Load ``root/transforms.json`` (or the json file itself) into the normalised scene."""
    if downscale < 1:
        raise DataError("data.downscale", f"must be >= 1, got {downscale}", "use 1, 2, 4, ...")
    if holdout < 2:
        raise DataError("data.holdout", f"must be >= 2, got {holdout}", "8 holds out every 8th")
    if unbounded not in ("auto", True, False):
        raise DataError("data.unbounded", f"must be auto, true or false, got {unbounded!r}", "")
    if root is not None and Path(root).expanduser().is_file():
        tf_path = Path(root).expanduser()
    else:
        tf_path = check_root(root) / "transforms.json"
    src = str(tf_path)
    meta = read_json(tf_path, "data.root must hold transforms.json (instant-ngp / nerfstudio)")
    frames = _frames_list(meta, src)
    paths = [_resolve(tf_path.parent, f["file_path"]) for f in frames]
    keep = existing_frames(paths, "listed", src)

    poses, intr, hw, dist, images = [], [], [], [], []
    for i in keep:
        poses.append(_pose(frames[i], src))
        k, s, d = _camera(frames[i], meta, paths[i], downscale, src)
        intr.append(k)
        hw.append(s)
        dist.append(d)
        images.append(load_image(paths[i], (s[0], s[1]), background))
    c2w = torch.stack(poses).float()
    focus = focus_point(c2w)
    c2w[:, :, 3] -= focus
    mean_dist = float(c2w[:, :, 3].norm(dim=-1).mean())
    scale = CAMERA_RADIUS / mean_dist if mean_dist > 1e-8 else 1.0
    c2w[:, :, 3] *= scale
    dist_t = torch.tensor(dist, dtype=torch.float32)
    full = Frames(c2w, torch.tensor(intr, dtype=torch.float32), torch.tensor(hw),
                  images, dist_t if bool((dist_t != 0).any()) else None,
                  [paths[i].name for i in keep])

    test_idx = [j for j, i in enumerate(keep) if i % holdout == 0]
    train_idx = [j for j, i in enumerate(keep) if i % holdout != 0]
    train, test = full.subset(train_idx), full.subset(test_idx)
    train.validate("train", src)
    test.validate("test", src)

    aabb_scale = _num(meta, "aabb_scale", src) or 1.0
    radii = train.c2w[:, :, 3].norm(dim=-1)
    contract = aabb_scale > 1 if unbounded == "auto" else bool(unbounded)
    if contract:
        extent = aabb_scale if aabb_scale > 1 else UNBOUNDED_EXTENT
        spec = SceneSpec(contraction=True, near=0.05,
                         far=float(radii.max()) + math.sqrt(3.0) * extent)
    else:
        spec = SceneSpec(contraction=False, near=0.05)
    world = WorldFrame(scale=scale, translation=(-focus.double()).tolist(), contraction=contract,
                       source="transforms")
    return SceneData(train, test.subset(list(range(len(test)))), test, spec, tuple(background),
                     None, src, {"radius": [float(radii.min()), float(radii.max())],
                                 "forward_facing": False}, world)
