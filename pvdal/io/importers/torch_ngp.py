"""torch-ngp ``.pth`` -> a ``LoadedField`` holding torch-ngp's own NeRF network
(pvdal/fields/torch_ngp_native.py).

What is read (torch-ngp's ``Trainer.save_checkpoint``): ``{epoch, global_step, stats, model,
[mean_count, mean_density, optimizer, lr_scheduler, scaler, ema]}``; from ``model`` (its
``NeRFNetwork`` state dict, the pure-CUDA ``network.py`` variant): ``encoder.embeddings`` [rows, C],
``encoder.offsets`` [L + 1], ``sigma_net.*.weight``, ``color_net.*.weight``, ``aabb_train``,
``aabb_infer`` and ``density_bitfield`` (absent: nothing is skipped). Loaded with
``torch.load(weights_only=True)`` (pvdal/io/safe_load.py). The encoder's options are not stored:
torch-ngp's defaults (base resolution 16, finest resolution ``2048 * bound``) are assumed and
checked against ``encoder.offsets``; a file made with other options is refused.

Frame: torch-ngp's ``--scale`` / ``--offset`` are command-line values, not in the file. They are
read from a sidecar ``<file>.frame.json`` (``{"scale": 0.8, "offset": [0, 0, 0]}``) when there is
one, else torch-ngp's defaults (0.33, [0, 0, 0]) are used and the log line says so. NeRF (Blender)
world = pvdal scene x 1.5. Marching: a step no longer than torch-ngp's ``2 sqrt(3) / 1024``; the
occupancy grid covers every occupied bitfield cell of any cascade, so skipping changes no pixel.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from pvdal.fields.ingp_native import CYCLE, GRID_SIZE, morton3d
from pvdal.fields.torch_ngp_native import TorchNgpNativeField
from pvdal.io.checkpoint import LoadedField, file_sha256, strict_load
from pvdal.io.importers.tensorf import _range_any
from pvdal.io.safe_load import safe_torch_load
from pvdal.render.march import default_step_size
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import CheckpointError

log = logging.getLogger("pvdal")

WORLD_SCALE = 1.5  # NeRF (Blender) world = pvdal scene x 1.5
DEFAULT_SCALE, DEFAULT_OFFSET = 0.33, [0.0, 0.0, 0.0]  # torch-ngp's --scale / --offset defaults
BASE_RESOLUTION = 16  # torch-ngp's get_encoder("hashgrid") default
DT_MIN = 2 * math.sqrt(3.0) / 1024  # torch-ngp's smallest march step (max_steps 1024)
GRID_THRESHOLD = 0.01


def torch_ngp_offsets(n_levels: int, bound: float, log2_T: int, base: int = BASE_RESOLUTION
                      ) -> tuple[list[int], float]:
    """torch-ngp's GridEncoder offsets and per_level_scale for its defaults."""
    pls = float(np.exp2(np.log2(2048 * bound / base) / (n_levels - 1)))
    offsets, off = [], 0
    for i in range(n_levels):
        res = int(np.ceil(base * pls**i))
        n = min(2**log2_T, (res + 1) ** 3)
        n = int(np.ceil(n / 8) * 8)
        offsets.append(off)
        off += n
    return offsets + [off], pls


def read_torch_ngp(path: Path) -> dict:
    ckpt = safe_torch_load(path, "torch-ngp checkpoint")
    bad = lambda problem, hint="": CheckpointError(str(path), problem, hint or  # noqa: E731
                                                   "is it a file written by torch-ngp's Trainer?")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise bad("is not a torch-ngp checkpoint (no 'model' state dict)")
    m = ckpt["model"]
    if "encoder.params" in m or "sigma_net.params" in m:
        raise bad("is torch-ngp's tcnn variant (network_tcnn.py: flat params)",
                  "pvdal imports the default CUDA-ray network (network.py)")
    if any(k.startswith("bg_net.") for k in m):
        raise bad("has a background network (bg_radius > 0), which pvdal does not import")
    missing = [k for k in ("encoder.embeddings", "encoder.offsets", "aabb_infer") if k not in m]
    if missing or not any(k.startswith("sigma_net.") for k in m):
        raise bad(f"torch-ngp model lacks {missing or ['sigma_net.*']}")
    return ckpt


