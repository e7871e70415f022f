"""Camera-path JSON: what the viewer saves and ``render.py path=FILE`` renders.

pvdal writes (docs/viewer.md)::

    {"format": "pvdal-camera-path", "version": 1, "camera_type": "perspective",
     "render_width": 320, "render_height": 240, "fps": 24, "seconds": 4.0, "is_cycle": false,
     "keyframes": [{"c2w": [[r00, r01, r02, tx], [..], [..]], "fov": 40.0}, ...],
     "camera_path": [{"camera_to_world": [16 floats, row-major 4x4], "fov": 40.0,
                      "aspect": 1.333}, ...]}

Poses are camera-to-world in OpenGL axes in the field's normalised scene (what pvdal renders);
``fov`` is the vertical field of view in degrees. ``camera_path`` holds every frame already
interpolated (linear positions, slerped rotations, linear fov, equal time per keyframe gap), so
the file is also a nerfstudio camera path (``ns-render camera-path`` reads the same keys). A
pvdal file is rendered from its keyframes; any other file (nerfstudio's) from ``camera_path``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pvdal.data.frames import Frames
from pvdal.io.atomic import atomic_write_json
from pvdal.utils.errors import PvdalError
from pvdal.viewer.camera import matrix_to_quat, quat_to_matrix, slerp

FORMAT = "pvdal-camera-path"


@dataclass
class Keyframe:
    c2w: np.ndarray  # [3, 4] OpenGL axes, normalised scene
    fov: float  # vertical, degrees


@dataclass
class CameraPath:
    keyframes: list[Keyframe]
    width: int = 320
    height: int = 240
    fps: int = 24
    seconds: float = 4.0
    is_cycle: bool = False
    frames: list[Keyframe] = field(default_factory=list)  # explicit per-frame cameras

    def n_frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def cameras(self) -> list[Keyframe]:
        """Every frame's camera: the explicit frames, else the keyframes interpolated."""
        if self.frames and not self.keyframes:
            return list(self.frames)
        return interpolate(self.keyframes, self.n_frames(), self.is_cycle)

    def to_json(self) -> dict:
        aspect = self.width / self.height
        return {
            "format": FORMAT, "version": 1, "camera_type": "perspective",
            "render_width": int(self.width), "render_height": int(self.height),
            "fps": int(self.fps), "seconds": float(self.seconds), "is_cycle": bool(self.is_cycle),
            "keyframes": [{"c2w": np.asarray(k.c2w, float).tolist(), "fov": float(k.fov)}
                          for k in self.keyframes],
            "camera_path": [{"camera_to_world": _mat44(k.c2w).reshape(-1).tolist(),
                             "fov": float(k.fov), "aspect": aspect} for k in self.cameras()],
        }

    def save(self, path: str | Path) -> Path:
        if not self.keyframes:
            raise PvdalError(str(path), "a camera path needs at least one keyframe",
                             "add keyframes in the viewer first")
        atomic_write_json(Path(path), self.to_json())
        return Path(path)


def _mat44(c2w: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :4] = np.asarray(c2w, float)[:3, :4]
    return m


def interpolate(keys: list[Keyframe], n: int, cycle: bool = False) -> list[Keyframe]:
    """``n`` cameras along the keyframes: equal time per gap, linear position and fov, slerp."""
    if not keys:
        return []
    keys = [*keys, keys[0]] if cycle and len(keys) > 1 else list(keys)
    if len(keys) == 1 or n == 1:
        return [Keyframe(np.asarray(keys[0].c2w, float)[:3, :4].copy(), keys[0].fov)] * n
    quats = [matrix_to_quat(np.asarray(k.c2w, float)[:3, :3]) for k in keys]
    gaps = len(keys) - 1
    out = []
    for i in range(n):
        u = i / (n if cycle else n - 1) * gaps
        j = min(int(math.floor(u)), gaps - 1)
        t = u - j
        a, b = np.asarray(keys[j].c2w, float), np.asarray(keys[j + 1].c2w, float)
        R = quat_to_matrix(slerp(quats[j], quats[j + 1], t))
        pos = (1 - t) * a[:3, 3] + t * b[:3, 3]
        out.append(Keyframe(np.concatenate([R, pos[:, None]], 1),
                            (1 - t) * keys[j].fov + t * keys[j + 1].fov))
    return out


def _bad(path: str, problem: str) -> PvdalError:
    return PvdalError(path, problem, "pass path=FILE with a camera-path JSON (docs/viewer.md) "
                      "or path=spiral|test")


def load_camera_path(path: str | Path) -> CameraPath:
    """Read a pvdal or nerfstudio camera-path JSON; a PvdalError names the file otherwise."""
    p = str(path)
    try:
        d = json.loads(Path(p).read_text())
    except FileNotFoundError as e:
        raise _bad(p, "camera-path file not found") from e
    except (OSError, ValueError) as e:
        raise _bad(p, f"not a readable JSON file ({e})") from e
    try:
        cp = CameraPath([], int(d["render_width"]), int(d["render_height"]),
                        int(d.get("fps", 24)), float(d.get("seconds", 0.0)),
                        bool(d.get("is_cycle", False)))
        if d.get("format") == FORMAT and d.get("keyframes"):
            cp.keyframes = [Keyframe(np.asarray(k["c2w"], float).reshape(-1, 4)[:3],
                                     float(k["fov"])) for k in d["keyframes"]]
        else:
            cp.frames = [Keyframe(np.asarray(c["camera_to_world"], float).reshape(4, 4)[:3],
                                  float(c["fov"])) for c in d["camera_path"]]
            cp.seconds = cp.seconds or len(cp.frames) / cp.fps
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(p, f"not a camera path ({type(e).__name__}: {e})") from e
    cams = cp.keyframes or cp.frames
    if not cams:
        raise _bad(p, "the camera path has no cameras")
    if min(cp.width, cp.height) < 1 or cp.fps < 1:
        raise _bad(p, "render_width, render_height and fps must be positive")
    if not all(np.isfinite(k.c2w).all() and 0 < k.fov < 180 for k in cams):
        raise _bad(p, "a camera has a non-finite pose or a fov outside (0, 180) degrees")
    return cp


def path_frames(cp: CameraPath, height: int | None = None) -> Frames:
    """The path's cameras as pvdal Frames (scaled to ``height`` pixels when given)."""
    cams = cp.cameras()
    s = 1.0 if height is None else height / cp.height
    h, w = max(2, round(cp.height * s)), max(2, round(cp.width * s))
    c2w = torch.tensor(np.stack([k.c2w for k in cams]), dtype=torch.float32)
    f = [0.5 * h / math.tan(0.5 * math.radians(k.fov)) for k in cams]
    K = torch.tensor([[fi, fi, 0.5 * w, 0.5 * h] for fi in f], dtype=torch.float32)
    return Frames(c2w, K, torch.tensor([[h, w]]).expand(len(cams), 2).clone())
