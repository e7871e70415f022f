"""Export a field: ``python export.py ckpt=PATH format=mesh|safetensors|tensorf|svox2|ingp``."""

import hydra
from omegaconf import DictConfig

from pvdal.tasks import export
from pvdal.tasks.common import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_task(export.run, cfg)


if __name__ == "__main__":
    main()
