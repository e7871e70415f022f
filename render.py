"""Render a video: ``python render.py ckpt=PATH path=spiral|test [seconds=4 fps=24]``."""

import hydra
from omegaconf import DictConfig

from pvdal.tasks import render_video
from pvdal.tasks.common import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="render")
def main(cfg: DictConfig) -> None:
    run_task(render_video.run, cfg)


if __name__ == "__main__":
    main()
