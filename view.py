"""Live web viewer: ``python view.py ckpt=PATH [view.port=8080]`` -> open the printed URL."""

import hydra
from omegaconf import DictConfig

from pvdal.tasks import view
from pvdal.tasks.common import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="view")
def main(cfg: DictConfig) -> None:
    run_task(view.run, cfg)


if __name__ == "__main__":
    main()
