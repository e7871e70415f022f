"""Camera rays: pinhole + OpenCV radial-tangential distortion, ray/AABB intersection, NDC.

Conventions: camera-to-world ``c2w`` in OpenGL/Blender axes (x right, y up, the camera looks
down -z); pixel centres at +0.5; returned directions are unit vectors, so ``t`` is a distance.
"""

from __future__ import annotations

import torch
from torch import Tensor


def undistort(xd: Tensor, yd: Tensor, dist: Tensor, iters: int = 10) -> tuple[Tensor, Tensor]:
    """Invert OpenCV (k1, k2, p1, p2) distortion on normalised coords by fixed-point iteration.

    xd, yd: [R] distorted normalised coords (OpenCV axes); dist: [R, 4].
    """
    k1, k2, p1, p2 = dist.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(iters):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (xd - dx) / radial
        y = (yd - dy) / radial
    return x, y


def distort(x: Tensor, y: Tensor, dist: Tensor) -> tuple[Tensor, Tensor]:
    """Apply OpenCV (k1, k2, p1, p2) distortion to normalised coords (used by tests and writers)."""
    k1, k2, p1, p2 = dist.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def pixel_rays(
    c2w: Tensor,  # [R, 3, 4] camera of each ray
    intrinsics: Tensor,  # [R, 4] fx, fy, cx, cy
    px: Tensor,  # [R] pixel column index (the ray goes through px + 0.5)
    py: Tensor,  # [R] pixel row
    distortion: Tensor | None = None,  # [R, 4] k1, k2, p1, p2
) -> tuple[Tensor, Tensor]:
    """Rays through pixel centres (px + 0.5, py + 0.5). Returns rays_o [R, 3], rays_d [R, 3]."""
    fx, fy, cx, cy = intrinsics.unbind(-1)
    x = (px.float() + 0.5 - cx) / fx
    y = (py.float() + 0.5 - cy) / fy
    if distortion is not None and bool((distortion != 0).any()):
        x, y = undistort(x, y, distortion)
    dirs_cam = torch.stack([x, -y, -torch.ones_like(x)], dim=-1)  # OpenCV -> OpenGL axes
    rays_d = (c2w[:, :3, :3] @ dirs_cam[..., None])[..., 0]
    rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    return c2w[:, :3, 3].expand_as(rays_d).contiguous(), rays_d


def image_rays(
    c2w: Tensor, intrinsics: Tensor, height: int, width: int, distortion: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """All rays of one image, row-major. c2w: [3, 4]; intrinsics: [4] -> [H*W, 3] twice."""
    py, px = torch.meshgrid(
        torch.arange(height, device=c2w.device), torch.arange(width, device=c2w.device),
        indexing="ij",
    )
    n = height * width
    dist = None if distortion is None else distortion.expand(n, 4)
    return pixel_rays(c2w.expand(n, 3, 4), intrinsics.expand(n, 4), px.reshape(-1),
                      py.reshape(-1), dist)


def ray_aabb_intersect(
    rays_o: Tensor, rays_d: Tensor, aabb: Tensor
) -> tuple[Tensor, Tensor]:
    """Slab test. rays_o, rays_d: [R, 3]; aabb: [6] (min xyz, max xyz) -> t_near [R], t_far [R].

    Rays that miss get t_far < t_near.
    """
    inv = 1.0 / torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9), rays_d)
    t0 = (aabb[:3] - rays_o) * inv
    t1 = (aabb[3:] - rays_o) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def ndc_rays(
    rays_o: Tensor, rays_d: Tensor, focal: float, width: int, height: int, near: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Map forward-facing rays (camera looking down -z) into NDC (NeRF's LLFF convention).

    The frustum from ``near`` to infinity becomes [-1, 1]^3; returned directions are unit vectors
    (NDC t in [0, 1] becomes a distance along them).
    """
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d
    ox, oy, oz = rays_o.unbind(-1)
    dx, dy, dz = rays_d.unbind(-1)
    o0 = -1.0 / (width / (2.0 * focal)) * ox / oz
    o1 = -1.0 / (height / (2.0 * focal)) * oy / oz
    o2 = 1.0 + 2.0 * near / oz
    d0 = -1.0 / (width / (2.0 * focal)) * (dx / dz - ox / oz)
    d1 = -1.0 / (height / (2.0 * focal)) * (dy / dz - oy / oz)
    d2 = -2.0 * near / oz
    o = torch.stack([o0, o1, o2], -1)
    d = torch.stack([d0, d1, d2], -1)
    return o, d / d.norm(dim=-1, keepdim=True)
