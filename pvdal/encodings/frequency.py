"""Frequency (positional) encoding of NeRF: [x, sin(2^k x), cos(2^k x)] for k < n_freqs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrequencyEncoding(nn.Module):
    def __init__(self, in_dim: int = 3, n_freqs: int = 10, include_input: bool = True) -> None:
        super().__init__()
        self.in_dim, self.n_freqs, self.include_input = in_dim, n_freqs, include_input
        self.register_buffer("freqs", 2.0 ** torch.arange(n_freqs).float(), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.n_freqs + int(self.include_input))

    def forward(self, x: Tensor) -> Tensor:
        """x: [M, in_dim] -> [M, out_dim]."""
        xb = (x[..., None, :] * self.freqs[:, None]).flatten(-2)  # [M, n_freqs * in_dim]
        parts = [x] if self.include_input else []
        return torch.cat(parts + [torch.sin(xb), torch.cos(xb)], dim=-1)
