"""A procedural NeRF test scene written in the Blender / NeRF-Synthetic format (no downloads).

``ensure_synthetic_scene(root, ...)`` ray-traces a fixed, analytic 3-D scene into
``root/<name>/`` with ``transforms_{train,val,test}.json`` and RGBA 8-bit PNGs (transparent
background), which ``pvdal.data.blender.load_blender`` reads like any NeRF-Synthetic scene.

The scene (world units, z up, everything inside [-1.5, 1.5]^3 like NeRF-Synthetic objects, so the
parser's default ``scale=1/1.5`` maps it into the unit box):

* a ground slab: a flat capped cylinder (radius 1.25, top at z = -0.4) with a two-frequency
  checkerboard, fine grid lines and rings on top, stripes on its rim; slightly glossy;
* a large glossy sphere (r = 0.55) in the middle with longitude stripes and latitude bands,
  strong Blinn-Phong highlights (the view-dependent object);
* a box rotated 25 degrees about z with a 3-D checker and fine diagonal stripes; semi-glossy;
* a tall thin cylinder with spiral stripes and ringed caps; glossy;
* a small matte sphere with a multi-frequency sine pattern.

Objects stand in front of each other from many views (occlusion) and cast hard shadows from two
directional lights (a white key light and a weaker bluish fill) onto the ground and each other;
an ambient term keeps shadows non-black. Colours are in [0, 1]. Each pixel averages a jittered
4x4 supersampling (alpha = coverage), so edges and fine textures are anti-aliased.

Cameras follow NeRF-Synthetic: ``camera_angle_x`` = 0.6911 rad, radius 4.0, looking at the origin
with world up +z, OpenGL camera axes (``pvdal.render.rays``). Azimuths are stratified around the
circle, elevations drawn in 10-70 degrees (uniform in sin). Train, val and test draw from
different random streams of the seed, so test views differ from training views. Everything is
deterministic given the arguments (``torch.Generator``).

Writing is atomic and safe under concurrency: the scene is rendered into a temp folder beside the
target, a ``scene.json`` marker holding the arguments is written last, then the folder is renamed
into place. Only a folder holding a matching marker counts as the scene; if another process got
there first, its folder is used and ours discarded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from pvdal.render.rays import pixel_rays

SCENE_VERSION = 2
MARKER = "scene.json"
CAMERA_ANGLE_X = 0.6911112070083618  # NeRF-Synthetic's value
RADIUS = 4.0
ELEVATION_DEG = (10.0, 70.0)
SUPERSAMPLE = 4  # jittered SUPERSAMPLE x SUPERSAMPLE samples per pixel
SPLIT_STREAM = {"train": 1, "val": 2, "test": 3}

_EPS = 1e-4
_INF = float("inf")

Albedo = Callable[[Tensor], Tensor]  # local hit points [R, 3] -> colours [R, 3]


# ------------------------------------------------------------------------------------ textures


def _mix(a: tuple[float, float, float], b: tuple[float, float, float], w: Tensor) -> Tensor:
    """Blend colours a -> b by weight w [R] in [0, 1] -> [R, 3]."""
    ta, tb = torch.tensor(a), torch.tensor(b)
    return ta + (tb - ta) * w[:, None]


def _parity(*coords: Tensor) -> Tensor:
    """Checkerboard in {0, 1} from coordinates already multiplied by their frequency."""
    s = sum(torch.floor(c) for c in coords)
    return torch.remainder(s, 2.0)


def _ground_albedo(q: Tensor) -> Tensor:
    x, y, z = q.unbind(-1)
    r = torch.sqrt(x * x + y * y)
    top = z > -0.01  # the slab's local top face is z = 0
    coarse = _parity(x * 2.5, y * 2.5)
    fine = _parity(x * 6.0, y * 6.0)
    w = 0.75 * coarse + 0.25 * fine
    col = _mix((0.22, 0.26, 0.36), (0.88, 0.86, 0.78), w)
    grid = (torch.sin(x * 12.0).abs() < 0.3) | (torch.sin(y * 12.0).abs() < 0.3)
    col = torch.where(grid[:, None], col * 0.55, col)
    ring = torch.sin(r * 18.0) > 0.92
    col = torch.where(ring[:, None], torch.tensor((0.75, 0.25, 0.15)), col)
    rim = _mix((0.2, 0.2, 0.2), (0.9, 0.7, 0.2), (torch.sin(torch.atan2(y, x) * 32.0) > 0).float())
    return torch.where(top[:, None], col, rim)


def _glossy_sphere_albedo(q: Tensor) -> Tensor:
    x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    lon = torch.atan2(y, x)
    lat = torch.asin(z.clamp(-1.0, 1.0))
    col = _mix((0.80, 0.08, 0.08), (0.95, 0.95, 0.92), (torch.sin(lon * 10.0) > 0).float())
    band = torch.sin(lat * 16.0) > 0.8
    return torch.where(band[:, None], torch.tensor((0.10, 0.20, 0.70)), col)


def _box_albedo(q: Tensor) -> Tensor:
    x, y, z = q.unbind(-1)
    w = _parity(x * 6.0, y * 6.0, z * 6.0)
    col = _mix((0.95, 0.55, 0.10), (0.95, 0.92, 0.78), w)
    stripe = torch.sin((x + y + z) * 25.0) > 0.75
    return torch.where(stripe[:, None], torch.tensor((0.15, 0.10, 0.10)), col)


def _cylinder_albedo(q: Tensor) -> Tensor:
    x, y, z = q.unbind(-1)
    phi = torch.atan2(y, x)
    spiral = (torch.sin(phi * 6.0 + z * 20.0) > 0).float()
    side = _mix((0.10, 0.60, 0.25), (0.95, 0.85, 0.20), spiral)
    r = torch.sqrt(x * x + y * y)
    cap = _mix((0.95, 0.95, 0.95), (0.10, 0.35, 0.20), (torch.sin(r * 40.0) > 0).float())
    on_cap = r < 0.2 - 1e-3
    return torch.where(on_cap[:, None], cap, side)


def _matte_sphere_albedo(q: Tensor) -> Tensor:
    x, y, z = q.unbind(-1)
    v = (0.5 + 0.22 * torch.sin(x * 9.0) * torch.sin(y * 9.0) * torch.sin(z * 9.0 + 1.0)
         + 0.18 * torch.sin((x + 2.0 * y) * 23.0) + 0.10 * torch.sin((z - x) * 25.0))
    return _mix((0.45, 0.18, 0.62), (0.10, 0.75, 0.70), v.clamp(0.0, 1.0))


# ------------------------------------------------------------------------------------- shapes


def _first_positive(*ts: Tensor) -> Tensor:
    """Smallest candidate t > eps per ray (inf where none); candidates are [R] tensors."""
    t = torch.stack(ts, 0)
    t = torch.where(t > _EPS, t, _INF)
    return t.amin(0)


@dataclass
class Shape:
    albedo: Albedo
    ks: float  # specular strength
    shininess: float  # Blinn-Phong exponent

    def hit(self, o: Tensor, d: Tensor) -> Tensor:
        """Ray distance to the first hit [R] (inf: miss). o, d: [R, 3], d unit."""
        raise NotImplementedError

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """Outward unit normals [R, 3] and albedo [R, 3] at hit points p [R, 3]."""
        raise NotImplementedError


@dataclass
class Sphere(Shape):
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 1.0

    def hit(self, o: Tensor, d: Tensor) -> Tensor:
        oc = o - torch.tensor(self.center)
        b = (oc * d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - self.radius**2)
        s = torch.sqrt(disc.clamp_min(0.0))
        t = _first_positive(-b - s, -b + s)
        return torch.where(disc >= 0, t, _INF)

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        q = p - torch.tensor(self.center)
        return q / self.radius, self.albedo(q)


@dataclass
class Box(Shape):
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    half: tuple[float, float, float] = (0.5, 0.5, 0.5)
    yaw_deg: float = 0.0  # rotation about +z

    def _rot(self) -> Tensor:
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def hit(self, o: Tensor, d: Tensor) -> Tensor:
        rot = self._rot()
        lo = (o - torch.tensor(self.center)) @ rot  # world -> local: R^T x
        ld = d @ rot
        ld = torch.where(ld.abs() < 1e-9, torch.full_like(ld, 1e-9), ld)
        half = torch.tensor(self.half)
        t0, t1 = (-half - lo) / ld, (half - lo) / ld
        tn = torch.minimum(t0, t1).amax(-1)
        tf = torch.maximum(t0, t1).amin(-1)
        t = torch.where(tn > _EPS, tn, tf)
        ok = (tf >= tn) & (tf > _EPS)
        return torch.where(ok, t, _INF)

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        rot = self._rot()
        q = (p - torch.tensor(self.center)) @ rot
        rel = q / torch.tensor(self.half)
        axis = rel.abs().argmax(-1)
        n_local = torch.zeros_like(q)
        n_local.scatter_(1, axis[:, None], torch.sign(rel.gather(1, axis[:, None])))
        return n_local @ rot.T, self.albedo(q)


@dataclass
class Cylinder(Shape):
    """Capped cylinder along +z: axis through (cx, cy), z in [z0, z1]."""

    cx: float = 0.0
    cy: float = 0.0
    radius: float = 0.5
    z0: float = 0.0
    z1: float = 1.0

    def hit(self, o: Tensor, d: Tensor) -> Tensor:
        ox, oy, oz = o[:, 0] - self.cx, o[:, 1] - self.cy, o[:, 2]
        dx, dy, dz = d.unbind(-1)
        a = (dx * dx + dy * dy).clamp_min(1e-12)
        b = ox * dx + oy * dy
        disc = b * b - a * (ox * ox + oy * oy - self.radius**2)
        s = torch.sqrt(disc.clamp_min(0.0))
        cands = []
        for t in ((-b - s) / a, (-b + s) / a):
            z = oz + t * dz
            ok = (disc >= 0) & (z >= self.z0) & (z <= self.z1)
            cands.append(torch.where(ok, t, _INF))
        dz_safe = torch.where(dz.abs() < 1e-9, torch.full_like(dz, 1e-9), dz)
        for zc in (self.z0, self.z1):
            t = (zc - oz) / dz_safe
            x, y = ox + t * dx, oy + t * dy
            ok = x * x + y * y <= self.radius**2
            cands.append(torch.where(ok, t, _INF))
        return _first_positive(*cands)

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        q = p - torch.tensor((self.cx, self.cy, self.z1))  # local: top cap at z = 0
        rho = torch.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2).clamp_min(1e-9)
        d_side = (rho - self.radius).abs()
        d_top = q[:, 2].abs()
        d_bot = (p[:, 2] - self.z0).abs()
        n = torch.stack([q[:, 0] / rho, q[:, 1] / rho, torch.zeros_like(rho)], -1)
        n = torch.where((d_top < d_side)[:, None], torch.tensor((0.0, 0.0, 1.0)), n)
        n = torch.where(((d_bot < d_side) & (d_bot < d_top))[:, None],
                        torch.tensor((0.0, 0.0, -1.0)), n)
        return n, self.albedo(q)


def build_scene() -> list[Shape]:
    """The fixed scene: ground slab, glossy sphere, box, cylinder, matte sphere (see docstring)."""
    ground = -0.4
    return [
        Cylinder(_ground_albedo, ks=0.15, shininess=20.0, radius=1.25, z0=ground - 0.08,
                 z1=ground),
        Sphere(_glossy_sphere_albedo, ks=0.9, shininess=60.0, center=(0.2, -0.15, ground + 0.55),
               radius=0.55),
        Box(_box_albedo, ks=0.3, shininess=32.0, center=(-0.62, 0.5, ground + 0.35),
            half=(0.32, 0.26, 0.35), yaw_deg=25.0),
        Cylinder(_cylinder_albedo, ks=0.45, shininess=48.0, cx=-0.5, cy=-0.72, radius=0.2,
                 z0=ground, z1=ground + 1.25),
        Sphere(_matte_sphere_albedo, ks=0.04, shininess=8.0, center=(0.78, 0.62, ground + 0.3),
               radius=0.3),
    ]


# Directional lights: (direction towards the light, RGB intensity).
LIGHTS: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.45, -0.35, 1.0), (0.85, 0.85, 0.82)),
    ((-0.7, 0.6, 0.55), (0.22, 0.26, 0.36)),
)
AMBIENT = 0.22


# ------------------------------------------------------------------------------------ tracing


def _nearest(shapes: list[Shape], o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest hit distance [R] (inf: miss) and the shape index [R]."""
    t = torch.stack([s.hit(o, d) for s in shapes], 0)
    return t.min(0)


