"""The data contract between parsers and the datamodule.

Every parser returns a ``SceneData``: three ``Frames`` splits whose poses are already mapped into
the normalised scene (bounded: the unit box [-1, 1]^3; unbounded: contraction outside it, see
``pvdal.render.scene``), with images composited on the background. ``SceneData.world`` (a
``WorldFrame``) records the similarity the parser applied to the dataset's world to get there;
checkpoints carry it.
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
class WorldFrame:
    """The similarity a parser applied to its dataset's world, recorded so it can be undone.

    Direction: ``pvdal_point = scale * (R @ data_point + t)`` maps a point of the dataset's own
    world (the coordinates of the poses in its files) into pvdal's normalised scene; camera
    centres map the same way and camera rotations become ``R @ c2w[:3, :3]`` (OpenGL camera
    axes on both sides: axis conventions of the file, e.g. LLFF's, are the parser's business).
    ``contraction``: the scene outside the unit box is contracted; ``ndc``: rays are then mapped
    into NDC (LLFF), so the field lives in NDC space of the mapped world.
    """

    scale: float = 1.0
    rotation: list[list[float]] = field(default_factory=lambda: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                                                                 [0.0, 0.0, 1.0]])
    translation: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    contraction: bool = False
    ndc: bool = False
    source: str = ""  # the parser that applied it: blender, synthetic, transforms, llff

    def to_dict(self) -> dict:
        return {"scale": float(self.scale),
                "rotation": [[float(v) for v in row] for row in self.rotation],
                "translation": [float(v) for v in self.translation],
                "contraction": bool(self.contraction), "ndc": bool(self.ndc),
                "source": str(self.source)}

    @classmethod
    def from_dict(cls, d: dict) -> WorldFrame:
        w = cls(float(d["scale"]), [[float(v) for v in row] for row in d["rotation"]],
                [float(v) for v in d["translation"]], bool(d.get("contraction", False)),
                bool(d.get("ndc", False)), str(d.get("source", "")))
        w._check()
        return w

    def _check(self) -> None:
        R = self._R()
        if R.shape != (3, 3) or len(self.translation) != 3 or not self.scale > 0 or \
                (R.T @ R - torch.eye(3, dtype=R.dtype)).abs().max() > 1e-6:
            raise DataError("world frame", f"not a similarity (scale {self.scale}, rotation "
                            f"{self.rotation}, translation {self.translation})",
                            "scale > 0, an orthonormal 3x3 rotation and a 3-vector")

    def matches(self, other: WorldFrame, tol: float = 1e-6) -> bool:
        """Same similarity and same contraction / NDC (``source`` is not compared)."""
        return (abs(self.scale - other.scale) <= tol * max(1.0, abs(self.scale))
                and bool((self._R() - other._R()).abs().max() <= tol)
                and bool((self._t() - other._t()).abs().max() <= tol * max(1.0, self._t().abs()
                                                                            .max().item()))
                and self.contraction == other.contraction and self.ndc == other.ndc)

    def _R(self) -> Tensor:
        return torch.tensor(self.rotation, dtype=torch.float64)

    def _t(self) -> Tensor:
        return torch.tensor(self.translation, dtype=torch.float64)

    def to_pvdal(self, x: Tensor) -> Tensor:
        """Data-world points [..., 3] -> pvdal scene points (computed in float64)."""
        y = self.scale * (x.double() @ self._R().T + self._t())
        return y.to(x.dtype)

    def to_data(self, p: Tensor) -> Tensor:
        """pvdal scene points [..., 3] -> data-world points: the inverse of ``to_pvdal``."""
        x = (p.double() / self.scale - self._t()) @ self._R()
        return x.to(p.dtype)

    def c2w_to_pvdal(self, c2w: Tensor) -> Tensor:
        """Data-world camera-to-world [..., 3|4, 4] -> pvdal's [..., 3, 4]."""
        m = c2w[..., :3, :4].double()
        rot = self._R() @ m[..., :3]
        centre = self.scale * (m[..., 3] @ self._R().T + self._t())
        return torch.cat([rot, centre[..., None]], -1).to(c2w.dtype)

    def c2w_to_data(self, c2w: Tensor) -> Tensor:
        """pvdal camera-to-world [..., 3|4, 4] -> the data world's [..., 3, 4]."""
        m = c2w[..., :3, :4].double()
        rot = self._R().T @ m[..., :3]
        centre = (m[..., 3] / self.scale - self._t()) @ self._R()
        return torch.cat([rot, centre[..., None]], -1).to(c2w.dtype)


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
    world: WorldFrame | None = None  # what the parser applied to the data world (None: unknown)

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
