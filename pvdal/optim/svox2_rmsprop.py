"""svox2's RMSprop, for its recipe (conf/experiment/ref_svox2.yaml)."""

from __future__ import annotations

import torch


class Svox2RMSprop(torch.optim.Optimizer):
    """svox2's RMSprop (svox2/csrc/optim_kernel.cu ``rmsprop_once``): the running mean of g^2
    starts at the first g^2 (not at 0, as torch's RMSprop does), ``v = beta v + (1 - beta) g^2``,
    ``x -= lr g / (sqrt(v) + eps)``; only rows (voxels) with a gradient are updated (svox2's
    sparse grad indexer), so an unseen voxel's ``v`` does not decay. ``betas`` must be None (the
    key comes with conf/arch/svox2.yaml's Adam, which a config merge cannot remove)."""

    def __init__(self, params, lr: float = 1e-2, beta: float = 0.95, eps: float = 1e-8,
                 betas=None) -> None:
        if betas is not None:
            raise ValueError("Svox2RMSprop takes beta (svox2's rms_beta), not betas: set "
                             "optimizer.betas to null")
        super().__init__(params, {"lr": lr, "beta": beta, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta, lr, eps = group["beta"], group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "rms" not in state:
                    state["rms"] = torch.zeros_like(p)
                rms = state["rms"]
                flat_g, flat_rms, flat_p = g.view(g.shape[0], -1), rms.view(g.shape[0], -1), \
                    p.view(g.shape[0], -1)
                idx = torch.nonzero(flat_g.any(dim=1)).flatten()  # touched rows only
                gs, rs = flat_g.index_select(0, idx), flat_rms.index_select(0, idx)
                g2 = gs.square()
                fresh = rs == 0
                rs.mul_(beta).add_(g2, alpha=1.0 - beta)  # lerp(g^2, rms, beta)
                rs = torch.where(fresh, g2, rs)
                flat_rms.index_copy_(0, idx, rs)
                step = gs.div_(rs.sqrt().add_(eps)).mul_(lr)
                flat_p.index_copy_(0, idx, flat_p.index_select(0, idx).sub_(step))
        return loss
