"""Exports of a field: a PLY mesh of its density, and safetensors + a JSON architecture header.

safetensors layout (``save_safetensors``): tensors ``field.<name>`` (the field's state dict) and
``grid.<name>`` (occupancy grid: ``density``, ``step_size``); the header JSON is stored both in
the file's metadata (key ``pvdal``) and next to it (``<name>.json``) for tools that only read
JSON. It is the checkpoint's metadata minus tensors: arch config, ``field_extra``, scene, grid
config, background, n_samples, pvdal version, the data config with its ``world`` frame.
``load_safetensors`` rebuilds an identical field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from torch import Tensor

import pvdal
from pvdal.io.atomic import atomic_open, atomic_write_bytes, atomic_write_json
from pvdal.io.checkpoint import LoadedField, file_sha256, strict_load, world_from_meta
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import CheckpointError, ConfigError

CONTAINER = "pvdal-safetensors"


# --- mesh -------------------------------------------------------------------------------------
@torch.no_grad()
def density_volume(density_fn: Callable[[Tensor], Tensor], resolution: int,
                   device: torch.device | str = "cpu", chunk: int = 65536) -> np.ndarray:
    """Activated density on a ``resolution``^3 lattice spanning [-1, 1]^3 (corners included);
    ``vol[i, j, k]`` is the density at (x_i, y_j, z_k)."""
    lin = torch.linspace(-1.0, 1.0, resolution, device=device)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    vals = torch.cat([density_fn(c).float().reshape(-1) for c in pts.split(chunk)])
    return vals.view(resolution, resolution, resolution).cpu().numpy()


def marching_cubes(vol: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface ``vol == threshold`` -> vertices [V, 3] in [-1, 1]^3, faces [F, 3] wound so
    normals point out of the dense region (towards lower density)."""
    import mcubes

    lo, hi = float(vol.min()), float(vol.max())
    if not lo < threshold < hi:
        raise ConfigError("threshold", f"{threshold} gives no surface: the density lies in "
                          f"[{lo:.4g}, {hi:.4g}]", "pass threshold=<a value inside that range>")
    verts, faces = mcubes.marching_cubes(vol.astype(np.float64), float(threshold))
    verts = (verts * (2.0 / (vol.shape[0] - 1)) - 1.0).astype(np.float32)
    faces = faces.astype(np.int64)
    if len(faces) and outward_fraction(vol, verts, faces) < 0.5:
        faces = faces[:, ::-1].copy()  # normals pointed into the dense side: flip the winding
    return verts, faces


def outward_fraction(vol: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> float:
    """Share of faces whose normal points towards lower density (trilinear probes one voxel
    either side of each face centre)."""
    from scipy.ndimage import map_coordinates

    scale = 0.5 * (vol.shape[0] - 1)
    c, n = verts[faces].mean(1), face_normals(verts, faces)
    probe = lambda x: map_coordinates(vol, ((x + 1.0) * scale).T, order=1, mode="nearest")
    h = 1.0 / scale
    return float(np.mean(probe(c + h * n) < probe(c - h * n)))


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    v = verts[faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    v = verts[faces]
    fn = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])  # area-weighted
    out = np.zeros_like(verts)
    for k in range(3):
        np.add.at(out, faces[:, k], fn)
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


