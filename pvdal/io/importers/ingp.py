"""instant-ngp snapshot (``.msgpack``, or ``.ingp`` = gzip-wrapped msgpack) -> a ``LoadedField``
holding instant-ngp's own NeRF network (pvdal/fields/ingp_native.py).

What is read (instant-ngp's ``Testbed::save_snapshot``; tcnn's ``Trainer::serialize``): the root
is the network config — ``encoding`` (HashGrid: ``n_levels``, ``n_features_per_level``,
``log2_hashmap_size``, ``base_resolution``, ``per_level_scale`` or, when absent, instant-ngp's
``exp(ln(2048 * aabb_scale / base) / (L - 1))``), ``network`` and ``rgb_network`` (FullyFusedMLP
``n_neurons``/``n_hidden_layers``, ReLU), ``dir_encoding`` (SH degree 4) — plus ``snapshot``:
``params_type`` (``__half`` or ``float``), ``n_params``, ``params_binary`` (density MLP, colour
MLP, then the hash grid, tcnn layout), ``density_grid_binary`` (fp16, cascades x 128^3 in Morton
order), ``nerf.dataset`` (``scale``, ``offset``, ``aabb_scale``) and ``aabb`` (``min``/``max``).
MessagePack holds no code: nothing but plain values is decoded.

Frame: NeRF (Blender) world = pvdal scene x 1.5 (pvdal's Blender parser); instant-ngp space =
cycled NeRF axes x ``scale`` + ``offset``. Marching: a step no longer than instant-ngp's
``sqrt(3) / 1024`` (its MIN_CONE_STEPSIZE, in its units); the field zeroes density where
instant-ngp's bitfield skips a sample, and pvdal's occupancy grid marks every cell that overlaps
an occupied instant-ngp cell of any cascade, so skipping changes no pixel.
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from pvdal.encodings.hashgrid import tcnn_layout
from pvdal.fields.ingp_native import CYCLE, GRID_SIZE, IngpNativeField, morton3d
from pvdal.io.checkpoint import LoadedField, file_sha256, strict_load
from pvdal.io.importers.tensorf import _range_any
from pvdal.render.march import default_step_size
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import CheckpointError

log = logging.getLogger("pvdal")

WORLD_SCALE = 1.5  # NeRF (Blender) world = pvdal scene x 1.5 (pvdal.data.blender: scale 1/1.5)
MIN_CONE_STEPSIZE = math.sqrt(3.0) / 1024  # instant-ngp's NERF_STEPS = 1024
MIN_OPTICAL_THICKNESS = 0.01  # instant-ngp's NERF_MIN_OPTICAL_THICKNESS
GRID_THRESHOLD = 0.01


def open_msgpack(path: Path):
    """A binary stream of the MessagePack content (gunzipped for ``.ingp``)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _msgpack():
    try:
        import msgpack
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise CheckpointError("msgpack", "is not installed; instant-ngp snapshots need it",
                              "pip install 'msgpack>=1.0'") from e
    return msgpack


def root_keys(path: Path) -> set[str] | None:
    """The keys of the root map of a MessagePack file (values skipped), None if it is not one."""
    msgpack = _msgpack()
    with open_msgpack(path) as f:
        up = msgpack.Unpacker(f, raw=False, max_buffer_size=0)
        try:
            n = up.read_map_header()
        except (EOFError, OSError, zlib.error, msgpack.OutOfData):
            raise  # a truncated or damaged file
        except Exception:  # not a map
            return None
        keys = set()
        for _ in range(n):
            k = up.unpack()
            up.skip()
            if isinstance(k, str):
                keys.add(k)
        return keys


def _binary(v) -> bytes:
    msgpack = _msgpack()
    if isinstance(v, msgpack.ExtType):  # nlohmann's binary with a subtype
        return v.data
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    if isinstance(v, dict) and "bytes" in v:  # nlohmann binary as JSON-ish {bytes, subtype}
        return bytes(v["bytes"])
    raise TypeError(f"expected binary data, got {type(v).__name__}")


