"""Save ``checkpoints/last.ckpt`` when training ends, inside the training process(es).

Under ``ddp_spawn`` the parent process never sees the final step, optimizer or pool state, so
the final checkpoint must be written where training ran (rank 0 writes, atomically).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class SaveLastCheckpoint(pl.Callback):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path)
