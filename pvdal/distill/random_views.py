"""Random views (``distill.random_views``): the student trains on fresh poses every epoch.

Distillation needs no images (the teacher renders every target), so, as in the authors' code,
each epoch (``data.steps_per_epoch`` steps) draws new camera poses on the band of the real
cameras (``CameraBand``: orbit radius and elevation range, or, forward-facing, the box around
the real centres and their mean view direction) and mixes them with the training poses:
``ratio`` is the share of the epoch's views that are random (0 off, 1 random only). A random
view takes the intrinsics and size of a random real frame. Poses come from a generator seeded by
(seed, epoch), so every DDP rank and a resumed run draw the same ones.

With view-level active learning on (``al.view``), that level draws the random poses and ranks
them (pvdal/al/view.py); this callback is then not used.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from pvdal.al.view import CameraBand, with_drawn_views
from pvdal.data.frames import Frames
from pvdal.utils.errors import ConfigError

log = logging.getLogger("pvdal")


class RandomViews(pl.Callback):
    """Hands the datamodule ``real`` + ``n_views`` fresh band poses at each epoch start."""

    def __init__(self, band: CameraBand, real: Frames, ratio: float, seed: int = 0) -> None:
        self.band, self.ratio, self.seed = band, float(ratio), int(seed)
        self.real = Frames(real.c2w, real.intrinsics, real.hw, None, real.distortion)
        n = len(real)
        self.include_real = self.ratio < 1.0
        self.n_views = n if not self.include_real else round(n * self.ratio / (1 - self.ratio))

    def draw(self, epoch: int) -> Frames:
        """Epoch ``epoch``'s frames: the real poses (unless ratio is 1), then the random ones."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7 + epoch)
        src = torch.randint(len(self.real), (self.n_views,), generator=gen)
        return with_drawn_views(self.real, self.include_real, self.band.sample(self.n_views, gen),
                                self.real.intrinsics[src], self.real.hw[src])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        trainer.datamodule.set_train_frames(self.draw(int(trainer.current_epoch)))

    def on_fit_end(self, trainer, pl_module) -> None:
        trainer.datamodule.set_train_frames(None)


def build_random_views(cfg: Any, dm, al_view_enabled: bool, seed: int = 0) -> RandomViews | None:
    """The callback for ``distill.random_views`` (None when off or when view AL draws them).

    ``dm`` must be set up: the band comes from its real training poses."""
    rv = cfg or {}
    ratio = rv.get("ratio", 0.0)
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0.0 <= ratio <= 1.0:
        raise ConfigError("distill.random_views.ratio", f"must be a number in [0, 1], got "
                          f"{ratio!r}", "0 trains on the real poses only, 0.5 adds as many "
                          "random poses as there are real ones, 1 uses random poses only")
    if ratio == 0.0:
        return None
    if al_view_enabled:
        log.info("distill: random views are drawn and ranked by view-level AL (al.view)")
        return None
    data = dm.data
    band = CameraBand.from_frames(data.train.c2w, bool(data.meta.get("forward_facing")),
                                  tuple(rv.get("band_percentiles", (5.0, 95.0))),
                                  float(rv.get("ff_box_expand", 0.1)))
    cb = RandomViews(band, data.train, float(ratio), seed)
    log.info("distill: %d random views on the band of the real cameras each epoch (+ %d real)",
             cb.n_views, len(data.train) if cb.include_real else 0)
    return cb
