"""Convert a radiance field: ``python distill.py teacher=ngp student=tensorf al=full``."""

import hydra
from omegaconf import DictConfig

from pvdal.tasks import distill
from pvdal.tasks.common import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="distill")
def main(cfg: DictConfig) -> None:
    run_task(distill.run, cfg)


if __name__ == "__main__":
    main()
