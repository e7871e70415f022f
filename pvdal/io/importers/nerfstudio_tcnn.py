"""The tiny-cuda-nn layout of a nerfstudio field's checkpoint (nerfacto run with ``implementation:
tcnn``, or nerfstudio's instant-ngp method, whose field is a NerfactoField with tcnn modules).

Which layout a checkpoint holds is told by its keys, not by the config: nerfstudio builds the torch
modules when tcnn is not installed, whatever ``implementation`` says.

* ``mlp_base.model.params``: one flat vector (fp16 as tcnn stores it): the fully fused MLP's
  weights ``[64, 32]``, ``[16, 64]`` (``[out, in]`` row-major, input padded to 16), then the
  hash grid ``[rows, F]`` in tcnn's layout (network first: tcnn ``NetworkWithInputEncoding::
  set_params_impl``).
* ``mlp_head.tcnn_encoding.params``: ``[64, 64]``, ``[64, 64]``, ``[16, 64]`` for the head input
  ``[SH16, geo15, appearance32, 1]``.
* ``direction_encoding.tcnn_encoding.params`` / ``position_encoding.tcnn_encoding.params``: empty
  (SH and frequency encodings have no parameters).
"""

from __future__ import annotations

import torch

from pvdal.fields.nerfacto_native import NerfactoNativeField
from pvdal.fields.nerfacto_tcnn import split_params
from pvdal.utils.errors import CheckpointError

BASE, HEAD = "mlp_base.model.params", "mlp_head.tcnn_encoding.params"
EMPTY = ("direction_encoding.tcnn_encoding.params", "position_encoding.tcnn_encoding.params")


def implementation_of(state: dict) -> str:
    """``tcnn`` or ``torch``: the layout the field's tensors are in."""
    return "tcnn" if BASE in state else "torch"


def tcnn_state(field: NerfactoNativeField, state: dict, src: str) -> dict:
    """nerfstudio's tcnn state -> the field's own names (float32), checked for size."""
    state = dict(state)
    for k in EMPTY:
        v = state.pop(k, None)
        if v is not None and v.numel():
            raise CheckpointError(src, f"{k} holds {v.numel()} parameters; tcnn's SH and "
                                  "frequency encodings have none", "the checkpoint is damaged")
    base, head = field.mlp_base, field.mlp_head
    need = {BASE: base.n_params(), HEAD: sum(m.weight.numel() for m in head.layers)}
    for k, n in need.items():
        v = state.get(k)
        if v is None:
            raise CheckpointError(src, f"tcnn nerfacto field lacks {k}", "the checkpoint is "
                                  "damaged or not a nerfacto field")
        if v.numel() != n:
            raise CheckpointError(src, f"{k} holds {v.numel()} parameters; the config's field "
                                  f"needs {n} (tcnn layout: MLP weights padded to 16"
                                  + (f", then a {base.encoding.n_rows}-row hash grid)"
                                     if k == BASE else ")"),
                                  "the config.yml does not belong to this checkpoint")
    flat = state.pop(BASE).float().reshape(-1)
    mlp, grid = split_params(flat, base.network.layers, "mlp_base.network.")
    state.update(mlp)
    state["mlp_base.encoding.params"] = grid.reshape(base.encoding.n_rows,
                                                     base.encoding.n_features)
    head_state, _ = split_params(state.pop(HEAD).float().reshape(-1), head.layers, "mlp_head.")
    state.update(head_state)
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in state.items()}