def frame_options(path: Path) -> tuple[float, list[float], str]:
    side = path.with_name(path.name + ".frame.json")
    if not side.is_file():
        return DEFAULT_SCALE, list(DEFAULT_OFFSET), "torch-ngp's defaults (no .frame.json)"
    try:
        cfg = json.loads(side.read_text())
        scale = float(cfg.get("scale", DEFAULT_SCALE))
        offset = [float(v) for v in cfg.get("offset", DEFAULT_OFFSET)]
        if len(offset) != 3 or scale <= 0:
            raise ValueError("scale > 0 and offset [x, y, z] expected")
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(str(side), f"is not a torch-ngp frame ({e})",
                              'write {"scale": 0.8, "offset": [0, 0, 0]}') from e
    return scale, offset, str(side)


def widths(m: dict, prefix: str) -> list[list[int]]:
    keys = sorted((k for k in m if k.startswith(prefix) and k.endswith(".weight")),
                  key=lambda k: int(k[len(prefix):].split(".")[0]))
    return [list(m[k].shape) for k in keys]


def bitfield(m: dict, n_cascades: int, path: Path) -> torch.Tensor:
    bits = m.get("density_bitfield")
    if bits is None:
        return torch.ones(n_cascades, GRID_SIZE, GRID_SIZE, GRID_SIZE, dtype=torch.bool)
    flat = np.unpackbits(np.asarray(bits, dtype=np.uint8).reshape(-1), bitorder="little")
    if flat.size != n_cascades * GRID_SIZE**3:
        raise CheckpointError(str(path), f"density_bitfield holds {flat.size} bits, not "
                              f"{n_cascades} cascades x 128^3", "the file is damaged")
    i = np.arange(GRID_SIZE, dtype=np.uint32)
    order = morton3d(*np.meshgrid(i, i, i, indexing="ij")).astype(np.int64)
    return torch.from_numpy(flat.reshape(n_cascades, -1)[:, order].astype(bool))


@torch.no_grad()
def occupancy(field: TorchNgpNativeField, n_samples: int, resolution: int = 128) -> OccupancyGrid:
    """pvdal cells overlapping an occupied bitfield cell of any cascade they reach (1e-3-cell
    margin), inside ``aabb_infer``: a superset of where the field's density is non-zero."""
    R = resolution
    edges = torch.linspace(-1.0, 1.0, R + 1, dtype=torch.float64)
    pad = 1e-3 * 2.0 / R
    box = field.aabb.double()
    occ = torch.zeros(R, R, R, dtype=torch.bool)
    s = field.world_scale * field.ngp_scale
    for c in range(field.n_cascades):
        mb = min(2.0**c, field.bound)
        vol = field.bitfield[c]
        for k in range(3):  # torch-ngp axis k is pvdal axis CYCLE[k]
            lo = (edges[:-1] - pad) * s + float(field.ngp_offset[k])
            hi = (edges[1:] + pad) * s + float(field.ngp_offset[k])
            inside = (hi >= max(float(box[0, k]), -mb)) & (lo <= min(float(box[1, k]), mb))
            to_cell = lambda v, mb=mb: (0.5 * (v / mb + 1) * GRID_SIZE).clamp(  # noqa: E731
                0, GRID_SIZE - 1).long()
            g_lo, g_hi = to_cell(lo), to_cell(hi)
            vol = _range_any(vol, k, g_lo, torch.where(inside, g_hi, g_lo - 1))
        occ |= vol
    assert CYCLE == (1, 2, 0)
    occ = occ.permute(2, 0, 1)  # ngp-axis order (pvdal y, z, x) -> (x, y, z)
    grid = OccupancyGrid(resolution=R, threshold=GRID_THRESHOLD)
    step = default_step_size(n_samples)
    grid.density.copy_(torch.where(occ.reshape(-1), 2.0 * GRID_THRESHOLD / step, 0.0))
    grid.refresh(step)
    return grid


