"""Shared fixtures: Hydra compose helpers, one tiny scene and one tiny trained model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
os.environ.setdefault("WANDB_MODE", "disabled")

# sizes that make every run a few seconds on 2 cores
TINY_DATA = ["data.loader.resolution=16", "data.loader.n_train=8", "data.loader.n_val=1",
             "data.loader.n_test=2", "data.batch_size=128", "data.steps_per_epoch=4",
             "data.val_images=1"]
TINY_RUN = ["trainer.max_steps=8", "trainer.max_time=null", "trainer.log_every_n_steps=1",
            "render.n_samples=48", "grid.resolution=16", "grid.update_every=4",
            "grid.warmup_steps=4", "callbacks.rich_progress_bar=null",
            "trainer.enable_progress_bar=false", "render.target_samples=null"]  # fixed batches
# active learning that acts within a few steps (no warm-up, tiny pools)
TINY_AL = ["al.view.warmup_epochs=0", "al.view.n_views=4", "al.view.pool_size=2",
           "al.ray.pool_batches=2"]
# every architecture's test size is its conf/arch/<name>.yaml `tiny:` block
TINY_ARCH = {name: ["preset=tiny"] for name in ("ngp", "mlp", "plenoxels", "tensorf")}


def compose_cfg(
    config_name: str, out_dir: Path, data_dir: Path, overrides: list[str]
) -> DictConfig:
    """Compose like the CLI would (HydraConfig set, so tasks can read the overrides)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.log_dir = str(out_dir.parent / "logs")
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One cache folder for generated scenes, shared by every test."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_cfg(tmp_path, data_dir):
    def make(config_name: str = "train", overrides: list[str] | None = None,
             arch: str = "ngp") -> DictConfig:
        ov = [f"arch={arch}"] if config_name == "train" else []
        ov += TINY_DATA + TINY_RUN + TINY_ARCH.get(arch, []) + list(overrides or [])
        return compose_cfg(config_name, tmp_path / "run", data_dir, ov)

    return make


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, data_dir) -> Path:
    """ONE tiny trained NGP teacher for every distillation test: its last.ckpt path."""
    from pvdal.tasks import train

    out = tmp_path_factory.mktemp("teacher")
    cfg = compose_cfg("train", out / "run", data_dir,
                      ["arch=ngp", *TINY_DATA, *TINY_RUN, *TINY_ARCH["ngp"],
                       "trainer.max_steps=30"])
    train.run(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture
def distill_cfg(tmp_path, data_dir, tiny_teacher):
    """Compose conf/distill.yaml with tiny sizes and the shared tiny teacher."""

    def make(student: str = "ngp", overrides: list[str] | None = None,
             teacher_ckpt: bool = True) -> DictConfig:
        ov = [f"student={student}", *TINY_DATA, *TINY_RUN, "preset=tiny"]
        if teacher_ckpt:
            ov.append(f"teacher.ckpt={tiny_teacher}")
        return compose_cfg("distill", tmp_path / "run", data_dir, ov + list(overrides or []))

    return make
