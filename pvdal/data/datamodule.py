"""LightningDataModule: shuffled ray batches for training, whole images for val/test.

A training batch is a pure function of (seed, global step): the loader yields one placeholder
per step and ``transfer_batch_to_device`` turns it into that step's ray batch, built directly on
the module's device (``RayDataModule.ray_batch(step)``). So a resumed run (even from a mid-epoch
checkpoint, where Lightning restarts the loader) sees exactly the batches of an uninterrupted
one, whatever the loader prefetches, and no rays are built on the host to be copied. Active
learning and random views hand the data new poses (``set_train_frames``) and replayed rays
(``set_replay``) through explicit methods. ``data.batch_size`` is the global batch:
under DDP every rank draws the same global batch and keeps its own disjoint slice of
``batch_size / world_size`` rays (``use_distributed_sampler=False`` in the trainer), so a
one-process and an N-process run see the same rays per step and, with DDP averaging the ranks'
gradients of their slice means, the same gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pvdal.data.frames import Frames, SceneData
from pvdal.utils.errors import ConfigError


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TrainRays(Dataset):
    """Batches of random pixels of the train frames; ``batch(step)`` is deterministic.

    ``frames_fn`` returns the current training frames, so view-level active learning can swap
    in new (pose-only) frames between epochs. As a Dataset it yields ``steps`` placeholders per
    epoch that only pace Lightning's loop.
    """

    def __init__(self, data: SceneData, batch_size: int, steps: int, seed: int,
                 frames_fn: Callable[[], Frames]) -> None:
        self.data, self.frames_fn = data, frames_fn
        self.batch_size, self.steps, self.seed = batch_size, steps, seed
        self._frames: Frames | None = None

    def _index(self) -> Frames:
        frames = self.frames_fn()
        if frames is not self._frames:  # rebuild the flat pixel index for new frames
            self._frames = frames
            sizes = frames.hw[:, 0] * frames.hw[:, 1]
            self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
            self.total = int(self.offsets.numpy()[-1])  # host data: no tensor read
            self.pixels = (None if frames.images is None else
                           torch.cat([im.reshape(-1, 3) for im in frames.images]))
            self.alpha = (None if frames.alphas is None or frames.images is None else
                          torch.cat([a.reshape(-1) for a in frames.alphas]))
        return frames

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"slot": torch.tensor(i)}

    def _on(self, frames: Frames, device: torch.device) -> tuple[Frames, dict[str, Tensor]]:
        """The frames and pixel tables on ``device``, copied once per frames and device."""
        key = (id(frames), str(device))
        if getattr(self, "_dev_key", None) != key:
            tabs = {"offsets": self.offsets, "pixels": self.pixels,
                    "alpha": getattr(self, "alpha", None)}
            self._dev = (frames.to(device), {k: None if v is None else v.to(device)
                                             for k, v in tabs.items()})
            self._dev_key = key
        return self._dev

    def batch(self, step: int, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """This rank's slice of step ``step``'s global batch, built on ``device`` (default:
        the CPU): the random pixel indices come from a CPU generator seeded by the step (so
        every device draws the same batch) and are the only thing copied per step."""
        frames = self._index()
        rank, world = _rank_world()
        if self.batch_size < world:
            raise ConfigError("data.batch_size", f"{self.batch_size} rays cannot be split over "
                              f"{world} processes", "it is the global batch: use at least one "
                              "ray per process")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        gidx = torch.randint(0, self.total, (self.batch_size,), generator=g)  # the global batch
        gidx = gidx[rank * self.batch_size // world:(rank + 1) * self.batch_size // world]
        dev = torch.device(device) if device is not None else torch.device("cpu")
        frames, tabs = self._on(frames, dev)
        gidx = gidx.to(dev, non_blocking=True)
        cam = torch.searchsorted(tabs["offsets"], gidx, right=True) - 1
        local = gidx - tabs["offsets"][cam]
        w = frames.hw[cam, 1]
        py, px = local // w, local % w
        rays_o, rays_d = self.data.rays(frames, cam, px, py)
        out = {"rays_o": rays_o, "rays_d": rays_d, "cam": cam, "px": px, "py": py}
        if tabs["pixels"] is not None:
            out["rgb"] = tabs["pixels"][gidx]
        if tabs["alpha"] is not None:
            out["alpha"] = tabs["alpha"][gidx]
        return out


class ImageRays(Dataset):
    """One item per image: all its rays (rendered in chunks by the module) and, if known, pixels."""

    def __init__(self, data: SceneData, frames: Frames, max_images: int | None = None) -> None:
        self.data, self.frames = data, frames
        n = len(frames)
        self.n = n if not max_images else min(n, max_images)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        rays_o, rays_d = self.data.image_rays(self.frames, i)
        out = {"rays_o": rays_o, "rays_d": rays_d, "hw": self.frames.hw[i], "index": i}
        if self.frames.images is not None:
            out["rgb"] = self.frames.images[i].reshape(-1, 3)
        return out


class RayDataModule(pl.LightningDataModule):
    def __init__(self, loader: Callable[[], SceneData], batch_size: int = 1024,
                 steps_per_epoch: int = 500, seed: int = 0, val_images: int = 2) -> None:
        super().__init__()
        for key, val in (("data.batch_size", batch_size),
                         ("data.steps_per_epoch", steps_per_epoch)):
            if int(val) < 1:
                raise ConfigError(key, f"must be >= 1, got {val}", "use a positive integer")
        self.loader, self.batch_size, self.steps = loader, batch_size, steps_per_epoch
        self.seed, self.val_images = seed, val_images
        self.data: SceneData | None = None
        self.train_frames: Frames | None = None  # set_train_frames: AL / random views
        self._train_rays: TrainRays | None = None
        self._replay = None  # set_replay: appends rays to each batch (ray-level AL)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = self.loader()
            self.train_frames = self.data.train

    def _train_frames(self) -> Frames:
        return self.train_frames

    def train_rays(self) -> TrainRays:
        if self._train_rays is None:
            self._train_rays = TrainRays(self.data, self.batch_size, self.steps, self.seed,
                                         self._train_frames)
        return self._train_rays

    # --- what training hands the data ------------------------------------------------------
    def set_train_frames(self, frames: Frames | None) -> None:
        """Train on ``frames`` (poses only are enough: distillation's targets come from the
        teacher) from the next batch on; None goes back to the real training frames."""
        self.train_frames = self.data.train if frames is None else frames

    def set_replay(self, replay) -> None:
        """``replay.augment(rays_o, rays_d) -> (rays_o, rays_d)`` extends every training batch
        (ray-level AL appends hard rays after the drawn ones)."""
        self._replay = replay

    def set_batch_size(self, n: int) -> None:
        """Rays per step from the next batch on (``render.target_samples`` adapts it)."""
        self.train_rays().batch_size = int(n)

    @property
    def rays_per_batch(self) -> int:
        return self.train_rays().batch_size

    # --- batches ----------------------------------------------------------------------------
    def ray_batch(self, step: int, device: torch.device | str | None = None
                  ) -> dict[str, Tensor]:
        """The training batch of global step ``step`` (this rank's slice), on ``device``, with
        the replayed rays (if any) appended after the drawn ones (``cam`` covers those only)."""
        out = self.train_rays().batch(step, device)
        if self._replay is not None:
            out["rays_o"], out["rays_d"] = self._replay.augment(out["rays_o"], out["rays_d"])
        return out

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """A training placeholder becomes the ray batch of the trainer's current step."""
        if isinstance(batch, dict) and "slot" in batch and self.trainer is not None:
            return self.ray_batch(self.trainer.global_step, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # Each loader has its own generator: creating an iterator would otherwise draw a seed from
    # the global RNG, so a resumed run (new iterators) would drift from an uninterrupted one.
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_rays(), batch_size=None, shuffle=False, num_workers=0,
                          generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ImageRays(self.data, self.data.val, self.val_images), batch_size=None,
                          generator=torch.Generator())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(ImageRays(self.data, self.data.test), batch_size=None,
                          generator=torch.Generator())
