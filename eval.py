"""Evaluate a checkpoint: ``python eval.py ckpt=PATH [data=...]`` -> metrics.json, test images."""

import hydra
from omegaconf import DictConfig

from pvdal.tasks import evaluate
from pvdal.tasks.common import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_task(evaluate.run, cfg)


if __name__ == "__main__":
    main()