def import_torch_ngp(path: str | Path, key: str = "ckpt") -> LoadedField:
    p = Path(str(path)).expanduser()
    ckpt = read_torch_ngp(p)
    m = ckpt["model"]
    offsets = [int(v) for v in torch.as_tensor(m["encoder.offsets"]).tolist()]
    emb = m["encoder.embeddings"]
    aabb = [float(v) for v in torch.as_tensor(m["aabb_train" if "aabb_train" in m
                                                else "aabb_infer"]).view(-1).tolist()]
    bound = max(abs(v) for v in aabb)
    L = len(offsets) - 1
    sizes = np.diff(offsets)
    log2_T = math.ceil(math.log2(max(int(sizes.max()), 8)))
    want, pls = torch_ngp_offsets(L, bound, log2_T)
    if want != offsets:
        raise CheckpointError(str(p), f"encoder.offsets {offsets[:4]}... do not match torch-ngp's "
                              f"default grid encoder for bound {bound} ({want[:4]}...)",
                              "pvdal imports torch-ngp's default hashgrid (base resolution 16, "
                              "finest 2048 x bound)")
    n_cascades = 1 + math.ceil(math.log2(bound)) if bound > 1 else 1
    scale, offset, source = frame_options(p)
    args = {"offsets": offsets, "n_features": int(emb.shape[1]),
            "base_resolution": BASE_RESOLUTION, "per_level_scale": pls, "bound": bound,
            "sigma_widths": widths(m, "sigma_net."), "color_widths": widths(m, "color_net."),
            "sh_degree": 4,
            "aabb": [float(v) for v in torch.as_tensor(m["aabb_infer"]).view(-1).tolist()],
            "ngp_scale": scale, "ngp_offset": offset, "world_scale": WORLD_SCALE,
            "n_cascades": n_cascades}
    sw, cw = args["sigma_widths"], args["color_widths"]
    if (not sw or not cw or sw[0][1] != L * args["n_features"] or cw[0][1] != 16 + sw[-1][0] - 1
            or cw[-1][0] != 3):
        raise CheckpointError(str(p), f"sigma_net {sw} / color_net {cw} do not chain: expected "
                              f"sigma_net input {L * args['n_features']} (the grid), color_net "
                              "input SH16 + the geometry feature, 3 outputs",
                              "is it torch-ngp's NeRFNetwork (network.py)?")
    field = TorchNgpNativeField(**args)
    state = {k: v for k, v in m.items() if k.startswith(("encoder.", "sigma_net.", "color_net."))}
    state.update(aabb=field.aabb.new_tensor(args["aabb"]).view(2, 3),
                 ngp_offset=field.ngp_offset, bitfield=bitfield(m, n_cascades, p))
    strict_load(field, {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                f"{p} (torch-ngp model)")
    field.eval()
    n_samples = math.ceil(default_step_size(1) * WORLD_SCALE * scale / DT_MIN)
    grid = occupancy(field, n_samples)
    scene = SceneSpec(contraction=False, near=0.0)
    arch = {"name": "ngp", "native": "torch-ngp", "n_samples": n_samples,
            "field": {"_target_": "pvdal.fields.torch_ngp_native.TorchNgpNativeField", **args}}
    frame = {"tool": "torch-ngp", "world": "torch-ngp space = NeRF axes (y, z, x) x scale + "
             "offset; NeRF (Blender) world = pvdal scene x 1.5",
             "world_from_scene": {"scale": WORLD_SCALE, "offset": [0.0, 0.0, 0.0]},
             "ngp": {"cycle": list(CYCLE), "scale": scale, "offset": offset, "bound": bound,
                     "source": source}}
    meta = {"format": "torch-ngp", "imported": {"format": "torch-ngp", "path": str(p)},
            "arch": arch, "field_extra": {}, "frame": frame,
            "grid": {"resolution": grid.resolution, "threshold": GRID_THRESHOLD},
            "scene": scene.as_dict(), "background": [1.0, 1.0, 1.0], "n_samples": n_samples,
            "torch_ngp": {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}}
    n_dense = sum((int(np.ceil(float(np.exp2(np.float32(i) * np.float32(math.log2(pls))))
                               * BASE_RESOLUTION - 1)) + 2) ** 3 <= sizes[i] for i in range(L))
    log.info("import: torch-ngp model from %s: grid encoder %d levels x %d features, 2^%d, bound "
             "%g (%d dense levels), sigma_net %s, color_net %s, %d cascade(s), bitfield %s; "
             "frame: NeRF axes (y, z, x) x %g + %s (%s), NeRF world = pvdal scene x %g; %d "
             "samples, %.1f%% of %d^3 cells occupied", p, L, args["n_features"], log2_T, bound,
             n_dense, args["sigma_widths"], args["color_widths"], n_cascades,
             "read" if "density_bitfield" in m else "absent (nothing skipped)", scale, offset,
             source, WORLD_SCALE, n_samples, 100 * grid.occupancy_fraction(), grid.resolution)
    if source.startswith("torch-ngp's defaults"):
        log.warning("import: torch-ngp's --scale/--offset are not in %s; using its defaults "
                    "(0.33, [0, 0, 0]). Write %s.frame.json with the values the model was "
                    "trained with (its README's synthetic recipe uses --scale 0.8)", p.name,
                    p.name)
    return LoadedField(field, grid, scene, torch.tensor(meta["background"]), n_samples, arch,
                       meta, str(p), file_sha256(p))
