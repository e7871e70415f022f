"""An unbounded capture of pvdal's procedural scene, as an instant-ngp ``transforms.json``.

    python -m bench.unbounded_scene OUT_DIR [--size 64] [--n-train 48] [--n-test 6]

The objects of ``pvdal.data.synthetic`` (inside [-1.5, 1.5]^3) stand on an endless textured
ground plane (z = -0.45, a checker whose squares grow with distance so it stays resolvable) under
a textured sky dome of radius 30, so every pixel is opaque and the content reaches ~20x past the
objects: what a phone capture of an object outdoors looks like to a NeRF. Ground and sky are
emissive (no lighting or shadows); the objects are lit as in the synthetic scene. Cameras orbit at
radius 4 (elevation 10-40 degrees). ``aabb_scale`` 16 marks it unbounded (pvdal contracts
outside its unit box). Deterministic for the same arguments.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import imageio.v3 as iio
import torch

from pvdal.data.synthetic import CAMERA_ANGLE_X, build_scene, look_at, trace
from pvdal.render.rays import pixel_rays

GROUND_Z = -0.45
SKY_RADIUS = 30.0


def _far(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Colour of the far background (ground plane, else sky dome) for rays o, d [R, 3]."""
    t_ground = torch.where(d[:, 2] < -1e-6, (GROUND_Z - o[:, 2]) / d[:, 2], torch.inf)
    b = (o * d).sum(-1)
    t_sky = -b + torch.sqrt((b * b - (o * o).sum(-1) + SKY_RADIUS**2).clamp_min(0))
    ground = t_ground < t_sky
    p = o + torch.where(ground, t_ground, t_sky)[:, None] * d
    r = p[:, :2].norm(dim=-1)
    cell = 0.4 * (1.0 + r / 3.0)  # squares grow with distance
    chk = ((torch.floor(p[:, 0] / cell) + torch.floor(p[:, 1] / cell)) % 2)[:, None]
    g = torch.tensor([0.35, 0.45, 0.25]) + 0.25 * chk * torch.tensor([1.0, 0.8, 0.6])
    g = g * (1.0 - 0.5 * (r / SKY_RADIUS).clamp(max=1.0))[:, None]
    az = torch.atan2(p[:, 1], p[:, 0])
    el = torch.asin((p[:, 2] / SKY_RADIUS).clamp(-1, 1))
    band = 0.5 + 0.5 * torch.sin(az * 12.0) * torch.cos(el * 9.0)
    s = torch.tensor([0.55, 0.7, 0.95]) * (1 - 0.3 * el.clamp_min(0))[:, None]
    s = s + 0.25 * band[:, None] * torch.tensor([1.0, 0.9, 0.6])
    return torch.where(ground[:, None], g, s).clamp(0, 1)


def render(c2w: torch.Tensor, w: int, h: int, focal: float) -> torch.Tensor:
    py, px = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    intr = torch.tensor([focal, focal, w / 2.0, h / 2.0])
    n = h * w
    o, d = pixel_rays(c2w[:3, :4].expand(n, 3, 4), intr.expand(n, 4), px.reshape(-1).float(),
                      py.reshape(-1).float())
    rgb, cov = trace(build_scene(), o, d)
    rgb = torch.where(cov[:, None] > 0, rgb, _far(o, d))
    return rgb.view(h, w, 3)


def write(out: Path, size: int, n_train: int, n_test: int, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    az = (torch.arange(n) + torch.rand(n, generator=gen)) / n * 2 * math.pi
    el = torch.deg2rad(10 + 30 * torch.rand(n, generator=gen))
    pos = 4.0 * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)
    focal = 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)
    (out / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, p in enumerate(pos):
        c2w = look_at(p)
        img = (render(c2w, size, size, focal) * 255 + 0.5).to(torch.uint8).numpy()
        iio.imwrite(out / "images" / f"{i:03d}.png", img)
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": c2w.tolist()})
    meta = {"fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2, "w": size, "h": size,
            "aabb_scale": 16, "frames": frames}
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument("--n-test", type=int, default=6)
    a = ap.parse_args()
    print(write(Path(a.out), a.size, a.n_train, a.n_test))


if __name__ == "__main__":
    main()