def trace(shapes: list[Shape], o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Shade rays o, d [R, 3] -> colour [R, 3] in [0, 1] and coverage [R] in {0, 1}."""
    t, idx = _nearest(shapes, o, d)
    hit = torch.isfinite(t)
    rgb = torch.zeros_like(o)
    hi = hit.nonzero().squeeze(1)
    if hi.numel() == 0:
        return rgb, hit.float()
    dh = d[hi]
    p = o[hi] + t[hi, None] * dh
    n = torch.zeros_like(p)
    alb = torch.zeros_like(p)
    ks = torch.zeros(len(hi))
    shin = torch.ones(len(hi))
    ih = idx[hi]
    for k, s in enumerate(shapes):
        m = ih == k
        if m.any():
            n[m], alb[m] = s.surface(p[m])
            ks[m], shin[m] = s.ks, s.shininess
    n = torch.where(((n * dh).sum(-1) > 0)[:, None], -n, n)  # face the viewer
    origin = p + 1e-3 * n
    col = alb * AMBIENT
    for ldir, lint in LIGHTS:
        lv = torch.tensor(ldir)
        lv = lv / lv.norm()
        li = torch.tensor(lint)
        ndl = (n * lv).sum(-1)
        vis = (ndl > 0).float()
        li_idx = vis.nonzero().squeeze(1)  # shadow rays only where the light faces the surface
        ts, _ = _nearest(shapes, origin[li_idx], lv.expand(len(li_idx), 3))
        vis[li_idx] = torch.isfinite(ts).logical_not().float()
        h = lv - dh
        h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        spec = ks * (n * h).sum(-1).clamp_min(0.0) ** shin
        col = col + vis[:, None] * li * (alb * ndl.clamp_min(0.0)[:, None] + spec[:, None])
    rgb[hi] = col.clamp(0.0, 1.0)
    return rgb, hit.float()


def look_at(position: Tensor) -> Tensor:
    """Camera-to-world [4, 4] (OpenGL axes) at ``position`` looking at the origin, up = +z."""
    back = position / position.norm()  # camera +z points away from the target
    right = torch.linalg.cross(torch.tensor((0.0, 0.0, 1.0)), back)
    right = right / right.norm()
    up = torch.linalg.cross(back, right)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, position
    return c2w


def sample_poses(n: int, gen: torch.Generator) -> Tensor:
    """[n, 4, 4] poses on the upper hemisphere: stratified azimuth, elevation in 10-70 degrees."""
    offset = torch.rand((), generator=gen) * 2 * math.pi
    az = offset + (torch.arange(n) + torch.rand(n, generator=gen)) / n * 2 * math.pi
    lo, hi = (math.sin(math.radians(e)) for e in ELEVATION_DEG)
    el = torch.asin(lo + (hi - lo) * torch.rand(n, generator=gen))
    pos = RADIUS * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)
    return torch.stack([look_at(p) for p in pos])


def render_view(shapes: list[Shape], c2w: Tensor, size: int, gen: torch.Generator) -> np.ndarray:
    """One RGBA uint8 [size, size, 4] image (straight alpha) with jittered supersampling."""
    focal = 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)
    intr = torch.tensor([focal, focal, size / 2.0, size / 2.0])
    py, px = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    py, px = py.reshape(-1).float(), px.reshape(-1).float()
    ss = SUPERSAMPLE
    n_pix = size * size
    jit = torch.rand(ss * ss, 2, n_pix, generator=gen)
    sx = torch.cat([px + (i % ss + jit[i, 0]) / ss - 0.5 for i in range(ss * ss)])
    sy = torch.cat([py + (i // ss + jit[i, 1]) / ss - 0.5 for i in range(ss * ss)])
    m = len(sx)  # pixel_rays adds 0.5: samples land at px + (cell + jitter) / ss
    o, d = pixel_rays(c2w[:3, :4].expand(m, 3, 4), intr.expand(m, 4), sx, sy)
    rgb, cov = trace(shapes, o, d)
    rgb = (rgb * cov[:, None]).view(ss * ss, n_pix, 3).mean(0)  # premultiplied
    alpha = cov.view(ss * ss, n_pix).mean(0)
    rgb = torch.where(alpha[:, None] > 0, rgb / alpha.clamp_min(1e-9)[:, None], rgb)
    img = torch.cat([rgb, alpha[:, None]], -1).clamp(0.0, 1.0).view(size, size, 4)
    return (img * 255.0 + 0.5).to(torch.uint8).numpy()


# -------------------------------------------------------------------------------------- files


def scene_name(seed: int, resolution: int, n_train: int, n_val: int, n_test: int) -> str:
    return f"synthetic-v{SCENE_VERSION}-s{seed}-r{resolution}-n{n_train}-{n_val}-{n_test}"


def _args(seed: int, resolution: int, n_train: int, n_val: int, n_test: int) -> dict:
    return {"version": SCENE_VERSION, "seed": seed, "resolution": resolution,
            "n_train": n_train, "n_val": n_val, "n_test": n_test}


def is_complete(folder: Path, args: dict) -> bool:
    """A folder counts as the scene only if its marker exists and names the same arguments."""
    try:
        return json.loads((folder / MARKER).read_text()).get("args") == args
    except (OSError, ValueError, AttributeError):
        return False


def write_scene(folder: Path, seed: int, resolution: int, n_train: int, n_val: int,
                n_test: int) -> None:
    """Render every split into ``folder`` (which exists); the marker is written last.

    Renders on one intra-op thread (restored afterwards): the per-view tensors are small, and on a
    busy machine OpenMP's thread barriers made two threads several times slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _write_splits(folder, seed, resolution, n_train, n_val, n_test)
    finally:
        torch.set_num_threads(threads)
    args = _args(seed, resolution, n_train, n_val, n_test)
    marker = {"args": args, "description": "pvdal procedural scene, see pvdal/data/synthetic.py"}
    (folder / MARKER).write_text(json.dumps(marker, indent=2))


def _write_splits(folder: Path, seed: int, resolution: int, n_train: int, n_val: int,
                  n_test: int) -> None:
    shapes = build_scene()
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        stream = seed * 1_000_003 + SPLIT_STREAM[split]
        poses = sample_poses(n, torch.Generator().manual_seed(stream))
        jitter = torch.Generator().manual_seed(stream + 500_000)
        (folder / split).mkdir()
        frames = []
        for i, c2w in enumerate(poses):
            iio.imwrite(folder / split / f"r_{i}.png", render_view(shapes, c2w, resolution, jitter))
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
        meta = {"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}
        (folder / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2))


def ensure_synthetic_scene(root: str | Path, seed: int = 0, resolution: int = 64,
                           n_train: int = 60, n_val: int = 4, n_test: int = 10) -> Path:
    """Write the scene under root/<name derived from all args + SCENE_VERSION> unless it is
    already there (cached, reused); return that folder.

    Safe to call from several processes at once: each renders into its own temp folder beside the
    target and renames it into place; the first rename wins and the others discard their copy.
    A folder at the target path without a matching ``scene.json`` marker (a partial or foreign
    folder) is never used: it is moved aside and replaced.
    """
    if resolution < 1 or min(n_train, n_val, n_test) < 1:
        raise ValueError(f"resolution and view counts must be >= 1, got resolution={resolution}, "
                         f"n_train={n_train}, n_val={n_val}, n_test={n_test}")
    root = Path(root).expanduser()
    args = _args(seed, resolution, n_train, n_val, n_test)
    name = scene_name(seed, resolution, n_train, n_val, n_test)
    target = root / name
    if is_complete(target, args):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        write_scene(tmp, seed, resolution, n_train, n_val, n_test)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); the scene is a shared cache
        for _ in range(5):
            try:
                os.rename(tmp, target)  # atomic; fails if target is a non-empty folder
                return target
            except OSError:
                if is_complete(target, args):
                    return target  # another process won the race; ours is discarded below
                if target.exists():  # stale or foreign folder without marker: move it aside
                    trash = Path(tempfile.mkdtemp(prefix=f".{name}.stale-", dir=root))
                    try:
                        os.rename(target, trash / "old")
                    except OSError:
                        pass  # someone else moved or replaced it; retry
                    shutil.rmtree(trash, ignore_errors=True)
        raise OSError(f"could not move the synthetic scene into place at {target}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
