"""A nerfstudio run (nerfacto or instant-ngp, torch or tcnn implementation) -> a pvdal
``LoadedField`` holding nerfstudio's own field (pvdal/fields/nerfacto_native.py; tcnn layout:
nerfstudio_tcnn.py; the instant-ngp method's field and occupancy grid: nerfstudio_ngp.py).

What is read, from the run folder (the path given may be the folder, its ``config.yml`` or a
``nerfstudio_models/step-*.ckpt``; without a .ckpt the highest step is taken, as nerfstudio does):

* ``config.yml``: YAML with python tags, read by ``PermissiveLoader`` (a ``yaml.SafeLoader`` that
  turns every ``!!python/...`` node into a plain dict / list / string and runs nothing); fields are
  read by name from ``pipeline.model`` and ``pipeline.datamanager.dataparser``.
* ``nerfstudio_models/step-*.ckpt``: ``torch.load(weights_only=True)`` + numpy's array types
  (pvdal/io/safe_load.py); the ``_model.field.*`` tensors (``_model.module.`` under DDP). The
  proposal networks are not needed: pvdal marches with its own occupancy grid, built here from the
  imported density.
* ``dataparser_transforms.json``: ``{transform: 3x4, scale}``, data frame -> nerfstudio frame.

Frame: pvdal's Blender parser maps the data world by ``1 / WORLD_SCALE`` into its box, so a pvdal
point x is the data point ``WORLD_SCALE * x`` and nerfstudio's point ``scale * (T[:, :3] @
(WORLD_SCALE * x) + T[:, 3])`` (times the Blender dataparser's own ``scale_factor``, which its
transforms file leaves out). Densities are per pvdal unit (times ``WORLD_SCALE * scale``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import torch
import yaml

from pvdal.fields.nerfacto_native import NerfactoNativeField
from pvdal.io.checkpoint import LoadedField, file_sha256, strict_load
from pvdal.io.importers.nerfstudio_ngp import is_ngp, model_fields, occ_state, seed_grid
from pvdal.io.importers.nerfstudio_tcnn import implementation_of, tcnn_state
from pvdal.io.safe_load import safe_torch_load
from pvdal.render.march import default_step_size
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import CheckpointError

log = logging.getLogger("pvdal")

WORLD_SCALE = 1.5  # the data world = pvdal scene x 1.5 (pvdal.data.blender: scale 1/1.5)
GRID_RESOLUTION = 64
GRID_THRESHOLD = 1e-4  # on opacity density * step, at cell centres, then dilated by one cell
N_SAMPLES = 512
NEEDED = ("num_levels", "base_res", "max_res", "log2_hashmap_size", "features_per_level",
          "hidden_dim", "hidden_dim_color", "appearance_embed_dim", "use_appearance_embedding",
          "use_average_appearance_embedding", "implementation", "disable_scene_contraction",
          "background_color")
NS_HEAD = b"!!python/object:nerfstudio."
BACKGROUNDS = {"white": [1.0, 1.0, 1.0], "black": [0.0, 0.0, 0.0]}


class PermissiveLoader(yaml.SafeLoader):
    """SafeLoader that reads nerfstudio's python-tagged YAML as plain data: a tagged mapping
    becomes a dict (with its tag under ``__tag__``), a tagged sequence a list, a tagged scalar
    (``!!python/name:...``) the tag's name. Nothing is imported or called."""


def _tagged(loader: PermissiveLoader, suffix: str, node: yaml.Node):
    name = suffix.split(":", 1)[-1]
    if isinstance(node, yaml.MappingNode):
        out = loader.construct_mapping(node, deep=True)
        return {"__tag__": name, **out}
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return name


PermissiveLoader.add_multi_constructor("tag:yaml.org,2002:python/", _tagged)
PermissiveLoader.add_multi_constructor("!", _tagged)


