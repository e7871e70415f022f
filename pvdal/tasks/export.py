"""``export.py``: a checkpoint's field as a PLY mesh (marching cubes of its density), as
safetensors + a JSON architecture header (reload: ``pvdal.io.export.load_safetensors``), or in
another tool's own format (``tensorf|svox2|ingp``: pvdal/io/native_export.py, exact for fields
computed under that tool's conventions, refused otherwise)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from pvdal.io.checkpoint import LoadedField
from pvdal.io.export import (
    density_volume,
    marching_cubes,
    save_safetensors,
    vertex_colors,
    write_ply,
)
from pvdal.io.native_export import NATIVE, SUFFIX, check_native, export_native
from pvdal.tasks.common import check_ranges, output_dir
from pvdal.tasks.evaluate import load_checkpoint, pick_device
from pvdal.utils.errors import ConfigError

log = logging.getLogger("pvdal")

EXPORT_RANGES = {"resolution": (2, None), "threshold": (0.0, None), "chunk": (1, None)}


def masked_density(lf: LoadedField, use_grid: bool):
    """The field's activated density, zeroed in cells the occupancy grid marks empty."""
    if not use_grid:
        return lf.field.density
    return lambda x: lf.field.density(x) * lf.grid.occupied(x).float()


def export_mesh(cfg: DictConfig, lf: LoadedField, device: torch.device, path: Path) -> dict:
    res, thr, chunk = int(cfg.resolution), float(cfg.threshold), int(cfg.chunk)
    vol = density_volume(masked_density(lf, bool(cfg.use_grid)), res, device, chunk)
    verts, faces = marching_cubes(vol, thr)
    colors = vertex_colors(lf.field, verts, faces, device, chunk) if cfg.color else None
    ply = str(cfg.get("ply", "binary"))
    if ply not in ("binary", "ascii"):
        raise ConfigError("ply", f"unknown PLY encoding {ply!r}", "pass ply=binary or ply=ascii")
    write_ply(path, verts, faces, colors, binary=ply == "binary")
    if lf.scene.contraction:
        log.warning("the scene is contracted: the mesh is in contracted field coordinates")
    log.info("mesh: %d vertices, %d faces at density %g (%d^3 samples) -> %s", len(verts),
             len(faces), thr, res, path)
    return {"mesh": str(path), "vertices": len(verts), "faces": len(faces)}


def run(cfg: DictConfig) -> dict:
    check_ranges(cfg, EXPORT_RANGES)
    fmt = str(cfg.get("format"))
    if fmt not in ("mesh", "safetensors", *NATIVE):
        raise ConfigError("format", f"unknown export format {fmt!r}",
                          "pass format=mesh|safetensors|tensorf|svox2|ingp")
    device = pick_device(cfg)
    lf = load_checkpoint(cfg, device)
    out = output_dir(cfg)
    if fmt == "mesh":
        path = Path(cfg.output) if cfg.get("output") else out / "mesh.ply"
        return export_mesh(cfg, lf, device, path)
    if fmt in NATIVE:
        check_native(lf, fmt)
        path = Path(cfg.output) if cfg.get("output") else out / f"field{SUFFIX[fmt]}"
        res = export_native(lf, fmt, path)
        log.info("wrote %s (%s format, %d bytes)", path, fmt, res["bytes"])
        return res
    path = Path(cfg.output) if cfg.get("output") else out / "field.safetensors"
    st, side = save_safetensors(lf, path)
    log.info("wrote %s and %s", st, side)
    return {"safetensors": str(st), "header": str(side)}
