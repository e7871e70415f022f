"""The data contract between parsers and the datamodule.

Every parser returns a ``SceneData``: three ``Frames`` splits whose poses are already mapped into
the normalised scene (bounded: the unit box [-1, 1]^3; unbounded: contraction outside it, see
``pvdal.render.scene``), with images composited on the background.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from pvdal.render.rays import image_rays, ndc_rays, pixel_rays
from pvdal.render.scene import SceneSpec
from pvdal.utils.errors import DataError


@dataclass
class Frames:
    c2w: Tensor  # [N, 3, 4] camera-to-world, OpenGL axes, normalised scene
    intrinsics: Tensor  # [N, 4] fx, fy, cx, cy in pixels
    hw: Tensor  # [N, 2] int64 height, width of each frame
    images: list[Tensor] | None = None  # N x [H, W, 3] float32 in [0, 1], None: poses only
    distortion: Tensor | None = None  # [N, 4] OpenCV k1, k2, p1, p2
    names: list[str] = field(default_factory=list)
    alphas: list[Tensor] | None = None  # N x [H, W] opacity of RGBA images (None: opaque)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def validate(self, split: str, source: str) -> None:
        """Raise a DataError for empty splits, non-finite or non-rigid poses, bad image sizes."""
        if len(self) == 0:
            raise DataError(source, f"split '{split}' has no frames",
                            "check the transforms file / image folder for that split")
        for i in range(len(self)):
            name = self.names[i] if i < len(self.names) else f"frame {i}"
            pose = self.c2w[i]
            if not torch.isfinite(pose).all() or not torch.isfinite(self.intrinsics[i]).all():
                raise DataError(source, f"{split} {name}: pose or intrinsics contain NaN/inf",
                                "fix or remove that frame")
            R = pose[:, :3].double()
            if (R.T @ R - torch.eye(3, dtype=R.dtype)).abs().max() > 1e-2:
                raise DataError(source, f"{split} {name}: rotation is not orthonormal "
                                "(non-rigid pose)", "poses must be rigid camera-to-world matrices")
            if self.images is not None:
                h, w = self.images[i].shape[:2]
                if (h, w) != tuple(int(v) for v in self.hw[i]):
                    raise DataError(source, f"{split} {name}: image is {w}x{h}, expected "
                                    f"{int(self.hw[i][1])}x{int(self.hw[i][0])}",
                                    "all images of a capture must match its intrinsics")

    def to(self, device: torch.device | str) -> Frames:
        """The cameras on ``device`` (images stay where they are: batches use pixel tables)."""
        return Frames(self.c2w.to(device), self.intrinsics.to(device), self.hw.to(device),
                      self.images, None if self.distortion is None else
                      self.distortion.to(device), self.names, self.alphas)

    def subset(self, idx: list[int]) -> Frames:
        return Frames(
            self.c2w[idx], self.intrinsics[idx], self.hw[idx],
            None if self.images is None else [self.images[i] for i in idx],
            None if self.distortion is None else self.distortion[idx],
            [self.names[i] for i in idx] if self.names else [],
            None if self.alphas is None else [self.alphas[i] for i in idx],
        )


@dataclass
class NDCSpec:
    """Forward-facing scenes (LLFF): rays are mapped into NDC after generation."""

    focal: float
    width: int
    height: int
    near: float = 1.0


@dataclass
class SceneData:
    train: Frames
    val: Frames
    test: Frames
    scene: SceneSpec
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ndc: NDCSpec | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)  # e.g. camera band for active learning

    def split(self, name: str) -> Frames:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def rays(self, frames: Frames, cam: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
        """Rays for pixels (px, py) of cameras ``cam`` ([R] each), NDC applied where needed."""
        dist = None if frames.distortion is None else frames.distortion[cam]
        o, d = pixel_rays(frames.c2w[cam], frames.intrinsics[cam], px, py, dist)
        return self._ndc(o, d)

    def image_rays(self, frames: Frames, i: int) -> tuple[Tensor, Tensor]:
        h, w = (int(v) for v in frames.hw[i])
        dist = None if frames.distortion is None else frames.distortion[i]
        o, d = image_rays(frames.c2w[i], frames.intrinsics[i], h, w, dist)
        return self._ndc(o, d)

    def _ndc(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        if self.ndc is None:
            return o, d
        n = self.ndc
        return ndc_rays(o, d, n.focal, n.width, n.height, n.near)