def is_run(p: Path) -> bool:
    """``p`` is a nerfstudio run folder or its config.yml (nerfstudio's python-tagged YAML)."""
    cfg = p / "config.yml" if p.is_dir() else p
    try:
        with open(cfg, "rb") as f:
            return f.read(len(NS_HEAD)) == NS_HEAD
    except OSError:
        return False


def read_config(path: Path) -> dict:
    try:
        cfg = yaml.load(path.read_text(), Loader=PermissiveLoader)  # noqa: S506 (SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(str(path), f"cannot be read as a nerfstudio config.yml "
                              f"({type(e).__name__})", "the file is damaged") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("pipeline"), dict) or not \
            isinstance(cfg["pipeline"].get("model"), dict):
        raise CheckpointError(str(path), "is not a nerfstudio config.yml (no pipeline.model)",
                              "pass the run folder written by ns-train")
    return cfg


def run_files(path: Path) -> tuple[Path, Path, Path]:
    """(config.yml, checkpoint, dataparser_transforms.json) of the run ``path`` points into."""
    if path.is_dir():
        run = path
    elif path.suffix in (".yml", ".yaml"):
        run = path.parent
    else:
        run = path.parent.parent if path.parent.name == "nerfstudio_models" else path.parent
    config = run / "config.yml"
    if path.is_file() and path.suffix not in (".yml", ".yaml"):
        ckpt = path
    else:
        found = sorted(run.glob("nerfstudio_models/step-*.ckpt"),
                       key=lambda p: int(re.sub(r"\D", "", p.stem) or -1))
        if not found:
            raise CheckpointError(str(run), "nerfstudio run holds no nerfstudio_models/step-"
                                  "*.ckpt", "pass a run folder that ns-train saved a "
                                  "checkpoint into")
        ckpt = found[-1]
    for f, what in ((config, "config.yml"), (run / "dataparser_transforms.json",
                                             "dataparser_transforms.json")):
        if not f.is_file():
            raise CheckpointError(str(f), f"nerfstudio run lacks its {what}",
                                  "keep config.yml and dataparser_transforms.json beside "
                                  "nerfstudio_models/")
    return config, ckpt, run / "dataparser_transforms.json"


