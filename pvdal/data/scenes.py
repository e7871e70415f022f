"""Hydra targets of ``conf/data/*``: each returns a ``SceneData``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pvdal.data.blender import load_blender
from pvdal.data.frames import SceneData


def load_synthetic(root: str | Path, seed: int = 0, resolution: int = 64, n_train: int = 60,
                   n_val: int = 4, n_test: int = 10,
                   background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> SceneData:
    """pvdal's embedded procedural scene: written once (cached by its arguments), then parsed."""
    from pvdal.data.synthetic import ensure_synthetic_scene

    path = ensure_synthetic_scene(root, seed, resolution, n_train, n_val, n_test)
    data = load_blender(path, 1, 1 / 1.5, tuple(background))
    data.world = replace(data.world, source="synthetic")  # the Blender parser's frame
    return data