def read_snapshot(path: Path) -> dict:
    msgpack = _msgpack()
    try:
        with open_msgpack(path) as f:
            root = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
    except Exception as e:  # truncated gzip / msgpack, bad data
        msg = str(e).splitlines()[0][:120] if str(e) else ""
        raise CheckpointError(str(path), f"cannot be read as an instant-ngp snapshot "
                              f"({type(e).__name__}: {msg})",
                              "the file is truncated or damaged; copy it again") from e
    bad = lambda problem, hint="": CheckpointError(str(path), problem, hint or  # noqa: E731
                                                   "is it a snapshot saved by instant-ngp?")
    if not isinstance(root, dict) or not isinstance(root.get("snapshot"), dict):
        raise bad("is not an instant-ngp snapshot (no 'snapshot' map)")
    missing = [k for k in ("encoding", "network", "rgb_network") if k not in root]
    snap = root["snapshot"]
    missing += [f"snapshot.{k}" for k in ("params_binary", "aabb", "nerf") if k not in snap]
    if missing:
        raise bad(f"instant-ngp snapshot lacks {missing}")
    enc = root["encoding"]
    if enc.get("otype") != "HashGrid":
        raise bad(f"encoding {enc.get('otype')!r} is not imported", "pvdal imports "
                  "instant-ngp's NeRF network with a HashGrid encoding")
    mode = snap.get("mode", "nerf")
    if str(mode).lower() != "nerf":
        raise bad(f"is a snapshot of instant-ngp's {mode!r} mode, not a NeRF")
    for key in ("network", "rgb_network"):
        act = root[key].get("activation", "ReLU")
        if act != "ReLU" or root[key].get("output_activation", "None") != "None":
            raise bad(f"{key} activation {act!r} / {root[key].get('output_activation')!r} is "
                      "not imported (instant-ngp's NeRF networks use ReLU / None)")
    ds = snap["nerf"].get("dataset", {})
    if int(ds.get("n_extra_learnable_dims", 0) or 0):
        raise bad("uses extra learnable dims (per-image latent codes), which pvdal does not "
                  "import")
    return root


def field_args(root: dict) -> dict:
    enc, snap = root["encoding"], root["snapshot"]
    ds = snap["nerf"].get("dataset", {})
    aabb_scale = float(ds.get("aabb_scale", 1.0))
    L, base = int(enc.get("n_levels", 16)), int(enc.get("base_resolution", 16))
    pls = enc.get("per_level_scale")
    if pls is None:  # instant-ngp's default: finest level 2048 * aabb_scale (float32)
        f32 = np.float32
        pls = float(np.exp(f32(np.log(f32(2048.0 * aabb_scale) / f32(base))) / f32(L - 1)))
    sh = root.get("dir_encoding", {})
    nested = sh.get("nested", [sh])
    degree = int(next((n.get("degree", 4) for n in nested
                       if n.get("otype") == "SphericalHarmonics"), 4))
    box = snap["aabb"]
    return {"n_levels": L, "n_features_per_level": int(enc.get("n_features_per_level", 2)),
            "log2_hashmap_size": int(enc.get("log2_hashmap_size", 19)), "base_resolution": base,
            "per_level_scale": float(pls),
            "density_width": int(root["network"].get("n_neurons", 64)),
            "density_hidden": int(root["network"].get("n_hidden_layers", 1)),
            "rgb_width": int(root["rgb_network"].get("n_neurons", 64)),
            "rgb_hidden": int(root["rgb_network"].get("n_hidden_layers", 2)),
            "sh_degree": degree,
            "aabb": [[float(v) for v in box["min"]], [float(v) for v in box["max"]]],
            "ngp_scale": float(ds.get("scale", 0.33)),
            "ngp_offset": [float(v) for v in ds.get("offset", [0.5, 0.5, 0.5])],
            "world_scale": WORLD_SCALE}


