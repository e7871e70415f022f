"""svox2 / Plenoxels ``.npz`` -> a pvdal ``LoadedField`` holding svox2's own field.

What is read (svox2's ``SparseGrid.save``, sxyu/svox2 ``svox2/svox2.py``): ``radius`` f32[3],
``center`` f32[3], ``links`` int32 [Rx, Ry, Rz] (-1 = empty voxel), ``density_data`` f32 [N, 1],
``sh_data`` f16 [N, 3 * basis_dim] (R, G, B blocks) and ``basis_type`` (1 = SH; absent = SH). The
archive is read with ``numpy.load(allow_pickle=False)`` (pvdal/io/safe_load.py). Files with a
learned basis (``basis_data``, an MLP basis) or svox2's multi-sphere background (360-degree
scenes: ``background_links``/``background_data``) are refused with that reason. The field is
pvdal/fields/svox2_native.py.

Frame: svox2's synthetic (Blender) world is the Blender world x 2/3, which is pvdal's normalised
Blender scene, so ``world_scale = 1``. Marching: a step no longer than svox2's default
``step_size`` (0.5 voxel) along any direction; the occupancy grid marks exactly the cells that may
hold a point whose 8 interpolation corners include a voxel with density above ``sigma_thresh``
(elsewhere svox2's density is zero), so skipping changes no pixel. Render options of svox2 (step
size, thresholds, background brightness) are command-line arguments, not in the file: its
defaults are used (step 0.5 voxel, sigma_thresh 1e-10, white background).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from pvdal.fields.svox2_native import Svox2NativeField
from pvdal.io.checkpoint import LoadedField, file_sha256, strict_load
from pvdal.io.importers.tensorf import _range_any
from pvdal.io.safe_load import safe_npz_load
from pvdal.render.march import default_step_size
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import CheckpointError

log = logging.getLogger("pvdal")

WORLD_SCALE = 1.0  # svox2's synthetic world (Blender x 2/3) = pvdal's normalised Blender scene
STEP_SIZE = 0.5  # svox2's default RenderOptions.step_size, in voxels
SIGMA_THRESH = 1e-10  # svox2's default RenderOptions.sigma_thresh
BASIS_TYPE_SH = 1
GRID_RESOLUTION = 128
GRID_THRESHOLD = 0.01
NEEDED = ("radius", "center", "links", "density_data", "sh_data")
REFUSED = {"basis_data": "a learned 3D-texture basis (basis_type 4)",
           "basis_mlp": "an MLP basis (basis_type 255)",
           "background_data": "a multi-sphere background model (a 360-degree scene)"}


def read_svox2(path: Path) -> dict[str, np.ndarray]:
    """The archive's arrays, checked: SH basis, consistent shapes and links."""
    z = safe_npz_load(path, "svox2 grid")
    bad = lambda problem, hint="": CheckpointError(str(path), problem, hint or  # noqa: E731
                                                   "is it a file written by svox2's save()?")
    missing = [k for k in NEEDED if k not in z]
    if missing:
        raise bad(f"svox2 grid lacks {missing}")
    for key, what in REFUSED.items():
        if key in z or any(k.startswith(key) for k in z):
            raise bad(f"holds {what} ({key}), which pvdal does not import",
                      "pvdal imports svox2's SH grids of bounded (synthetic) scenes")
    basis_type = int(z["basis_type"]) if "basis_type" in z else BASIS_TYPE_SH
    if basis_type != BASIS_TYPE_SH:
        raise bad(f"basis_type {basis_type} is not imported", "pvdal imports SH grids "
                  "(basis_type 1) only")
    links, dens, sh = z["links"], z["density_data"], z["sh_data"]
    if links.ndim != 3 or min(links.shape) < 2 or links.dtype.kind not in "iu":
        raise bad(f"links must be an integer [Rx, Ry, Rz] volume (each >= 2), got "
                  f"{links.dtype} {list(links.shape)}")
    if dens.ndim != 2 or dens.shape[1] != 1 or sh.ndim != 2 or sh.shape[0] != dens.shape[0]:
        raise bad(f"density_data {list(dens.shape)} and sh_data {list(sh.shape)} are not "
                  "[N, 1] and [N, 3 * basis_dim]")
    basis_dim = sh.shape[1] // 3
    if sh.shape[1] % 3 or math.isqrt(basis_dim) ** 2 != basis_dim or not 1 <= basis_dim <= 25:
        raise bad(f"sh_data has {sh.shape[1]} columns: not 3 x (1, 4, 9, 16 or 25)")
    if links.size and (int(links.max()) >= dens.shape[0] or int(links.min()) < -1):
        raise bad(f"links point outside the {dens.shape[0]} rows of density_data "
                  f"(range {int(links.min())}..{int(links.max())})")
    for key in ("radius", "center"):
        if np.asarray(z[key]).size not in (1, 3):
            raise bad(f"{key} must hold 1 or 3 values, got {list(np.shape(z[key]))}")
    return z


def _vec3(v) -> list[float]:
    a = np.asarray(v, dtype=np.float32).reshape(-1)
    return [float(x) for x in (np.repeat(a, 3) if a.size == 1 else a)]


