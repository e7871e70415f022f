"""Small building blocks shared by the fields."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int, hidden: int, out_dim: int, n_hidden_layers: int, bias: bool = True
) -> nn.Sequential:
    """``n_hidden_layers`` ReLU layers of width ``hidden`` then a linear output layer."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(d, hidden, bias=bias), nn.ReLU(inplace=True)]
        d = hidden
    layers.append(nn.Linear(d, out_dim, bias=bias))
    return nn.Sequential(*layers)
