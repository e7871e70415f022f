"""``export.py format=tensorf|svox2|ingp``: a field in another tool's own file format.

Exact only for a field computed under that tool's conventions — its activations, widths, frame
and layout — i.e. pvdal's native fields (pvdal/fields/{tensorf,svox2,ingp}_native.py): those the
importers build, and students distilled with ``student=svox2|ingp|tensorf_native`` (conf/arch/).
pvdal's own architectures (exp density, sigmoid colour, corner-valued grids, the normalised scene)
have no exact counterpart in those files, so they are refused with that reason. svox2 and
instant-ngp store half floats (``sh_data``, ``params_binary``): a trained student's values are
rounded to them, as those tools' own saves do.
What each file holds is what the importer reads (shared FORMATS.md, docs/import_export.md):

* ``tensorf``: ``torch.save({kwargs, state_dict, alphaMask.shape, alphaMask.mask (numpy
  packbits), alphaMask.aabb})`` with TensoRF's 17 kwargs and state-dict names (VM split,
  ``MLP_Fea``): loads in TensoRF's ``train.py --ckpt X.th --render_only 1``.
* ``svox2``: ``np.savez`` of ``radius``, ``center``, ``links``, ``density_data`` (f32),
  ``sh_data`` (f16, as svox2 stores it), ``basis_type`` = 1.
* ``ingp``: the network config + ``snapshot`` (``params_binary`` fp16 in tcnn order,
  ``density_grid_binary`` from the occupancy bitfield, ``nerf.dataset`` scale/offset/aabb_scale,
  ``aabb``) as MessagePack, gzip-wrapped for ``.ingp``.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import torch

from pvdal.io.atomic import atomic_write_bytes
from pvdal.io.checkpoint import LoadedField
from pvdal.utils.errors import ConfigError

NATIVE = {"tensorf": "pvdal.fields.tensorf_native.TensoRFNativeField",
          "svox2": "pvdal.fields.svox2_native.Svox2NativeField",
          "ingp": "pvdal.fields.ingp_native.IngpNativeField"}
SUFFIX = {"tensorf": ".th", "svox2": ".npz", "ingp": ".ingp"}
STUDENTS = {"svox2": "svox2", "ingp": "ingp", "tensorf": "tensorf_native"}  # conf/student/
TENSORF_DEFAULTS = {"alphaMask_thres": 0.0001, "rayMarch_weight_thres": 0.0001, "pos_pe": 6,
                    "near_far": [2.0, 6.0], "step_ratio": 0.5, "shadingMode": "MLP_Fea"}


def check_native(lf: LoadedField, fmt: str) -> None:
    """Refuse a field that is not computed under ``fmt``'s conventions, saying why."""
    target = NATIVE[fmt]
    cls = type(lf.field)
    if f"{cls.__module__}.{cls.__name__}" == target:
        return
    native = lf.arch.get("native")
    what = (f"an imported {native} field" if native else
            f"pvdal's own {lf.arch.get('name')} architecture ({cls.__name__})")
    how = (f"distil a student under {fmt}'s conventions (distill.py ... student.native={fmt}, "
           f"or student={STUDENTS[fmt]}) and export that")
    raise ConfigError("format", f"format={fmt} writes {fmt}'s own field exactly, but {lf.path} "
                      f"holds {what}, computed under other conventions (activation, widths, "
                      f"frame), which {fmt} cannot load without a refit", how)


