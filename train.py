"""Train a radiance field: ``python train.py [arch=ngp|mlp|plenoxels|tensorf] [data=...]``."""

import hydra
from omegaconf import DictConfig

from pvdal.tasks import train
from pvdal.tasks.common import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_task(train.run, cfg)


if __name__ == "__main__":
    main()
