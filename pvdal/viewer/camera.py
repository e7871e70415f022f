"""Cameras between the browser (viser: OpenCV axes, quaternion wxyz, vertical fov in radians)
and pvdal (camera-to-world [3, 4] in OpenGL axes, pinhole ``fx, fy, cx, cy`` in pixels)."""

from __future__ import annotations

import math

import numpy as np

GL_FROM_CV = np.diag([1.0, -1.0, -1.0])  # flip y and z: OpenCV <-> OpenGL camera axes


def quat_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation [3, 3]."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation [3, 3] -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-12))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    qa = np.array(q)
    qa /= np.linalg.norm(qa)
    return qa if qa[0] >= 0 else -qa


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (shortest arc)."""
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    th = math.acos(d)
    return (math.sin((1 - t) * th) * q0 + math.sin(t * th) * q1) / math.sin(th)


def c2w_from_viser(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """viser camera (R_world_camera in OpenCV axes, position) -> pvdal c2w [3, 4] (OpenGL)."""
    R = quat_to_matrix(wxyz) @ GL_FROM_CV
    return np.concatenate([R, np.asarray(position, np.float64).reshape(3, 1)], 1)


def viser_from_c2w(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pvdal c2w [3, 4] (OpenGL) -> (wxyz, position) of a viser camera."""
    c2w = np.asarray(c2w, np.float64)
    return matrix_to_quat(c2w[:3, :3] @ GL_FROM_CV), c2w[:3, 3].copy()


def look_at_of(c2w: np.ndarray) -> np.ndarray:
    """A point in front of the camera for orbiting: along its view axis, as far as the
    world origin is from it along that axis (at least 0.5)."""
    c2w = np.asarray(c2w, np.float64)
    fwd, pos = -c2w[:3, 2], c2w[:3, 3]
    return pos + fwd * max(float(-pos @ fwd), 0.5)


def intrinsics(fov_y: float, width: int, height: int) -> np.ndarray:
    """Pinhole ``fx, fy, cx, cy`` of a vertical field of view (radians) at ``width x height``."""
    f = 0.5 * height / math.tan(0.5 * fov_y)
    return np.array([f, f, 0.5 * width, 0.5 * height])


def fov_y(fy: float, height: float) -> float:
    """Vertical field of view (radians) of focal length ``fy`` at ``height`` pixels."""
    return 2.0 * math.atan(0.5 * height / fy)


def frame_size(aspect: float, max_side: int) -> tuple[int, int]:
    """(width, height) with the longer side ``max_side`` and the given aspect (w / h)."""
    aspect = aspect if aspect > 0 and math.isfinite(aspect) else 4 / 3
    if aspect >= 1:
        return max_side, max(2, round(max_side / aspect))
    return max(2, round(max_side * aspect)), max_side
