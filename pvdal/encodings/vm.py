"""TensoRF vector-matrix (VM) encoding: per axis pair a plane, for the third axis a line.

Component c of mode i is ``plane_i[c](x_a, x_b) * line_i[c](x_k)``; the encoding returns all
components of the three modes, concatenated: [M, sum(n_comp)]. Lookups are ``grid_sample`` with
``align_corners=True`` (grid points sit at the box corners, as in TensoRF), so resizing with
``F.interpolate(align_corners=True)`` and cropping at grid points keep the represented field.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAT_MODE = ((0, 1), (0, 2), (1, 2))  # plane i spans axes (a, b): width <- a, height <- b
VEC_MODE = (2, 1, 0)  # line i runs along the remaining axis


class VMEncoding(nn.Module):
    """u in [-1, 1]^3 (box coordinates) -> [M, sum(n_comp)] plane x line products."""

    def __init__(self, n_comp: Sequence[int], resolution: Sequence[int],
                 init_scale: float = 0.1, init_offset: float = 0.0) -> None:
        """Planes and lines start at ``init_offset + init_scale * N(0, 1)``: each component
        product then averages ``init_offset**2``."""
        super().__init__()
        self.n_comp = [int(n) for n in n_comp]
        self.out_dim = sum(self.n_comp)
        self.planes = nn.ParameterList()
        self.lines = nn.ParameterList()
        for n, (a, b), k in zip(self.n_comp, MAT_MODE, VEC_MODE):
            plane = torch.randn(1, n, resolution[b], resolution[a])
            line = torch.randn(1, n, resolution[k], 1)
            self.planes.append(nn.Parameter(init_offset + init_scale * plane))
            self.lines.append(nn.Parameter(init_offset + init_scale * line))

    @property
    def resolution(self) -> list[int]:
        """Grid points per axis."""
        return [self.planes[0].shape[-1], self.planes[0].shape[-2], self.planes[1].shape[-2]]

    def forward(self, u: Tensor) -> Tensor:
        M = u.shape[0]
        outs = []
        for i, ((a, b), k) in enumerate(zip(MAT_MODE, VEC_MODE)):
            pc = u[:, (a, b)].view(1, M, 1, 2)
            lc = torch.stack([torch.zeros_like(u[:, k]), u[:, k]], dim=-1).view(1, M, 1, 2)
            plane = F.grid_sample(self.planes[i], pc, mode="bilinear", align_corners=True)
            line = F.grid_sample(self.lines[i], lc, mode="bilinear", align_corners=True)
            outs.append((plane * line).view(self.n_comp[i], M))
        return torch.cat(outs, dim=0).t()

    def _replace(self, planes: list[Tensor], lines: list[Tensor]) -> None:
        for i in range(3):
            self.planes[i] = nn.Parameter(planes[i].contiguous())
            self.lines[i] = nn.Parameter(lines[i].contiguous())

    @torch.no_grad()
    def resize(self, resolution: Sequence[int]) -> None:
        """Resample planes and lines to ``resolution`` grid points per axis."""
        planes = [F.interpolate(p, size=(resolution[b], resolution[a]), mode="bilinear",
                                align_corners=True) for p, (a, b) in zip(self.planes, MAT_MODE)]
        lines = [F.interpolate(ln, size=(resolution[k], 1), mode="bilinear", align_corners=True)
                 for ln, k in zip(self.lines, VEC_MODE)]
        self._replace(planes, lines)

    @torch.no_grad()
    def crop(self, lo: Sequence[int], hi: Sequence[int]) -> None:
        """Keep grid points lo[axis]..hi[axis] (inclusive) on every axis."""
        planes = [p[..., lo[b]:hi[b] + 1, lo[a]:hi[a] + 1]
                  for p, (a, b) in zip(self.planes, MAT_MODE)]
        lines = [ln[..., lo[k]:hi[k] + 1, :] for ln, k in zip(self.lines, VEC_MODE)]
        self._replace(planes, lines)

    def reset_shape(self, resolution: Sequence[int]) -> None:
        """Allocate (uninitialised-value) parameters of ``resolution``, e.g. before loading."""
        dev = self.planes[0].device
        planes = [torch.zeros(1, n, resolution[b], resolution[a], device=dev)
                  for n, (a, b) in zip(self.n_comp, MAT_MODE)]
        lines = [torch.zeros(1, n, resolution[k], 1, device=dev)
                 for n, k in zip(self.n_comp, VEC_MODE)]
        self._replace(planes, lines)

    def l1(self) -> Tensor:
        """Mean absolute value of planes and lines (TensoRF's density L1)."""
        return sum(p.abs().mean() + ln.abs().mean() for p, ln in zip(self.planes, self.lines))

    def tv(self) -> Tensor:
        """Mean squared difference between neighbouring plane texels (TensoRF's TVLoss)."""
        total = self.planes[0].new_zeros(())
        for p in self.planes:
            total = total + (p[..., 1:, :] - p[..., :-1, :]).square().mean()
            total = total + (p[..., :, 1:] - p[..., :, :-1]).square().mean()
        return total