def params_state(field: IngpNativeField, flat: np.ndarray, path: Path) -> dict:
    """Split tcnn's flat parameter vector: density MLP, colour MLP (each [out, in] row-major,
    layer by layer), then the hash grid [rows, F]."""
    state, off = {}, 0
    mlps = [(f"density_net.{i}.weight", m) for i, m in enumerate(field.density_net)
            if isinstance(m, torch.nn.Linear)]
    mlps += [(f"rgb_net.{i}.weight", m) for i, m in enumerate(field.rgb_net)
             if isinstance(m, torch.nn.Linear)]
    grid = field.encoding.n_rows * field.encoding.n_features
    need = sum(m.weight.numel() for _, m in mlps) + grid
    if flat.size != need:
        raise CheckpointError(str(path), f"params_binary holds {flat.size} parameters; the "
                              f"network config needs {need} (MLPs, then a {field.encoding.n_rows}"
                              f"-row hash grid)", "the snapshot is damaged or its config edited")
    for name, m in mlps:
        n = m.weight.numel()
        state[name] = torch.from_numpy(flat[off:off + n].reshape(m.weight.shape).copy())
        off += n
    state["encoding.params"] = torch.from_numpy(
        flat[off:].reshape(field.encoding.n_rows, field.encoding.n_features).copy())
    return state


def bitfield(snap: dict, path: Path) -> tuple[torch.Tensor, np.ndarray]:
    """instant-ngp's occupancy bitfield [cascades, 128, 128, 128] (x, y, z) from the fp16 density
    grid (Morton order per cascade): value > min(0.01, mean of cascade 0)."""
    n_cell = GRID_SIZE**3
    if "density_grid_binary" not in snap:
        return torch.ones(1, GRID_SIZE, GRID_SIZE, GRID_SIZE, dtype=torch.bool), np.ones(1)
    vals = np.frombuffer(_binary(snap["density_grid_binary"]), dtype=np.float16)
    if vals.size == 0 or vals.size % n_cell:
        raise CheckpointError(str(path), f"density_grid_binary holds {vals.size} values, not a "
                              f"multiple of 128^3", "the snapshot is damaged")
    vals = vals.astype(np.float32).reshape(-1, n_cell)
    thresh = min(MIN_OPTICAL_THICKNESS, float(vals[0].mean()))
    i = np.arange(GRID_SIZE, dtype=np.uint32)
    x, y, z = np.meshgrid(i, i, i, indexing="ij")
    order = morton3d(x, y, z).astype(np.int64)  # [128, 128, 128] (x, y, z) -> Morton index
    bits = vals[:, order] > thresh
    return torch.from_numpy(bits), vals


@torch.no_grad()
def occupancy(field: IngpNativeField, n_samples: int, resolution: int = 128) -> OccupancyGrid:
    """pvdal cells overlapping an occupied instant-ngp cell of any cascade whose box they reach,
    inside ``aabb`` (1e-3-cell margin): a superset of where the field's density is non-zero."""
    R = resolution
    edges = torch.linspace(-1.0, 1.0, R + 1, dtype=torch.float64)
    pad = 1e-3 * 2.0 / R
    occ = torch.zeros(R, R, R, dtype=torch.bool)  # indexed by ngp axes' pvdal cells
    box = field.aabb.double()
    for c in range(field.n_cascades):
        size = 2.0**c
        vol = field.bitfield[c]
        for k in range(3):  # ngp axis k is pvdal axis CYCLE[k]
            s = field.world_scale * field.ngp_scale
            lo = (edges[:-1] - pad) * s + float(field.ngp_offset[k])
            hi = (edges[1:] + pad) * s + float(field.ngp_offset[k])
            inside = (hi >= max(box[0, k], 0.5 - size / 2)) & (lo <= min(box[1, k],
                                                                         0.5 + size / 2))
            g_lo = (((lo - 0.5) / size + 0.5) * GRID_SIZE).floor().long().clamp(0, GRID_SIZE - 1)
            g_hi = (((hi - 0.5) / size + 0.5) * GRID_SIZE).floor().long().clamp(0, GRID_SIZE - 1)
            vol = _range_any(vol, k, g_lo, torch.where(inside, g_hi, g_lo - 1))
        occ |= vol
    # occ[i, j, k]: i = cell along pvdal y, j along pvdal z, k along pvdal x -> (x, y, z)
    assert CYCLE == (1, 2, 0)
    occ = occ.permute(2, 0, 1)
    grid = OccupancyGrid(resolution=R, threshold=GRID_THRESHOLD)
    step = default_step_size(n_samples)
    grid.density.copy_(torch.where(occ.reshape(-1), 2.0 * GRID_THRESHOLD / step, 0.0))
    grid.refresh(step)
    return grid


