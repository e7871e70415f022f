"""Which field file is it? The format is read from the file's content, never from its name.

``detect_format(path)`` looks at the first bytes and, for a torch (zip) file, at the names its
pickle holds, without unpickling anything: a pvdal checkpoint holds a ``pvdal`` entry; a TensoRF
``.th`` holds ``kwargs`` and ``state_dict`` with ``density_plane.*`` tensors; a torch-ngp ``.pth``
a ``model`` with ``encoder.embeddings`` and ``sigma_net.*``. A zip without a
pickle is a numpy ``.npz``: svox2's holds ``links``, ``density_data`` and ``sh_data`` arrays. A
MessagePack map (gzip-wrapped or not) whose root holds ``snapshot`` and the network config is an
instant-ngp snapshot.
``load_field`` (pvdal/io/checkpoint.py) calls it and hands a foreign file to its importer
(``IMPORTERS``). A file that is none of ``FORMATS`` is one CheckpointError that names it and lists
them.

To add a format: a ``FORMATS`` entry, a test in ``_torch_format`` (or ``detect_format``), and an
``IMPORTERS`` entry ``"module:function"`` with the signature ``(path, key) -> LoadedField``.
"""

from __future__ import annotations

import importlib
import pickletools
import struct
import zipfile
from pathlib import Path

from pvdal.utils.errors import CheckpointError

FORMATS = {
    "pvdal": "a pvdal checkpoint (checkpoints/last.ckpt of train.py or distill.py)",
    "pvdal-safetensors": "a pvdal safetensors export (export.py format=safetensors)",
    "tensorf": "a TensoRF VM-split checkpoint (.th: kwargs + state_dict [+ alpha mask])",
    "svox2": "an svox2 / Plenoxels grid (.npz: links, density_data, sh_data, radius, center)",
    "ingp": "an instant-ngp snapshot (.msgpack, or .ingp = gzip-wrapped msgpack)",
    "torch-ngp": "a torch-ngp checkpoint (.pth: model with encoder.embeddings, sigma_net, "
                 "color_net)",
    "nerfstudio": "a nerfstudio nerfacto or instant-ngp run (its folder, config.yml or "
                  "nerfstudio_models/step-*.ckpt)",
}
IMPORTERS = {  # format -> "module:function" taking (path, key), returning a LoadedField
    "pvdal-safetensors": "pvdal.io.export:load_safetensors",
    "tensorf": "pvdal.io.importers.tensorf:import_tensorf",
    "svox2": "pvdal.io.importers.svox2:import_svox2",
    "ingp": "pvdal.io.importers.ingp:import_ingp",
    "torch-ngp": "pvdal.io.importers.torch_ngp:import_torch_ngp",
    "nerfstudio": "pvdal.io.importers.nerfstudio:import_nerfstudio",
}
SVOX2_ARRAYS = {"links", "density_data", "sh_data"}
_STR_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
            "BINSTRING", "STRING"}
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
          (b"\x93NUMPY", "a numpy .npy array"), (b"\x80", "a bare pickle (legacy torch format)"),
          (b"{", "a JSON / text file"), (b"#", "a text file"))


def supported() -> str:
    return "; ".join(f"{k}: {v}" for k, v in FORMATS.items())


