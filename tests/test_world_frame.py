"""Frames that line up: every parser records the similarity it applied to its dataset's world
(``SceneData.world``), checkpoints carry it, and it maps the file's cameras to pvdal's exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pvdal.data.blender import load_blender
from pvdal.data.frames import SceneData, WorldFrame
from pvdal.data.llff import load_llff
from pvdal.data.scenes import load_synthetic
from pvdal.data.transforms import load_transforms
from pvdal.io.checkpoint import load_field
from pvdal.utils.errors import DataError
from tests.test_parsers_real import _write_llff, _write_tf

TOL = 1e-5
TINY_SCENE = {"seed": 0, "resolution": 16, "n_train": 8, "n_val": 1, "n_test": 2}  # TINY_DATA's


def _check(data: SceneData, raw: dict[str, torch.Tensor]) -> None:
    """``world.c2w_to_pvdal(pose in the file) == frames.c2w`` for every frame of every split,
    and the inverse maps back. ``raw``: poses by ``split/name`` or by name."""
    w = data.world
    assert w is not None
    n = 0
    for split in ("train", "val", "test"):
        fr = data.split(split)
        for i, name in enumerate(fr.names):
            pose = raw.get(f"{split}/{name}", raw.get(name))
            got = w.c2w_to_pvdal(pose)
            torch.testing.assert_close(got, fr.c2w[i].double(), atol=TOL, rtol=0)
            torch.testing.assert_close(w.c2w_to_data(fr.c2w[i].double()), pose[:3],
                                       atol=TOL * 10 / min(1.0, w.scale), rtol=0)
            n += 1
    assert n == len(data.train) + len(data.val) + len(data.test)


def _blender_raw(root: Path) -> dict[str, torch.Tensor]:
    """The poses in transforms_{split}.json by ``split/name`` (names repeat across splits)."""
    raw = {}
    for split in ("train", "val", "test"):
        for f in json.loads((root / f"transforms_{split}.json").read_text())["frames"]:
            name = Path(f["file_path"]).name
            raw[f"{split}/{name if name.endswith('.png') else name + '.png'}"] = torch.tensor(
                f["transform_matrix"], dtype=torch.float64)
    return raw


def test_blender_and_synthetic(data_dir: Path) -> None:
    data = load_synthetic(data_dir / "synthetic", **TINY_SCENE)
    assert data.world.source == "synthetic" and data.world.scale == pytest.approx(1 / 1.5)
    assert not data.world.contraction and not data.world.ndc
    raw = _blender_raw(Path(data.source))
    _check(data, raw)
    other = load_blender(data.source, scale=0.25)
    assert other.world.source == "blender" and other.world.scale == 0.25
    _check(other, raw)


def test_transforms(tmp_path: Path) -> None:
    for bounded, meta in ((True, None), (False, {"aabb_scale": 4})):
        root = tmp_path / str(bounded)
        path = _write_tf(root, n=17, meta=meta)
        data = load_transforms(root)
        assert data.world.source == "transforms" and data.world.contraction is not bounded
        assert data.world.to_data(torch.zeros(3, dtype=torch.float64)).tolist() == \
            pytest.approx([1.0, 2.0, 0.5], abs=1e-4)  # the ring's centre is the origin
        raw = {Path(f["file_path"]).name: torch.tensor(f["transform_matrix"], dtype=torch.float64)
               for f in json.loads(path.read_text())["frames"]}
        _check(data, raw)


def test_llff(tmp_path: Path) -> None:
    _write_llff(tmp_path)  # a rig rotated, moved and scaled arbitrarily
    arr = np.load(tmp_path / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    # the file's [down, right, back] camera axes -> OpenGL [right, up, back], same world
    gl = np.concatenate([arr[:, :, 1:2], -arr[:, :, 0:1], arr[:, :, 2:4]], 2)
    raw = dict(zip(names, torch.from_numpy(gl), strict=True))
    for ndc in (True, False):
        data = load_llff(tmp_path, downscale=1, ndc=ndc)
        w = data.world
        assert w.source == "llff" and w.ndc is ndc and w.contraction is not ndc
        rot = torch.tensor(w.rotation, dtype=torch.float64)
        assert not torch.allclose(rot, torch.eye(3, dtype=torch.float64), atol=0.1)
        _check(data, raw)


def test_world_frame_algebra() -> None:
    a = math.radians(30)
    rot = [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]]
    w = WorldFrame(0.4, rot, [1.0, -2.0, 3.0], True, False, "test")
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(w.to_data(w.to_pvdal(x)), x)
    c2w = torch.eye(4, dtype=torch.float64)[:3].expand(2, 3, 4).clone()
    c2w[:, :, 3] = x[:2]
    torch.testing.assert_close(w.c2w_to_data(w.c2w_to_pvdal(c2w)), c2w)
    torch.testing.assert_close(w.c2w_to_pvdal(c2w)[:, :, 3], w.to_pvdal(x[:2]))
    assert WorldFrame.from_dict(json.loads(json.dumps(w.to_dict()))) == w
    assert w.matches(WorldFrame.from_dict(w.to_dict())) and not w.matches(WorldFrame())
    with pytest.raises(DataError, match="similarity"):
        WorldFrame.from_dict({**w.to_dict(), "rotation": [[2.0, 0, 0], [0, 1, 0], [0, 0, 1]]})


def test_checkpoint_round_trip(tiny_teacher: Path, data_dir: Path, tmp_path: Path) -> None:
    """dataset -> saved transform -> loaded field: identity on the file's cameras."""
    from pvdal.io.export import load_safetensors, save_safetensors

    data = load_synthetic(data_dir / "synthetic", **TINY_SCENE)
    lf = load_field(tiny_teacher)
    assert lf.world == data.world
    assert lf.meta["data"]["world"] == data.world.to_dict()
    raw = _blender_raw(Path(data.source))
    for i, name in enumerate(data.test.names):  # a known camera from the dataset file
        known = raw[f"test/{name}"]
        pose = lf.world.c2w_to_pvdal(known)
        torch.testing.assert_close(pose, data.test.c2w[i].double(), atol=TOL, rtol=0)
        torch.testing.assert_close(lf.world.c2w_to_data(pose), known[:3], atol=TOL, rtol=0)
        centre = known[:3, 3]
        torch.testing.assert_close(lf.world.to_data(lf.world.to_pvdal(centre)), centre)
    st, _ = save_safetensors(lf, tmp_path / "f.safetensors")  # the export carries it too
    assert load_safetensors(st).world == data.world
    ckpt = torch.load(tiny_teacher, map_location="cpu", weights_only=False)
    del ckpt["pvdal"]["data"]["world"]  # a checkpoint written before the record existed
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert load_field(old).world is None


def test_distill_warns_on_another_frame(distill_cfg, tiny_teacher, monkeypatch, caplog) -> None:
    """A teacher recorded in another frame than the data's is logged before training."""
    import dataclasses
    import logging

    from pvdal.tasks import distill

    def stop(*args, **kwargs):
        raise RuntimeError("stop before training")

    monkeypatch.setattr(distill, "build_al", stop)
    lf = load_field(tiny_teacher)
    for world, warned in ((lf.world, False), (WorldFrame(0.5, source="blender"), True)):
        teacher = dataclasses.replace(lf, world=world)
        monkeypatch.setattr(distill, "resolve_teacher", lambda cfg, t=teacher: t)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pvdal"), pytest.raises(RuntimeError):
            distill.run(distill_cfg())
        assert ("another frame" in caplog.text) is warned
