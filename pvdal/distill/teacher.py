"""Where the frozen teacher comes from: ``teacher.ckpt=PATH``, or a cached / freshly trained one.

A teacher trained by ``distill.py`` lives under ``<log_dir>/teachers/<hash of its resolved
config>/``; a file lock makes two runs that ask at once train it once. It trains in one
process, before any DDP process of the student starts: the relaunched ranks of ``trainer=ddp``
then find it in the cache.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from pvdal.io.checkpoint import LoadedField, load_field
from pvdal.utils.errors import CheckpointError

log = logging.getLogger("pvdal")


def teacher_chosen_explicitly() -> bool:
    """True when the command line named ``teacher=...`` (not just ``teacher.ckpt=...``)."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        return False
    return any(o.split("=")[0].lstrip("+~") == "teacher" for o in overrides)


def teacher_arch(cfg: DictConfig) -> dict:
    arch = OmegaConf.to_container(cfg.teacher, resolve=True)
    arch.pop("ckpt", None)
    return arch


def teacher_key(cfg: DictConfig) -> str:
    """Hash of everything that shapes the teacher: arch, data, rendering, grid, budget, seed."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True)
             for k in ("data", "render", "grid", "teacher_train")}
    parts.update(arch=teacher_arch(cfg), seed=cfg.seed)
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_cfg_for_teacher(cfg: DictConfig, out_dir: Path) -> DictConfig:
    tcfg = copy.deepcopy(cfg)
    with open_dict(tcfg):
        tcfg.arch = teacher_arch(cfg)
        tcfg.task_name = "teacher"
        tcfg.ckpt_path = None
        tcfg.paths.output_dir = str(out_dir)
        for k, v in cfg.teacher_train.items():
            tcfg.trainer[k] = v
        # one process: under trainer=ddp the DDP processes start with the student's fit, after
        # the teacher is cached (a DDP teacher fit would relaunch distill.py while this
        # process holds the cache lock, and the relaunched ranks would wait on it forever)
        if int(tcfg.trainer.get("devices", 1) or 1) != 1 or "ddp" in str(
                tcfg.trainer.get("strategy", "")) or int(tcfg.trainer.get("num_nodes", 1)) > 1:
            tcfg.trainer.devices, tcfg.trainer.num_nodes, tcfg.trainer.strategy = 1, 1, "auto"
        for k in ("teacher", "student", "distill", "al", "teacher_train"):
            tcfg.pop(k, None)
    return tcfg


def cached_teacher(cfg: DictConfig) -> Path:
    """Train the teacher once per config (or reuse it); returns its checkpoint path."""
    from pvdal.tasks import train

    key = teacher_key(cfg)
    root = Path(cfg.paths.log_dir) / "teachers"
    out = root / key
    ckpt = out / "checkpoints" / "last.ckpt"
    with file_lock(root / f"{key}.lock"):
        if ckpt.is_file() and (out / "metrics.json").is_file():
            log.info("distill: reusing cached %s teacher %s", cfg.teacher.name, out)
        else:
            log.info("distill: no teacher.ckpt given; training a %s teacher into %s (cached for "
                     "later runs)", cfg.teacher.name, out)
            train.run(train_cfg_for_teacher(cfg, out))
    return ckpt


def resolve_teacher(cfg: DictConfig) -> LoadedField:
    path = cfg.teacher.get("ckpt")
    if path in (None, "", "null"):
        return load_field(cached_teacher(cfg), key="teacher.ckpt")
    loaded = load_field(path, key="teacher.ckpt")
    file_arch = loaded.arch.get("name")
    if teacher_chosen_explicitly() and file_arch != cfg.teacher.name:
        raise CheckpointError("teacher.ckpt", f"{path} holds a {file_arch} field but "
                              f"teacher={cfg.teacher.name}",
                              f"pass teacher={file_arch} or leave teacher= out (the file wins)")
    log.info("distill: teacher %s (%s) from %s", file_arch, loaded.sha256[:12], path)
    return loaded
