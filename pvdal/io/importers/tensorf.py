"""TensoRF ``.th`` (VM split) -> a pvdal ``LoadedField`` holding TensoRF's own field.

What is read (TensoRF's ``save()``, apchenstu/TensoRF ``models/tensorBase.py``): ``kwargs`` (aabb,
gridSize, component counts, app_dim, density_shift, distance_scale, fea2denseAct, shadingMode,
view_pe, fea_pe, featureC, near_far, step_ratio), ``state_dict`` (planes, lines, basis matrix,
render MLP) and the alpha mask (``alphaMask.shape``, ``.mask`` = numpy packbits, ``.aabb``). The
file is loaded with ``torch.load(weights_only=True)`` and numpy's array types only
(pvdal/io/safe_load.py). The field is pvdal/fields/tensorf_native.py, loaded strictly.

Frame: TensoRF's Blender world is pvdal's normalised scene times ``WORLD_SCALE`` (pvdal's Blender
parser divides the world by 1.5), so the field renders TensoRF's images on the same cameras.
Marching: ``n_samples`` gives a step no longer than TensoRF's (``step_ratio`` x mean voxel);
``near`` is TensoRF's ``near_far[0]``; the occupancy grid marks exactly the cells where TensoRF's
density can be non-zero (inside ``aabb`` and the alpha mask), so skipping changes no pixel.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pvdal.fields.tensorf_native import TensoRFNativeField
from pvdal.io.checkpoint import LoadedField, file_sha256, strict_load
from pvdal.io.safe_load import safe_torch_load
from pvdal.render.march import default_step_size
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import CheckpointError

log = logging.getLogger("pvdal")

WORLD_SCALE = 1.5  # TensoRF's Blender world = pvdal scene x 1.5 (pvdal.data.blender: scale 1/1.5)
GRID_RESOLUTION = 128
GRID_THRESHOLD = 0.01
NEEDED = ("aabb", "gridSize", "density_n_comp", "appearance_n_comp", "app_dim", "density_shift",
          "distance_scale", "fea2denseAct", "shadingMode", "view_pe", "fea_pe", "featureC",
          "near_far", "step_ratio")
MASK_KEYS = ("alphaMask.shape", "alphaMask.mask", "alphaMask.aabb")


def read_tensorf(path: Path) -> dict:
    """The checkpoint dict, checked: VM split, MLP_Fea shading, every kwarg the field needs."""
    ckpt = safe_torch_load(path, "TensoRF checkpoint")
    bad = lambda problem, hint="": CheckpointError(str(path), problem, hint or  # noqa: E731
                                                   "is it a file written by TensoRF's save()?")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("kwargs"), dict) or not isinstance(
            ckpt.get("state_dict"), dict):
        raise bad("is not a TensoRF checkpoint (no kwargs / state_dict dicts)")
    kw = ckpt["kwargs"]
    missing = [k for k in NEEDED if k not in kw]
    if missing:
        raise bad(f"TensoRF kwargs lack {missing}")
    if kw["shadingMode"] != "MLP_Fea":
        raise bad(f"shadingMode {kw['shadingMode']!r} is not imported",
                  "pvdal imports TensoRF's default MLP_Fea shading only")
    if kw["fea2denseAct"] not in ("softplus", "relu"):
        raise bad(f"fea2denseAct {kw['fea2denseAct']!r} is not softplus or relu")
    present = [k in ckpt for k in MASK_KEYS]
    if any(present) and not all(present):
        raise bad(f"has a partial alpha mask (of {list(MASK_KEYS)} only "
                  f"{[k for k, p in zip(MASK_KEYS, present) if p]})")
    return ckpt


def _floats(v) -> list:
    return v.tolist() if isinstance(v, Tensor | np.ndarray) else list(v)


def field_args(kw: dict, mask_shape: list[int] | None, mask_aabb) -> dict:
    return {"aabb": _floats(kw["aabb"]), "grid_size": [int(g) for g in _floats(kw["gridSize"])],
            "density_n_comp": [int(c) for c in kw["density_n_comp"]],
            "appearance_n_comp": [int(c) for c in kw["appearance_n_comp"]],
            "app_dim": int(kw["app_dim"]), "density_shift": float(kw["density_shift"]),
            "distance_scale": float(kw["distance_scale"]), "fea2dense_act": kw["fea2denseAct"],
            "view_pe": int(kw["view_pe"]), "fea_pe": int(kw["fea_pe"]),
            "feature_c": int(kw["featureC"]), "alpha_mask_shape": mask_shape,
            "alpha_mask_aabb": None if mask_aabb is None else _floats(mask_aabb),
            "world_scale": WORLD_SCALE, "world_offset": [0.0, 0.0, 0.0]}


def alpha_volume(ckpt: dict) -> tuple[list[int] | None, Tensor | None]:
    """TensoRF's ``load()``: unpackbits, cut to the shape's size, reshape; as float 0/1."""
    if "alphaMask.mask" not in ckpt:
        return None, None
    shape = [int(s) for s in ckpt["alphaMask.shape"]]
    bits = np.unpackbits(np.asarray(ckpt["alphaMask.mask"], dtype=np.uint8))
    n = int(np.prod(shape))
    if bits.size < n:
        raise CheckpointError("alphaMask.mask", f"holds {bits.size} bits for shape {shape}",
                              "the TensoRF file is damaged")
    vol = torch.from_numpy(bits[:n].reshape(shape).astype(np.float32))
    return shape, vol.view(1, 1, *shape[-3:])


def step_samples(kw: dict) -> int:
    """Marching samples across pvdal's box diagonal whose step is at most TensoRF's stepSize."""
    aabb = torch.as_tensor(kw["aabb"], dtype=torch.float32).view(2, 3)
    units = (aabb[1] - aabb[0]) / (torch.tensor([float(g) for g in kw["gridSize"]]) - 1)
    step = float(units.mean()) * float(kw["step_ratio"])  # TensoRF's stepSize, world units
    return math.ceil(default_step_size(1) * WORLD_SCALE / step)


def _range_any(vol: Tensor, dim: int, lo: Tensor, hi: Tensor) -> Tensor:
    """out[..., j, ...] = any(vol[..., lo[j]:hi[j] + 1, ...]) along ``dim`` (empty when lo > hi)."""
    v = vol.movedim(dim, -1).float()
    c = torch.nn.functional.pad(v.cumsum(-1), (1, 0))
    hi1 = torch.maximum(hi + 1, lo)
    out = (c[..., hi1] - c[..., lo]) > 0.5
    return out.movedim(-1, dim)


@torch.no_grad()
def occupancy(field: TensoRFNativeField, n_samples: int, resolution: int = GRID_RESOLUTION
              ) -> OccupancyGrid:
    """A grid whose occupied cells are exactly those that may hold a point inside ``aabb`` with
    a non-zero alpha-mask value (conservative by a 1e-3 cell margin): elsewhere TensoRF's
    density is zero, so skipping those cells changes nothing."""
    R = resolution
    edges = torch.linspace(-1.0, 1.0, R + 1, dtype=torch.float64)
    pad = 1e-3 * 2.0 / R
    lo_w = (edges[:-1] - pad) * field.world_scale  # [R] world bounds of each cell, any axis
    hi_w = (edges[1:] + pad) * field.world_scale
    off, box = field.world_offset.double(), field.aabb.double()
    vol = field.alpha_volume[0, 0] > 0 if field.has_alpha_mask else torch.ones(1, 1, 1, dtype=bool)
    mbox = field.alpha_aabb.double()
    for axis in range(3):  # x, y, z; the volume is (Z, Y, X): axis a is dim 2 - a
        lo, hi = lo_w + off[axis], hi_w + off[axis]
        inside = (hi >= box[0, axis]) & (lo <= box[1, axis])
        n = vol.shape[2 - axis]
        if field.has_alpha_mask:
            scale = (n - 1) / (mbox[1, axis] - mbox[0, axis])
            g_lo = torch.floor((lo - mbox[0, axis]) * scale).long()
            g_hi = torch.floor((hi - mbox[0, axis]) * scale).long() + 1
        else:
            g_lo, g_hi = torch.zeros(R, dtype=torch.long), torch.zeros(R, dtype=torch.long)
        empty = ~inside | (g_lo > n - 1) | (g_hi < 0)
        g_lo, g_hi = g_lo.clamp(0, n - 1), g_hi.clamp(0, n - 1)
        g_hi = torch.where(empty, g_lo - 1, g_hi)
        vol = _range_any(vol, 2 - axis, g_lo, g_hi)
    occ = vol.permute(2, 1, 0).reshape(-1)  # (x, y, z) order, as OccupancyGrid.cell_index
    grid = OccupancyGrid(resolution=R, threshold=GRID_THRESHOLD)
    step = default_step_size(n_samples)
    grid.density.copy_(torch.where(occ, 2.0 * GRID_THRESHOLD / step, 0.0))
    grid.refresh(step)
    return grid


def import_tensorf(path: str | Path, key: str = "ckpt") -> LoadedField:
    p = Path(str(path)).expanduser()
    ckpt = read_tensorf(p)
    kw = ckpt["kwargs"]
    mask_shape, vol = alpha_volume(ckpt)
    args = field_args(kw, mask_shape, ckpt.get("alphaMask.aabb"))
    field = TensoRFNativeField(**args)
    state = dict(ckpt["state_dict"])
    state.update(aabb=field.aabb.new_tensor(args["aabb"]), world_offset=field.world_offset,
                 alpha_aabb=field.alpha_aabb.new_tensor(args["alpha_mask_aabb"] or args["aabb"]),
                 alpha_volume=vol if vol is not None else field.alpha_volume)
    strict_load(field, state, f"{p} (TensoRF state_dict)")
    field.eval()
    n_samples = step_samples(kw)
    grid = occupancy(field, n_samples)
    near, far = (float(v) for v in kw["near_far"])
    scene = SceneSpec(contraction=False, near=near / WORLD_SCALE, far=far / WORLD_SCALE)
    if (field.aabb.abs() > WORLD_SCALE + 1e-4).any():
        log.warning("import: TensoRF aabb %s reaches outside pvdal's box (+-%g world units); "
                    "pvdal samples only inside it", field.aabb.tolist(), WORLD_SCALE)
    if far <= 1.0:
        log.warning("import: near_far %s looks like an LLFF (NDC) run; pvdal imports TensoRF "
                    "files in their Blender world", [near, far])
    arch = {"name": "tensorf", "native": "tensorf", "n_samples": n_samples,
            "field": {"_target_": "pvdal.fields.tensorf_native.TensoRFNativeField", **args}}
    frame = {"tool": "tensorf", "world": "Blender world, unchanged (TensoRF's scene box +-1.5)",
             "world_from_scene": {"scale": WORLD_SCALE, "offset": [0.0, 0.0, 0.0]}}
    meta = {"format": "tensorf", "imported": {"format": "tensorf", "path": str(p)},
            "arch": arch, "field_extra": {}, "frame": frame,
            "grid": {"resolution": grid.resolution, "threshold": GRID_THRESHOLD},
            "scene": scene.as_dict(), "background": [1.0, 1.0, 1.0], "n_samples": n_samples,
            "tensorf_kwargs": {k: _floats(v) if isinstance(v, Tensor) else v
                               for k, v in kw.items()}}
    comp = f"{args['density_n_comp']}/{args['appearance_n_comp']}"
    log.info("import: TensoRF VM from %s: gridSize %s, components %s, app_dim %d, %s(x %+g) x "
             "%g, alpha mask %s, aabb %s; frame: Blender world = pvdal scene x %g; %d samples, "
             "%.1f%% of %d^3 cells occupied", p, args["grid_size"], comp, args["app_dim"],
             args["fea2dense_act"], args["density_shift"], args["distance_scale"],
             mask_shape[-3:] if mask_shape else None,
             [[round(v, 4) for v in r] for r in args["aabb"]], WORLD_SCALE, n_samples,
             100 * grid.occupancy_fraction(), grid.resolution)
    return LoadedField(field, grid, scene, torch.tensor(meta["background"]), n_samples, arch,
                       meta, str(p), file_sha256(p))
