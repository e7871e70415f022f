"""The procedural Blender-format scene writer: format, parser round trip, determinism, caching,
atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pvdal.data import synthetic
from pvdal.data.blender import load_blender
from pvdal.data.synthetic import MARKER, ensure_synthetic_scene, scene_name

ARGS = {"seed": 0, "resolution": 16, "n_train": 3, "n_val": 1, "n_test": 2}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writes_blender_format_and_loads(tmp_path: Path) -> None:
    folder = ensure_synthetic_scene(tmp_path, **ARGS)
    assert folder.parent == tmp_path and (folder / MARKER).is_file()
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        meta = json.loads((folder / f"transforms_{split}.json").read_text())
        assert meta["camera_angle_x"] == pytest.approx(0.6911, abs=1e-3)
        assert [f["file_path"] for f in meta["frames"]] == [f"./{split}/r_{i}" for i in range(n)]
        for f in meta["frames"]:
            pose = torch.tensor(f["transform_matrix"])
            assert pose.shape == (4, 4)
            assert float(pose[:3, 3].norm()) == pytest.approx(4.0, abs=1e-4)
            img = iio.imread(folder / f"{f['file_path']}.png")
            assert img.shape == (16, 16, 4) and img.dtype == np.uint8
            assert (img[..., 3] == 0).any() and (img[..., 3] == 255).any()
            assert img[8, 8, 3] == 255  # the centre ray passes the origin, inside the sphere

    data = load_blender(folder)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 2)
    gap = torch.cdist(data.test.c2w[:, :, 3], data.train.c2w[:, :, 3])
    assert gap.min() > 1e-3  # test cameras are not training cameras
    elev = torch.asin(data.train.c2w[:, 2, 3] / data.train.c2w[:, :, 3].norm(dim=-1))
    assert ((elev > 0.17) & (elev < 1.23)).all()  # 10-70 degrees
    for frames in (data.train, data.val, data.test):
        for img in frames.images:
            assert img.shape == (16, 16, 3)
            white = (img == 1.0).all(-1)
            assert white.any() and (~white).sum() > 30  # background and object
    radius = data.train.c2w[:, :, 3].norm(dim=-1)
    assert torch.allclose(radius, torch.full_like(radius, 4.0 / 1.5), atol=1e-4)


def test_parser_rays_match_rendered_coverage(tmp_path: Path) -> None:
    """Rays built by the parser's conventions hit the scene exactly where the PNG has alpha."""
    folder = ensure_synthetic_scene(tmp_path, **ARGS)
    data = load_blender(folder)
    shapes = synthetic.build_scene()
    for i in range(len(data.train)):
        o, d = data.image_rays(data.train, i)
        _, cov = synthetic.trace(shapes, o * 1.5, d)  # undo the parser's 1/1.5 scale
        alpha = iio.imread(folder / "train" / f"r_{i}.png")[..., 3].reshape(-1)
        solid = (alpha == 0) | (alpha == 255)  # pixels not on an edge
        agree = (cov[torch.from_numpy(solid)] > 0.5) == torch.from_numpy(alpha[solid] == 255)
        assert agree.float().mean() > 0.97


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = ensure_synthetic_scene(tmp_path / "a", **ARGS)
    b = ensure_synthetic_scene(tmp_path / "b", **ARGS)
    assert a.name == b.name
    assert _files(a) == _files(b)
    c = ensure_synthetic_scene(tmp_path / "a", **{**ARGS, "seed": 1})
    assert c != a
    fa, fc = _files(a), _files(c)
    pngs = [k for k in fa if k.endswith(".png")]
    assert all(fa[k] != fc[k] for k in pngs)


def test_cached_second_call_does_not_rewrite(tmp_path: Path, monkeypatch) -> None:
    first = ensure_synthetic_scene(tmp_path, **ARGS)
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*")}

    def boom(*a, **k):
        raise AssertionError("the cached scene was rendered again")

    monkeypatch.setattr(synthetic, "write_scene", boom)
    assert ensure_synthetic_scene(tmp_path, **ARGS) == first
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temp folder left


def test_folder_without_marker_is_not_the_scene(tmp_path: Path) -> None:
    name = scene_name(**ARGS)
    half = tmp_path / name
    (half / "train").mkdir(parents=True)
    (half / "transforms_train.json").write_text("{}")  # half-written, no marker
    stray = tmp_path / f".{name}.tmp-crashed"
    stray.mkdir()
    (stray / "transforms_train.json").write_text("{}")

    folder = ensure_synthetic_scene(tmp_path, **ARGS)
    assert folder == half and (folder / MARKER).is_file()
    assert json.loads((folder / "transforms_train.json").read_text())["frames"]
    load_blender(folder)
    assert stray.is_dir()  # a stray temp folder is left alone, never used


def test_marker_with_other_args_is_not_the_scene(tmp_path: Path) -> None:
    folder = ensure_synthetic_scene(tmp_path, **ARGS)
    marker = json.loads((folder / MARKER).read_text())
    marker["args"]["version"] = -1
    (folder / MARKER).write_text(json.dumps(marker))
    again = ensure_synthetic_scene(tmp_path, **ARGS)
    assert again == folder
    assert json.loads((folder / MARKER).read_text())["args"]["version"] == synthetic.SCENE_VERSION


def test_losing_the_race_uses_the_winner(tmp_path: Path, monkeypatch) -> None:
    """Another process finishes first: its folder is kept and ours is discarded."""
    real_write = synthetic.write_scene
    target = tmp_path / scene_name(**ARGS)

    def write_then_other_process_wins(folder: Path, *a) -> None:
        real_write(folder, *a)
        target.mkdir()
        real_write(target, *a)
        (target / "winner.txt").write_text("other process")

    monkeypatch.setattr(synthetic, "write_scene", write_then_other_process_wins)
    folder = ensure_synthetic_scene(tmp_path, **ARGS)
    assert folder == target and (folder / "winner.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # our temp is gone


def test_bad_args(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ensure_synthetic_scene(tmp_path, resolution=0)
    with pytest.raises(ValueError):
        ensure_synthetic_scene(tmp_path, n_test=0)