def import_ingp(path: str | Path, key: str = "ckpt") -> LoadedField:
    p = Path(str(path)).expanduser()
    root = read_snapshot(p)
    snap = root["snapshot"]
    args = field_args(root)
    if args["n_levels"] * args["n_features_per_level"] % 16:
        raise CheckpointError(str(p), "hash-grid output width not a multiple of 16 (tcnn pads "
                              "it), which pvdal does not import")
    bits, vals = bitfield(snap, p)
    args["n_cascades"] = int(bits.shape[0])
    try:
        field = IngpNativeField(**args)
    except ValueError as e:
        raise CheckpointError(str(p), f"instant-ngp network config not imported: {e}") from e
    ptype = snap.get("params_type", "__half")
    dtype = {"__half": np.float16, "float": np.float32}.get(ptype)
    if dtype is None:
        raise CheckpointError(str(p), f"params_type {ptype!r} is not __half or float")
    flat = np.frombuffer(_binary(snap["params_binary"]), dtype=dtype).astype(np.float32)
    state = params_state(field, flat, p)
    state.update(aabb=torch.tensor(args["aabb"]), ngp_offset=field.ngp_offset, bitfield=bits)
    strict_load(field, state, f"{p} (instant-ngp params)")
    field.eval()
    n_samples = math.ceil(default_step_size(1) * WORLD_SCALE * args["ngp_scale"]
                          / MIN_CONE_STEPSIZE)
    grid = occupancy(field, n_samples)
    scene = SceneSpec(contraction=False, near=0.0)
    lay = tcnn_layout(args["n_levels"], args["log2_hashmap_size"], args["base_resolution"],
                      args["per_level_scale"])
    arch = {"name": "ngp", "native": "ingp", "n_samples": n_samples,
            "field": {"_target_": "pvdal.fields.ingp_native.IngpNativeField", **args}}
    frame = {"tool": "instant-ngp", "world": "instant-ngp space = NeRF axes (y, z, x) x scale "
             "+ offset; NeRF (Blender) world = pvdal scene x 1.5",
             "world_from_scene": {"scale": WORLD_SCALE, "offset": [0.0, 0.0, 0.0]},
             "ngp": {"cycle": list(CYCLE), "scale": args["ngp_scale"],
                     "offset": args["ngp_offset"], "aabb": args["aabb"]}}
    meta = {"format": "ingp", "imported": {"format": "ingp", "path": str(p)}, "arch": arch,
            "field_extra": {}, "frame": frame,
            "grid": {"resolution": grid.resolution, "threshold": GRID_THRESHOLD},
            "scene": scene.as_dict(), "background": [1.0, 1.0, 1.0], "n_samples": n_samples,
            "ingp": {"training_step": snap.get("training_step"), "params_type": ptype}}
    log.info("import: instant-ngp snapshot from %s: hash grid %d levels x %d features, 2^%d, "
             "base %d, scale/level %.4f (%d dense levels), MLPs %dx%d / %dx%d, %s params, "
             "%d density-grid cascade(s) (%.1f%% of cascade 0 occupied); frame: NeRF axes "
             "(y, z, x) x %g + %s, NeRF world = pvdal scene x %g; aabb %s; %d samples, %.1f%% of "
             "%d^3 cells occupied", p, args["n_levels"], args["n_features_per_level"],
             args["log2_hashmap_size"], args["base_resolution"], args["per_level_scale"],
             sum(lay.dense), args["density_hidden"], args["density_width"], args["rgb_hidden"],
             args["rgb_width"], ptype, args["n_cascades"], 100 * float(bits[0].float().mean()),
             args["ngp_scale"], args["ngp_offset"], WORLD_SCALE, args["aabb"], n_samples,
             100 * grid.occupancy_fraction(), grid.resolution)
    del vals
    return LoadedField(field, grid, scene, torch.tensor(meta["background"]), n_samples, arch,
                       meta, str(p), file_sha256(p))