@torch.no_grad()
def vertex_colors(field: Any, verts: np.ndarray, faces: np.ndarray,
                  device: torch.device | str = "cpu", chunk: int = 65536) -> np.ndarray:
    """uint8 RGB [V, 3]: the field's colour seen from outside (view direction = -normal)."""
    x = torch.from_numpy(verts).to(device)
    d = -torch.from_numpy(vertex_normals(verts, faces)).to(device)
    rgb = torch.cat([field(xc, dc).rgb for xc, dc in zip(x.split(chunk), d.split(chunk))])
    return (rgb.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def write_ply(path: str | Path, verts: np.ndarray, faces: np.ndarray,
              colors: np.ndarray | None = None, binary: bool = True) -> None:
    """Triangle mesh -> PLY (binary little-endian or ASCII), written atomically."""
    props = ["property float x", "property float y", "property float z"]
    if colors is not None:
        props += ["property uchar red", "property uchar green", "property uchar blue"]
    head = "\n".join(["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
                      "comment pvdal " + pvdal.__version__, f"element vertex {len(verts)}",
                      *props, f"element face {len(faces)}",
                      "property list uchar int vertex_indices", "end_header"]) + "\n"
    if binary:
        vt = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
        vt += [("red", "u1"), ("green", "u1"), ("blue", "u1")] if colors is not None else []
        v = np.empty(len(verts), dtype=vt)
        for i, a in enumerate("xyz"):
            v[a] = verts[:, i]
        if colors is not None:
            for i, a in enumerate(("red", "green", "blue")):
                v[a] = colors[:, i]
        f = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        f["n"], f["i"] = 3, faces
        atomic_write_bytes(path, head.encode() + v.tobytes() + f.tobytes())
        return
    with atomic_open(path, "w") as fh:
        fh.write(head)
        for i, p in enumerate(verts):
            c = "" if colors is None else " " + " ".join(str(int(x)) for x in colors[i])
            fh.write(f"{p[0]:.6g} {p[1]:.6g} {p[2]:.6g}{c}\n")
        fh.writelines(f"3 {a} {b} {c}\n" for a, b, c in faces)


# --- safetensors ------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """``obj`` with tensors/arrays dropped (dict entries) and tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()
                if not isinstance(v, Tensor | np.ndarray)}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj if isinstance(obj, str | int | float | bool | type(None)) else str(obj)


def export_header(lf: LoadedField) -> dict:
    head = jsonable(lf.meta)
    head.update(container=CONTAINER, prefix="field.", grid_prefix="grid.",
                exported_by=pvdal.__version__, source={"path": lf.path, "sha256": lf.sha256})
    return head


def save_safetensors(lf: LoadedField, path: str | Path) -> tuple[Path, Path]:
    """Write ``path`` (.safetensors) and its JSON header next to it; returns both paths."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {f"{p}{k}": v.detach().cpu().contiguous().clone()
               for p, mod in (("field.", lf.field), ("grid.", lf.grid))
               for k, v in mod.state_dict().items()}
    head = export_header(lf)
    atomic_write_bytes(path, save(tensors, metadata={"pvdal": json.dumps(head)}))
    side = path.with_suffix(".json")
    atomic_write_json(side, head)
    return path, side


def load_safetensors(path: str | Path, key: str = "path") -> LoadedField:
    """Rebuild field + occupancy grid + scene from ``save_safetensors`` output (strict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise CheckpointError(str(p), "safetensors file not found", f"check {key}=PATH")
    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(p))
        head = json.loads(meta["pvdal"]) if "pvdal" in meta else json.loads(
            p.with_suffix(".json").read_text())
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(str(p), f"is not a pvdal safetensors export ({type(e).__name__})",
                              "export it with: python export.py ckpt=PATH format=safetensors"
                              ) from e
    if head.get("container") != CONTAINER:
        raise CheckpointError(str(p), "has no pvdal header", "export it with export.py")
    field = instantiate(head["arch"]["field"], _convert_="all")
    field.prepare_load(head.get("field_extra", {}))
    sub = lambda pre: {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
    strict_load(field, sub(head["prefix"]), f"{p} (field)")
    grid = OccupancyGrid(**head["grid"])
    strict_load(grid, sub(head["grid_prefix"]), f"{p} (occupancy grid)")
    field.eval()
    return LoadedField(field, grid, SceneSpec(**head["scene"]), torch.tensor(head["background"]),
                       int(head["n_samples"]), head["arch"], head, str(p), file_sha256(p),
                       world_from_meta(head))