def step_samples(field: Svox2NativeField) -> int:
    """Marching samples across pvdal's box diagonal whose step is at most svox2's shortest world
    step (``STEP_SIZE`` voxels along the finest axis)."""
    voxel = (2.0 * field.radius / torch.tensor(field.reso, dtype=torch.float32)).min()
    step = STEP_SIZE * float(voxel) / field.world_scale  # pvdal units
    return math.ceil(default_step_size(1) / step)


@torch.no_grad()
def occupancy(field: Svox2NativeField, n_samples: int, resolution: int = GRID_RESOLUTION
              ) -> OccupancyGrid:
    """Occupied cells: those that may hold a point inside svox2's grid box whose interpolation
    corners include a voxel with density above ``sigma_thresh`` (1e-3-cell margin)."""
    R = resolution
    links = field.links.long()
    dens = field.density_data[:, 0]
    vol = (links >= 0) & (dens[links.clamp_min(0)] > field.sigma_thresh)
    edges = torch.linspace(-1.0, 1.0, R + 1, dtype=torch.float64)
    pad = 1e-3 * 2.0 / R
    for axis in range(3):
        n = field.reso[axis]
        scale = 0.5 / float(field.radius[axis]) * n
        offset = 0.5 * (1.0 - float(field.center[axis]) / float(field.radius[axis])) * n - 0.5
        w_lo = (edges[:-1] - pad) * field.world_scale + float(field.world_offset[axis])
        w_hi = (edges[1:] + pad) * field.world_scale + float(field.world_offset[axis])
        g_lo, g_hi = w_lo * scale + offset, w_hi * scale + offset
        inside = (g_hi >= -0.5) & (g_lo <= n - 0.5)
        lo = g_lo.clamp(0, n - 1).floor().long().clamp(0, n - 2)
        hi = g_hi.clamp(0, n - 1).floor().long().clamp(0, n - 2) + 1
        hi = torch.where(inside, hi, lo - 1)
        vol = _range_any(vol, axis, lo, hi)
    grid = OccupancyGrid(resolution=R, threshold=GRID_THRESHOLD)
    step = default_step_size(n_samples)
    grid.density.copy_(torch.where(vol.reshape(-1), 2.0 * GRID_THRESHOLD / step, 0.0))
    grid.refresh(step)
    return grid


def import_svox2(path: str | Path, key: str = "ckpt") -> LoadedField:
    p = Path(str(path)).expanduser()
    z = read_svox2(p)
    links, dens, sh = z["links"], z["density_data"], z["sh_data"]
    args = {"reso": [int(r) for r in links.shape], "n_rows": int(dens.shape[0]),
            "basis_dim": int(sh.shape[1] // 3), "radius": _vec3(z["radius"]),
            "center": _vec3(z["center"]), "sigma_thresh": SIGMA_THRESH,
            "world_scale": WORLD_SCALE, "world_offset": [0.0, 0.0, 0.0]}
    field = Svox2NativeField(**args)
    state = {"links": torch.from_numpy(links.astype(np.int32)),
             "density_data": torch.from_numpy(dens.astype(np.float32)),
             "sh_data": torch.from_numpy(sh.astype(np.float32)),  # svox2 loads f16 as f32
             "radius": torch.tensor(args["radius"]), "center": torch.tensor(args["center"]),
             "world_offset": field.world_offset}
    strict_load(field, state, f"{p} (svox2 grid)")
    field.eval()
    n_samples = step_samples(field)
    grid = occupancy(field, n_samples)
    box = [[c - r for c, r in zip(args["center"], args["radius"])],
           [c + r for c, r in zip(args["center"], args["radius"])]]
    if max(abs(v) for row in box for v in row) > WORLD_SCALE + 1e-4:
        log.warning("import: svox2 grid box %s reaches outside pvdal's box (+-%g world units); "
                    "pvdal samples only inside it", box, WORLD_SCALE)
    scene = SceneSpec(contraction=False, near=0.0)
    arch = {"name": "plenoxels", "native": "svox2", "n_samples": n_samples,
            "field": {"_target_": "pvdal.fields.svox2_native.Svox2NativeField", **args}}
    frame = {"tool": "svox2", "world": "svox2 synthetic world = Blender world x 2/3",
             "world_from_scene": {"scale": WORLD_SCALE, "offset": [0.0, 0.0, 0.0]},
             "radius": args["radius"], "center": args["center"]}
    meta = {"format": "svox2", "imported": {"format": "svox2", "path": str(p)}, "arch": arch,
            "field_extra": {}, "frame": frame,
            "grid": {"resolution": grid.resolution, "threshold": GRID_THRESHOLD},
            "scene": scene.as_dict(), "background": [1.0, 1.0, 1.0], "n_samples": n_samples,
            "svox2": {"step_size": STEP_SIZE, "sigma_thresh": SIGMA_THRESH}}
    log.info("import: svox2 grid from %s: links %s, %d voxels (%.1f%%), SH %d x 3 (sh_data %s), "
             "radius %s, center %s; frame: svox2 world = pvdal scene x %g; %d samples, %.1f%% "
             "of %d^3 cells occupied", p, args["reso"], args["n_rows"],
             100.0 * args["n_rows"] / max(1, links.size), args["basis_dim"], sh.dtype,
             args["radius"], args["center"], WORLD_SCALE, n_samples,
             100 * grid.occupancy_fraction(), grid.resolution)
    return LoadedField(field, grid, scene, torch.tensor(meta["background"]), n_samples, arch,
                       meta, str(p), file_sha256(p))