def unreadable(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(str(path), problem, f"pvdal reads, by content: {supported()}")


def pickle_strings(data: bytes) -> set[str]:
    """Every string constant of a pickle (keys and values), read without unpickling it."""
    out: set[str] = set()
    for op, arg, _ in pickletools.genops(data):
        if op.name in _STR_OPS and isinstance(arg, str | bytes):
            out.add(arg if isinstance(arg, str) else arg.decode("latin-1"))
    return out


def _torch_format(path: Path, zf: zipfile.ZipFile) -> str:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
        arrays = {n[:-4] for n in names if n.endswith(".npy")}
        if SVOX2_ARRAYS <= arrays:
            return "svox2"
        held = f"a numpy .npz of {sorted(arrays)[:6]}" if arrays else "no pickle, no arrays"
        raise unreadable(path, f"is a zip archive but not a torch checkpoint nor an svox2 grid "
                         f"({held})")
    try:
        strings = pickle_strings(zf.read(pkl[0]))
    except Exception as e:
        raise unreadable(path, f"cannot be read as a checkpoint ({type(e).__name__}): the file "
                         "is truncated or damaged") from e
    if "pvdal" in strings:
        return "pvdal"
    if "pipeline" in strings and any(s.startswith("_model.") for s in strings):
        return "nerfstudio"
    if {"kwargs", "state_dict"} <= strings:
        if any(s.startswith("density_plane.") for s in strings):
            return "tensorf"
        if any(s.startswith("density_line") for s in strings):
            raise CheckpointError(str(path), "is a TensoRF CP-decomposition checkpoint "
                                  "(TensorCP: density_line without density_plane)",
                                  "pvdal imports TensoRF's VM split (TensorVMSplit) only")
    if "model" in strings and "encoder.embeddings" in strings and any(
            s.startswith("sigma_net.") for s in strings):
        return "torch-ngp"
    if "model" in strings and "encoder.params" in strings and "sigma_net.params" in strings:
        raise CheckpointError(str(path), "is a torch-ngp checkpoint of its tcnn variant "
                              "(network_tcnn.py: flat encoder.params / sigma_net.params)",
                              "pvdal imports torch-ngp's default network (network.py)")
    if "state_dict" in strings:
        raise unreadable(path, "is a torch checkpoint but not a pvdal checkpoint (no 'pvdal' "
                         "metadata) nor any format pvdal imports")
    raise unreadable(path, "is a torch file holding none of the formats pvdal reads")


def _msgpack_map(head: bytes) -> bool:
    """A MessagePack map header (fixmap, map16, map32) that is not a pickle's PROTO opcode."""
    b = head[0]
    if b == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return False
    return 0x81 <= b <= 0x8F or b in (0xDE, 0xDF)


def _msgpack_format(path: Path, gz: bool) -> str:
    what = "a gzip file" if gz else "a MessagePack file"
    from pvdal.io.importers.ingp import root_keys

    try:
        keys = root_keys(path)
    except Exception as e:  # truncated gzip / msgpack
        raise unreadable(path, f"cannot be read as a checkpoint ({type(e).__name__}: {what} "
                         "that ends early): the file is truncated or damaged") from e
    if keys is None:
        raise unreadable(path, f"is {what} but not an instant-ngp snapshot (no MessagePack map "
                         "inside)")
    if "snapshot" in keys and keys & {"encoding", "network"}:
        return "ingp"
    raise unreadable(path, f"is {what} holding a MessagePack map but not an instant-ngp "
                     f"snapshot (keys {sorted(keys)[:6]}, no 'snapshot' + network config)")


def detect_format(path: str | Path, key: str = "ckpt") -> str:
    """The format name (a ``FORMATS`` key) of the file at ``path``, from its content."""
    p = Path(str(path)).expanduser()
    from pvdal.io.importers.nerfstudio import is_run  # a run folder or its config.yml

    if is_run(p):
        return "nerfstudio"
    if p.is_dir():
        raise unreadable(p, "is a folder but not a nerfstudio run (no config.yml of ns-train)")
    if not p.is_file():
        raise CheckpointError(str(p), "checkpoint file not found", f"check {key}=PATH")
    with open(p, "rb") as f:
        head = f.read(16)
    size = p.stat().st_size
    if not head:
        raise unreadable(p, "cannot be read as a checkpoint: the file is empty (truncated?)")
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(p) as zf:
                return _torch_format(p, zf)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise unreadable(p, f"cannot be read as a checkpoint ({type(e).__name__}): the "
                             "file is truncated or damaged") from e
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, JSON header
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n <= size:
            return "pvdal-safetensors"
        raise unreadable(p, "cannot be read as a checkpoint: a safetensors header longer than "
                         "the file (truncated?)")
    kind = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
    if head[:2] == b"\x1f\x8b" or (kind is None and _msgpack_map(head)):
        return _msgpack_format(p, gz=head[:2] == b"\x1f\x8b")
    kind = kind or "unknown content"
    raise unreadable(p, f"is not a file pvdal can read ({kind})")


def import_foreign(fmt: str, path: str | Path, key: str = "ckpt"):
    """Hand ``path`` (format ``fmt``, not ``pvdal``) to its importer -> LoadedField."""
    module, func = IMPORTERS[fmt].split(":")
    return getattr(importlib.import_module(module), func)(path, key)
