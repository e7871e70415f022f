"""nerfstudio's ``instant-ngp`` method (``nerfstudio/models/instant_ngp.py``, 1.1.5): its field is
a ``NerfactoField`` built with the field's own defaults, and a nerfacc ``OccGridEstimator``.

* Field (``NGPModel.populate_modules``): ``NerfactoField(aabb, appearance_embedding_dim=0 if
  use_appearance_embedding else 32, num_images, log2_hashmap_size, max_res,
  spatial_distortion=L-inf contraction unless disable_scene_contraction)``; everything else is
  NerfactoField's default: 16 levels x 2 features, base 16, MLPs 64 wide, ``average_init_density``
  1, ``use_average_appearance_embedding`` False (zeros at inference), ``implementation`` tcnn
  (torch modules when tinycudann is missing; the checkpoint's keys tell which).
* ``_model.occupancy_grid.{resolution [3], aabbs [levels, 6], occs, binaries [levels, rx, ry,
  rz]}`` (nerfacc 0.5 ``OccGridEstimator``, nerfstudio frame; cell (i, j, k) of level l spans
  ``aabbs[l]`` split ``resolution`` ways; a sample is kept in the first level whose box holds
  it, if that cell is occupied). It seeds pvdal's occupancy grid: a pvdal cell stays occupied
  only if some point of it (a 4^3 lattice with its corners) lies in an occupied nerfacc cell.
"""

from __future__ import annotations

import torch

from pvdal.render.occupancy import OccupancyGrid

FIELD_DEFAULTS = {"num_levels": 16, "base_res": 16, "features_per_level": 2, "hidden_dim": 64,
                  "hidden_dim_color": 64, "use_average_appearance_embedding": False,
                  "average_init_density": 1.0}
SUB = 4  # lattice points per axis and pvdal cell


def is_ngp(tag: str) -> bool:
    return tag.endswith("InstantNGPModelConfig")


def model_fields(model: dict, layout: str) -> dict:
    """The instant-ngp config's fields as the nerfacto reader expects them."""
    out = {**FIELD_DEFAULTS, **model}
    use_app = not bool(model.get("use_appearance_embedding", False))  # nerfstudio's inversion
    out.update(appearance_embed_dim=32, use_appearance_embedding=use_app, implementation=layout)
    return out


def occ_state(pipe: dict) -> dict | None:
    for prefix in ("_model.module.occupancy_grid.", "_model.occupancy_grid."):
        st = {k[len(prefix):]: v for k, v in pipe.items() if k.startswith(prefix)}
        if "binaries" in st and "aabbs" in st:
            return st
    return None


@torch.no_grad()
def nerfacc_sampled(p: torch.Tensor, aabbs: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Would nerfacc keep a sample at nerfstudio-frame points ``p`` [M, 3]."""
    res = torch.tensor(bins.shape[1:], dtype=torch.long)
    keep = torch.zeros(p.shape[0], dtype=torch.bool)
    done = torch.zeros_like(keep)
    for lvl in range(bins.shape[0]):
        lo, hi = aabbs[lvl, :3], aabbs[lvl, 3:]
        inside = ((p >= lo) & (p <= hi)).all(dim=-1) & ~done
        ijk = ((p - lo) / (hi - lo) * res).floor().long()
        ijk = torch.minimum(ijk.clamp_min(0), res - 1)
        keep |= inside & bins[lvl, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        done |= inside
    return keep


@torch.no_grad()
def seed_grid(grid: OccupancyGrid, to_ns, occ: dict) -> float:
    """Empty the pvdal cells nerfacc's grid skips entirely; returns the fraction emptied."""
    bins, aabbs = occ["binaries"].bool().cpu(), occ["aabbs"].float().cpu().view(-1, 6)
    centers = grid.cell_centers().cpu()
    half = 1.0 / grid.resolution
    keep = torch.zeros(centers.shape[0], dtype=torch.bool)
    steps = torch.linspace(-half, half, SUB)
    for dx in steps:
        for dy in steps:
            for dz in steps:
                pts = centers + torch.stack([dx, dy, dz])
                keep |= nerfacc_sampled(to_ns(pts), aabbs, bins)
    was = grid.density > 0
    grid.density.copy_(torch.where(keep.to(grid.density.device), grid.density,
                                   torch.zeros_like(grid.density)))
    grid.refresh()
    return float((was & ~keep.to(was.device)).float().mean())
