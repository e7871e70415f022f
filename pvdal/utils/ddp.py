"""What multi-process training needs beyond Lightning's defaults: one decision on every rank, and
DDP re-registered after a field replaces its parameters (upsampling, pruning)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from pvdal.utils.errors import PvdalError

log = logging.getLogger("pvdal")


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_ranks_true(flag: Tensor | bool) -> bool:
    """``flag`` on every rank (a MIN all-reduce); the local value without a process group.
    Every rank must call it at the same point: it is a collective."""
    t = torch.as_tensor(flag)
    if not distributed() or torch.distributed.get_world_size() == 1:
        return bool(t)
    t = t.detach().to(torch.float32).reshape(1).clone()
    if torch.distributed.get_backend() == "nccl" and not t.is_cuda:
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def rewrap_after_new_parameters(trainer) -> None:
    """After a field swapped its ``Parameter``s, DDP's reducer still averages the old ones and
    every rank would train its own copy of the new ones, silently. Build a fresh DDP wrapper:
    its construction broadcasts rank 0's parameters and buffers and registers the new set. The
    optimizer is rebuilt by the caller. Strategies that cannot do this stop the run."""
    if trainer is None or trainer.world_size <= 1:
        return
    strategy = trainer.strategy
    if not hasattr(strategy, "configure_ddp"):
        raise PvdalError(f"trainer.strategy={type(strategy).__name__}",
                         "the field replaced its parameters (upsampling or pruning) and this "
                         "strategy cannot re-register them, so the ranks would diverge",
                         "use trainer=ddp (DDP) or an architecture without upsampling/pruning")
    strategy.model = strategy.lightning_module
    strategy.configure_ddp()
    log.debug("ddp: re-wrapped the model after its parameters changed")


def fresh_spawn_port(trainer, user_port: bool) -> None:
    """Under ``ddp_spawn`` testing starts new processes: give them a new rendezvous port rather
    than the one fit just closed (gloo can abort in a peer-name lookup on a reused one). Left
    alone when the user set ``MASTER_PORT`` and for launchers whose processes outlive fit."""
    import os

    from lightning_fabric.plugins.environments.lightning import find_free_network_port

    env = getattr(trainer.strategy, "cluster_environment", None)
    if (user_port or trainer.world_size < 2 or env is None or not hasattr(env, "_main_port")
            or getattr(trainer.strategy, "_start_method", None) != "spawn"):
        return
    os.environ["MASTER_PORT"] = str(find_free_network_port())
    env._main_port = -1