def _tensorf(lf: LoadedField) -> bytes:
    f = lf.field
    kw = dict(TENSORF_DEFAULTS)
    kw.update({k: v for k, v in (lf.meta.get("tensorf_kwargs") or {}).items()})
    kw.update(aabb=f.aabb.detach().cpu().clone(), gridSize=list(f.grid_size),
              density_n_comp=list(f.density_n_comp), appearance_n_comp=list(f.app_n_comp),
              app_dim=int(f.color_feature_dim), density_shift=f.density_shift,
              distance_scale=f.distance_scale, fea2denseAct=f.fea2dense_act,
              view_pe=int(f.renderModule.view_pe), fea_pe=int(f.renderModule.fea_pe),
              featureC=int(f.renderModule.mlp[0].out_features))
    own = ("aabb", "world_offset", "alpha_aabb", "alpha_volume")
    state = {k: v.detach().cpu().clone() for k, v in f.state_dict().items() if k not in own}
    ckpt = {"kwargs": kw, "state_dict": state}
    if f.has_alpha_mask:
        vol = (f.alpha_volume[0, 0] > 0).cpu().numpy()
        shape = (lf.arch.get("field", {}).get("alpha_mask_shape") or list(vol.shape))
        ckpt.update({"alphaMask.shape": tuple(int(s) for s in shape),
                     "alphaMask.mask": np.packbits(vol.reshape(-1)),
                     "alphaMask.aabb": f.alpha_aabb.detach().cpu().clone()})
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def _svox2(lf: LoadedField) -> bytes:
    f = lf.field
    buf = io.BytesIO()
    np.savez(buf, radius=f.radius.cpu().numpy(), center=f.center.cpu().numpy(),
             links=f.links.cpu().numpy().astype(np.int32),
             density_data=f.density_data.detach().cpu().numpy().astype(np.float32),
             sh_data=f.sh_data.detach().cpu().numpy().astype(np.float16),
             basis_type=np.array(1))
    return buf.getvalue()


def _ingp(lf: LoadedField, gz: bool) -> bytes:
    import msgpack

    from pvdal.fields.ingp_native import GRID_SIZE, morton3d

    f = lf.field
    a = lf.arch["field"]
    mlp = lambda width, hidden: {"otype": "FullyFusedMLP", "activation": "ReLU",  # noqa: E731
                                 "output_activation": "None", "n_neurons": width,
                                 "n_hidden_layers": hidden}
    weights = [m.weight for m in (*f.density_net, *f.rgb_net) if isinstance(m, torch.nn.Linear)]
    flat = torch.cat([w.detach().reshape(-1) for w in weights]
                     + [f.encoding.table().detach().reshape(-1)]).cpu().numpy()
    i = np.arange(GRID_SIZE, dtype=np.uint32)
    order = morton3d(*np.meshgrid(i, i, i, indexing="ij")).astype(np.int64).reshape(-1)
    grid = np.zeros((f.n_cascades, GRID_SIZE**3), np.float16)
    grid[:, order] = f.bitfield.reshape(f.n_cascades, -1).cpu().numpy()  # occupied -> 1.0
    aabb = f.aabb.cpu().tolist()
    aabb_scale = 2 ** (f.n_cascades - 1)
    root = {"encoding": {"otype": "HashGrid", "n_levels": int(a["n_levels"]),
                         "n_features_per_level": int(a["n_features_per_level"]),
                         "log2_hashmap_size": int(a["log2_hashmap_size"]),
                         "base_resolution": int(a["base_resolution"]),
                         "per_level_scale": float(a["per_level_scale"])},
            "network": mlp(int(a["density_width"]), int(a["density_hidden"])),
            "rgb_network": mlp(int(a["rgb_width"]), int(a["rgb_hidden"])),
            "dir_encoding": {"otype": "Composite", "nested": [
                {"n_dims_to_encode": 3, "otype": "SphericalHarmonics",
                 "degree": int(f.sh_degree)}, {"otype": "Identity"}]},
            "snapshot": {"version": 1, "mode": "Nerf", "params_type": "__half",
                         "n_params": int(flat.size),
                         "params_binary": flat.astype(np.float16).tobytes(),
                         "density_grid_size": GRID_SIZE,
                         "density_grid_binary": grid.tobytes(),
                         "training_step": int((lf.meta.get("ingp") or {}).get("training_step")
                                              or 0),
                         "nerf": {"dataset": {"scale": f.ngp_scale,
                                              "offset": f.ngp_offset.cpu().tolist(),
                                              "aabb_scale": aabb_scale}},
                         "aabb": {"min": aabb[0], "max": aabb[1]}}}
    data = msgpack.packb(root, use_bin_type=True)
    return gzip.compress(data) if gz else data


def export_native(lf: LoadedField, fmt: str, path: Path) -> dict:
    """Write ``lf``'s field as a ``fmt`` file at ``path`` (after ``check_native``)."""
    check_native(lf, fmt)
    if fmt == "tensorf":
        data = _tensorf(lf)
    elif fmt == "svox2":
        data = _svox2(lf)
    else:
        data = _ingp(lf, gz=path.suffix != ".msgpack")
    atomic_write_bytes(path, data)
    return {fmt: str(path), "bytes": len(data),
            "parameters": sum(p.numel() for p in lf.field.parameters())}
