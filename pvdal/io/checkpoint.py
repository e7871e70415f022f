"""Self-describing checkpoints: ``load_field(path)`` rebuilds a field with no other input.

``load_field`` also reads other tools' files (a TensoRF ``.th``, a pvdal safetensors export):
the format is detected from the content (pvdal/io/formats.py) and the file handed to its importer.

A Lightning checkpoint gets a ``pvdal`` entry (added in the module's ``on_save_checkpoint``):
pvdal's format version, the resolved arch config, the field's shape state (after upsampling or
pruning), the occupancy-grid settings, the scene (AABB, contraction), background and marching
settings, and where in the state dict the field and grid live. Loading is strict.

The data config stored with it (``pvdal.data``, written by train.py / distill.py through
``data_config``) holds ``world``: the similarity the dataset parser applied to its world
(``pvdal.data.frames.WorldFrame``); ``LoadedField.world`` returns it (None for files written
before it existed and for foreign formats, whose frame is in ``meta["frame"]``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf
from torch import Tensor

import pvdal
from pvdal.data.frames import WorldFrame
from pvdal.fields.base import RadianceField
from pvdal.io.atomic import atomic_save
from pvdal.io.formats import detect_format, import_foreign
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import UNIT_AABB, SceneSpec
from pvdal.utils.errors import CheckpointError

FORMAT_VERSION = 1
KEY = "pvdal"


def field_metadata(arch: Any, field: RadianceField, grid: OccupancyGrid, grid_cfg: dict,
                   scene: SceneSpec, background, n_samples: int, prefix: str = "field.",
                   grid_prefix: str = "grid.", world: WorldFrame | None = None) -> dict:
    arch = OmegaConf.to_container(arch, resolve=True) if OmegaConf.is_config(arch) else arch
    extra = {} if world is None else {"world": world.to_dict()}
    return {
        "format": FORMAT_VERSION,
        "pvdal_version": pvdal.__version__,
        "arch": arch,
        "field_extra": field.extra_state_for_checkpoint(),
        "grid": dict(grid_cfg),
        "scene": scene.as_dict(),
        "aabb": list(UNIT_AABB),
        "background": [float(v) for v in background],
        "n_samples": int(n_samples),
        "prefix": prefix,
        "grid_prefix": grid_prefix,
        **extra,
    }


def data_config(data_cfg: Any, world: WorldFrame | None) -> dict:
    """The data config a module stores in its checkpoints, with the parser's ``world`` record."""
    cfg = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) \
        else dict(data_cfg or {})
    if world is not None:
        cfg["world"] = world.to_dict()
    return cfg


def world_from_meta(meta: dict) -> WorldFrame | None:
    """The ``WorldFrame`` a checkpoint (or export header) records, None when it has none."""
    rec = meta.get("world") or (meta.get("data") or {}).get("world")
    return WorldFrame.from_dict(rec) if isinstance(rec, dict) else None


@dataclass
class LoadedField:
    field: RadianceField
    grid: OccupancyGrid
    scene: SceneSpec
    background: Tensor  # [3]
    n_samples: int
    arch: dict
    meta: dict
    path: str
    sha256: str
    world: WorldFrame | None = None  # the training data's frame (pvdal files that record it)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | Path, key: str = "ckpt") -> dict:
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise CheckpointError(str(p), "checkpoint file not found", f"check {key}=PATH")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise CheckpointError(str(p), f"cannot be read as a checkpoint ({type(e).__name__})",
                              "the file is truncated or not a torch checkpoint; re-run training"
                              ) from e
    if not isinstance(ckpt, dict) or KEY not in ckpt:
        raise CheckpointError(str(p), "is not a pvdal checkpoint (no 'pvdal' metadata)",
                              "use checkpoints/last.ckpt of a train.py or distill.py run")
    meta = ckpt[KEY]
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(str(p), f"was written by pvdal {meta.get('pvdal_version')} "
                              f"(format {meta.get('format')}); this pvdal {pvdal.__version__} "
                              f"reads format {FORMAT_VERSION}",
                              "re-export it with a matching pvdal version")
    return ckpt


def _sub_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def canonical_state(module: torch.nn.Module, state: dict) -> dict:
    """``state`` with backend-specific layouts renamed to the canonical ones (a tcnn-trained hash
    grid's flat ``tcnn.params`` -> ``params`` [N, F]), so either backend's file loads strictly."""
    state = dict(state)
    for name, sub in module.named_modules():
        fix = getattr(sub, "canonicalize_state", None)
        if callable(fix):
            fix(state, f"{name}." if name else "")
    return state


def strict_load(module: torch.nn.Module, state: dict, what: str) -> None:
    state = canonical_state(module, state)
    own = set(module.state_dict())
    missing, unexpected = own - set(state), set(state) - own
    if missing or unexpected:
        raise CheckpointError(what, f"state does not match the architecture: missing "
                              f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}",
                              "the checkpoint was made by another architecture or version")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(what, f"tensor shapes do not match ({str(e).splitlines()[-1]})",
                              "the arch config in the file disagrees with its weights") from e


def load_field(path: str | Path, key: str = "ckpt") -> LoadedField:
    """Rebuild field + occupancy grid + scene from a pvdal checkpoint (strict), or from any
    other format pvdal reads (pvdal/io/formats.py: told apart by content, not by name)."""
    fmt = detect_format(path, key)
    if fmt != "pvdal":
        return import_foreign(fmt, path, key)
    ckpt = read_checkpoint(path, key)
    meta = ckpt[KEY]
    field = instantiate(meta["arch"]["field"], _convert_="all")
    field.prepare_load(meta.get("field_extra", {}))
    state = ckpt["state_dict"]
    strict_load(field, _sub_state(state, meta["prefix"]), f"{path} (field)")
    grid = OccupancyGrid(**meta["grid"])
    strict_load(grid, _sub_state(state, meta["grid_prefix"]), f"{path} (occupancy grid)")
    field.eval()
    return LoadedField(field, grid, SceneSpec(**meta["scene"]), torch.tensor(meta["background"]),
                       int(meta["n_samples"]), meta["arch"], meta, str(path),
                       file_sha256(path), world_from_meta(meta))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temp file and renames it into place."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_save(path, lambda f: torch.save(checkpoint, f))