def ns_from_scene(transforms: Path, dataparser: dict) -> tuple[list[list[float]], dict]:
    """The 3x4 map pvdal scene -> nerfstudio frame, and what it was made of."""
    try:
        tf = json.loads(transforms.read_text())
        t = np.asarray(tf["transform"], dtype=np.float64).reshape(3, 4)
        scale = float(tf["scale"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(str(transforms), "is not nerfstudio's {transform: 3x4, scale} "
                              f"({type(e).__name__})", "the run folder is damaged") from e
    extra = 1.0
    if "blender_dataparser" in str(dataparser.get("__tag__", "")):
        extra = float(dataparser.get("scale_factor", 1.0))  # not in the transforms file
    m = np.concatenate([t[:, :3] * WORLD_SCALE, t[:, 3:]], axis=1) * scale * extra
    return m.tolist(), {"transform": t.tolist(), "scale": scale, "dataparser_scale_factor": extra,
                        "world_scale": WORLD_SCALE}


def field_args(model: dict, state: dict, m: list[list[float]], src: str, impl: str) -> dict:
    missing = [k for k in NEEDED if k not in model]
    if missing:
        raise CheckpointError(src, f"nerfacto config lacks {missing}",
                              "is it a config.yml written by ns-train nerfacto?")
    emb = state.get("embedding_appearance.embedding.weight")
    use_app = bool(model["use_appearance_embedding"])
    return {"num_images": int(emb.shape[0]) if emb is not None else 1,
            "num_levels": int(model["num_levels"]), "base_res": int(model["base_res"]),
            "max_res": int(model["max_res"]), "log2_hashmap_size": int(model["log2_hashmap_size"]),
            "features_per_level": int(model["features_per_level"]),
            "hidden_dim": int(model["hidden_dim"]),
            "hidden_dim_color": int(model["hidden_dim_color"]),
            "appearance_embedding_dim": int(model["appearance_embed_dim"]) if use_app else 0,
            "use_average_appearance_embedding": bool(model["use_average_appearance_embedding"]),
            "average_init_density": float(model.get("average_init_density", 1.0)),
            "contraction": not bool(model["disable_scene_contraction"]),
            "aabb": state["aabb"].tolist() if "aabb" in state else None, "ns_from_scene": m,
            "implementation": impl}


def field_state(ckpt, src: str) -> dict:
    pipe = ckpt.get("pipeline") if isinstance(ckpt, dict) else None
    if not isinstance(pipe, dict):
        raise CheckpointError(src, "is not a nerfstudio checkpoint (no 'pipeline' state)",
                              "pass nerfstudio_models/step-*.ckpt of an ns-train run")
    for prefix in ("_model.module.field.", "_model.field."):
        state = {k[len(prefix):]: v for k, v in pipe.items() if k.startswith(prefix)}
        if state:
            # nerfacto's optional heads that never reach density or colour
            return {k: v for k, v in state.items() if not k.startswith(
                ("mlp_pred_normals.", "field_head_pred_normals.", "mlp_transient.",
                 "embedding_transient.", "field_head_transient", "mlp_semantics.",
                 "field_head_semantics."))}
    raise CheckpointError(src, "nerfstudio checkpoint holds no _model.field.* tensors",
                          "pass a nerfacto run's checkpoint")


@torch.no_grad()
def occupancy(field: NerfactoNativeField, n_samples: int, resolution: int = GRID_RESOLUTION
              ) -> OccupancyGrid:
    """Density at every cell centre, thresholded at a low opacity and dilated by one cell."""
    grid = OccupancyGrid(resolution=resolution, threshold=GRID_THRESHOLD)
    step = default_step_size(n_samples)
    x = grid.cell_centers()
    dens = torch.cat([field.density(c) for c in x.split(1 << 16)])
    occ = (dens * step >= GRID_THRESHOLD).float().view(1, 1, *(resolution,) * 3)
    occ = torch.nn.functional.max_pool3d(occ, 3, stride=1, padding=1).view(-1) > 0
    grid.density.copy_(torch.where(occ, 2.0 * GRID_THRESHOLD / step, 0.0))
    grid.refresh(step)
    return grid


def import_nerfstudio(path: str | Path, key: str = "ckpt") -> LoadedField:
    p = Path(str(path)).expanduser()
    config, ckpt_path, transforms = run_files(p)
    cfg = read_config(config)
    model = cfg["pipeline"]["model"]
    tag, ngp = str(model.get("__tag__", "")), is_ngp(str(model.get("__tag__", "")))
    impl = model.get("implementation", "tcnn")  # instant-ngp: NerfactoField's default
    if not (tag.endswith("NerfactoModelConfig") or ngp):
        raise CheckpointError(str(config), f"is a nerfstudio run of {cfg.get('method_name')!r} "
                              f"({tag or 'no model tag'}); pvdal imports nerfacto and "
                              "instant-ngp runs only")
    if impl not in ("torch", "tcnn"):
        raise CheckpointError(str(config), f"is a nerfacto run with implementation {impl!r}; "
                              "pvdal imports the torch and tcnn implementations")
    if model.get("predict_normals"):
        log.info("import: nerfacto's predicted-normal head is not imported (no effect on colour)")
    raw = safe_torch_load(ckpt_path, "nerfstudio checkpoint")
    state = field_state(raw, str(ckpt_path))
    layout = implementation_of(state)  # nerfstudio falls back to torch modules without tcnn
    if layout != impl:
        log.info("import: config.yml says implementation %s, the checkpoint holds the %s layout "
                 "(nerfstudio builds torch modules when tinycudann is missing); reading %s", impl,
                 layout, layout)
    dataparser = cfg["pipeline"].get("datamanager", {}).get("dataparser", {}) or {}
    m, frame_parts = ns_from_scene(transforms, dataparser)
    method = "instant-ngp" if ngp else "nerfacto"
    if ngp:
        model = model_fields(model, layout)
    args = field_args(model, state, m, str(config), layout)
    try:
        field = NerfactoNativeField(**args)
    except ValueError as e:
        raise CheckpointError(str(config), f"nerfacto field not imported: {e}") from e
    if layout == "tcnn":
        state = tcnn_state(field, state, str(ckpt_path))
    state.update(ns_from_scene=field.ns_from_scene)
    strict_load(field, state, f"{ckpt_path} (nerfacto field)")
    field.eval()
    grid = occupancy(field, N_SAMPLES)
    occ = occ_state(raw["pipeline"]) if ngp else None
    if occ is not None:  # where nerfacc's grid skips, nerfstudio never samples
        emptied = seed_grid(grid, field.to_ns, occ)
        log.info("import: nerfacc occupancy grid %s x %d levels seeds pvdal's: %.1f%% of cells "
                 "emptied", list(occ["binaries"].shape[1:]), occ["binaries"].shape[0],
                 100 * emptied)
    near = float(model.get("near_plane", 0.05)) / field.length_scale
    if not math.isfinite(near) or near < 0:
        raise CheckpointError(str(config), f"near_plane {model.get('near_plane')!r} is not a "
                              "finite non-negative distance", "the run's config.yml is damaged")
    scene = SceneSpec(contraction=False, near=near, far=1e3)
    bg_name = str(model["background_color"])
    background = BACKGROUNDS.get(bg_name, BACKGROUNDS["white"])
    arch = {"name": "nerfacto", "native": "nerfstudio", "n_samples": N_SAMPLES,
            "field": {"_target_": "pvdal.fields.nerfacto_native.NerfactoNativeField", **args}}
    frame = {"tool": "nerfstudio", "world": "nerfstudio frame = dataparser transform of the data "
             "world (= pvdal scene x 1.5)", "ns_from_scene": m, **frame_parts}
    step = int(re.sub(r"\D", "", ckpt_path.stem) or -1)
    meta = {"format": "nerfstudio", "imported": {"format": "nerfstudio", "path": str(p),
                                                 "config": str(config), "ckpt": str(ckpt_path)},
            "arch": arch, "field_extra": {}, "frame": frame,
            "grid": {"resolution": grid.resolution, "threshold": GRID_THRESHOLD},
            "scene": scene.as_dict(), "background": background, "n_samples": N_SAMPLES,
            "nerfstudio": {"method": cfg.get("method_name"), "step": step,
                           "background_color": bg_name, "implementation": layout,
                           "occupancy_grid": occ is not None}}
    bg_note = "" if bg_name in BACKGROUNDS else f" (nerfstudio's {bg_name!r} -> white)"
    log.info("import: nerfstudio %s (%s) from %s, step %d: hash %dx%d 2^%d res "
             "%d..%d, MLPs %d/%d wide, appearance %d (%s), density %g*exp, contraction %s; frame: "
             "nerfstudio = %g x (T @ (%g x pvdal scene)) with T from %s; background %s%s; %d "
             "samples, %.1f%% of %d^3 cells occupied", method, layout, ckpt_path, step,
             args["num_levels"], args["features_per_level"], args["log2_hashmap_size"],
             args["base_res"], args["max_res"], args["hidden_dim"], args["hidden_dim_color"],
             args["appearance_embedding_dim"], "mean" if args[
                 "use_average_appearance_embedding"] else "zeros", args["average_init_density"],
             "L-inf" if args["contraction"] else "off", frame_parts["scale"] * frame_parts[
                 "dataparser_scale_factor"], WORLD_SCALE, transforms.name, background, bg_note,
             N_SAMPLES, 100 * grid.occupancy_fraction(), grid.resolution)
    return LoadedField(field, grid, scene, torch.tensor(background), N_SAMPLES, arch, meta,
                       str(p), file_sha256(ckpt_path))
