"""Real-capture parsers: instant-ngp/nerfstudio transforms.json and LLFF poses_bounds.npy.

Fixtures are tiny synthetic captures written into tmp_path (8x8..16x16 images).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pvdal.data.llff import load_llff
from pvdal.data.transforms import CAMERA_RADIUS, focus_point, load_transforms
from pvdal.render.rays import distort
from pvdal.utils.errors import DataError

RNG = np.random.default_rng(0)


def _image(path: Path, h: int, w: int, channels: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, RNG.integers(0, 255, (h, w, channels), dtype=np.uint8))


def _look_at(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world 4x4 at ``pos`` looking at ``target`` (z up)."""
    back = (pos - target) / np.linalg.norm(pos - target)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, :4] = np.stack([right, np.cross(back, right), back, pos], 1)
    return m


CENTRE = np.array([1.0, 2.0, 0.5])


def _write_tf(root: Path, n: int = 9, size: tuple[int, int] = (12, 16), meta: dict | None = None,
              per_frame: dict[int, dict] | None = None, skip: tuple[int, ...] = (),
              disk: dict[int, tuple[int, int]] | None = None) -> Path:
    """A ring of ``n`` cameras at distance 4 looking at CENTRE; returns the json path."""
    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        a = 2 * math.pi * i / n
        pos = CENTRE + 4.0 * np.array([math.cos(a), math.sin(a), 0.5]) / math.sqrt(1.25)
        fp = f"images/f{i:03d}.png"
        extra = (per_frame or {}).get(i, {})
        if i not in skip:
            h, w = (disk or {}).get(i, (extra.get("h", size[0]), extra.get("w", size[1])))
            _image(root / fp, h, w)
        frames.append({"file_path": fp, "transform_matrix": _look_at(pos, CENTRE).tolist(),
                       **extra})
    h, w = size
    content = {"fl_x": 14.0, "fl_y": 14.0, "cx": w / 2, "cy": h / 2, "w": w, "h": h,
               **(meta or {}), "frames": frames}
    path = root / "transforms.json"
    path.write_text(json.dumps(content))
    return path


def test_transforms_normalised_and_split(tmp_path: Path) -> None:
    _write_tf(tmp_path, n=17)
    data = load_transforms(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (14, 3, 3)
    assert data.test.names == ["f000.png", "f008.png", "f016.png"]
    assert not data.scene.contraction and data.ndc is None
    c2w = torch.cat([data.train.c2w, data.test.c2w])
    o, d = c2w[:, :, 3], -c2w[:, :, 2]
    assert torch.allclose(o.norm(dim=-1), torch.full((17,), CAMERA_RADIUS), atol=1e-4)
    assert torch.cross(o, d, dim=-1).norm(dim=-1).max() < 1e-4  # every axis hits the origin
    assert data.meta["forward_facing"] is False
    assert data.meta["radius"] == pytest.approx([CAMERA_RADIUS] * 2, abs=1e-4)
    assert data.train.images[0].shape == (12, 16, 3)
    assert load_transforms(tmp_path / "transforms.json").source.endswith("transforms.json")


def test_per_frame_intrinsics_and_mixed_orientation(tmp_path: Path) -> None:
    portrait = {"w": 12, "h": 16, "fl_x": 20.0, "fl_y": 21.0, "cx": 6.5, "cy": 8.0}
    _write_tf(tmp_path, per_frame={1: portrait, 2: {"fl_x": 9.0}})
    data = load_transforms(tmp_path)
    fr = data.train  # train holds frames 1..7
    assert fr.hw[0].tolist() == [16, 12] and fr.hw[1].tolist() == [12, 16]
    assert fr.images[0].shape == (16, 12, 3)
    assert fr.intrinsics[0].tolist() == pytest.approx([20.0, 21.0, 6.5, 8.0])
    assert fr.intrinsics[1].tolist() == pytest.approx([9.0, 14.0, 8.0, 6.0])
    o, d = data.image_rays(fr, 0)
    assert o.shape == (16 * 12, 3) and torch.isfinite(d).all()
    half = load_transforms(tmp_path, downscale=2).train
    assert half.hw[0].tolist() == [8, 6]
    assert half.intrinsics[0].tolist() == pytest.approx([10.0, 10.5, 3.25, 4.0])


def test_camera_angle_fallback(tmp_path: Path) -> None:
    path = _write_tf(tmp_path)
    meta = json.loads(path.read_text())
    for k in ("fl_x", "fl_y", "cx", "cy"):
        del meta[k]
    meta["camera_angle_x"] = 2 * math.atan(0.5)  # focal = w
    path.write_text(json.dumps(meta))
    assert load_transforms(tmp_path).train.intrinsics[0].tolist() == pytest.approx(
        [16.0, 16.0, 8.0, 6.0])


def test_distortion_ray_goes_through_undistorted_point(tmp_path: Path) -> None:
    _write_tf(tmp_path, meta={"k1": 0.12, "k2": -0.03, "p1": 0.004, "p2": -0.002})
    data = load_transforms(tmp_path)
    fr = data.train
    assert fr.distortion is not None and fr.distortion[0].tolist() == pytest.approx(
        [0.12, -0.03, 0.004, -0.002])
    cam = torch.tensor([2, 5])
    xu, yu = torch.tensor([0.3, -0.4]), torch.tensor([-0.2, 0.25])
    xd, yd = distort(xu, yu, fr.distortion[cam])
    fx, fy, cx, cy = fr.intrinsics[cam].unbind(-1)
    px, py = xd * fx + cx - 0.5, yd * fy + cy - 0.5
    _, d = data.rays(fr, cam, px, py)
    want = fr.c2w[cam, :, :3] @ torch.stack([xu, -yu, -torch.ones(2)], -1)[..., None]
    want = want[..., 0] / want[..., 0].norm(dim=-1, keepdim=True)
    assert torch.allclose(d, want, atol=1e-5)
    naive = fr.c2w[cam, :, :3] @ torch.stack([xd, -yd, -torch.ones(2)], -1)[..., None]
    assert not torch.allclose(d, naive[..., 0] / naive[..., 0].norm(dim=-1, keepdim=True),
                              atol=1e-3)


def test_downscaled_images_on_disk_and_wrong_size(tmp_path: Path) -> None:
    _write_tf(tmp_path / "a", disk={i: (6, 8) for i in range(9)})  # images_2 style
    fr = load_transforms(tmp_path / "a").train
    assert fr.hw[0].tolist() == [6, 8]
    assert fr.intrinsics[0].tolist() == pytest.approx([7.0, 7.0, 4.0, 3.0])
    _write_tf(tmp_path / "b", disk={3: (7, 10)})
    with pytest.raises(DataError, match="f003.png"):
        load_transforms(tmp_path / "b")


def test_unbounded(tmp_path: Path) -> None:
    _write_tf(tmp_path, meta={"aabb_scale": 4})
    spec = load_transforms(tmp_path).scene
    assert spec.contraction and spec.far >= CAMERA_RADIUS + 4 * math.sqrt(3) - 1e-3
    assert not load_transforms(tmp_path, unbounded=False).scene.contraction
    _write_tf(tmp_path / "b")
    assert load_transforms(tmp_path / "b", unbounded=True).scene.contraction


def test_missing_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_tf(tmp_path, skip=(3,))
    with caplog.at_level(logging.WARNING, logger="pvdal"):
        data = load_transforms(tmp_path)
    assert len(data.train) == 6 and "1 of 9" in caplog.text
    _write_tf(tmp_path / "none", skip=tuple(range(9)))
    with pytest.raises(DataError, match="no image"):
        load_transforms(tmp_path / "none")
    _write_tf(tmp_path / "notest", skip=(0, 8))
    with pytest.raises(DataError, match="test"):
        load_transforms(tmp_path / "notest")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # imageio probing a garbage file
def test_transforms_errors(tmp_path: Path) -> None:
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(DataError, match="transforms.json.*JSON"):
        load_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 1.0}))
    with pytest.raises(DataError, match="frames"):
        load_transforms(tmp_path)
    path = _write_tf(tmp_path / "nan")
    meta = json.loads(path.read_text())
    meta["frames"][4]["transform_matrix"][0][3] = float("nan")
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="f004.*NaN"):
        load_transforms(path)
    del meta["frames"][4]["transform_matrix"]
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="transform_matrix"):
        load_transforms(path)
    (tmp_path / "nan" / "images" / "f001.png").write_bytes(b"garbage")
    meta["frames"].pop(4)
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="f001.png"):
        load_transforms(path)


def test_focus_point_degenerate_falls_back_to_mean() -> None:
    c2w = torch.eye(4)[:3].repeat(4, 1, 1)
    c2w[:, :, 3] = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert torch.allclose(focus_point(c2w), torch.tensor([0.5, 0.5, 0.0]))


# ---------------------------------------------------------------- LLFF


def _write_llff(root: Path, n: int = 9, hw: tuple[int, int] = (12, 16), focal: float = 14.0,
                world_scale: float = 5.0, folder: str = "images") -> None:
    """A 3x3 rig looking at a plane 3 units away, then moved/rotated/scaled arbitrarily."""
    q, _ = np.linalg.qr(RNG.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    t = RNG.normal(size=3) * 10
    rows = []
    for i in range(n):
        pos = np.array([(i % 3 - 1) * 0.2, (i // 3 - 1) * 0.2, 0.0])
        c2w = np.concatenate([q, (q @ pos * world_scale + t)[:, None]], 1)  # OpenGL axes
        llff = np.concatenate([-c2w[:, 1:2], c2w[:, 0:1], c2w[:, 2:4],
                               np.array([[hw[0]], [hw[1]], [focal]])], 1)  # down, right, back
        rows.append(np.concatenate([llff.reshape(-1), [2.5 * world_scale, 3.5 * world_scale]]))
        _image(root / folder / f"img_{i:03d}.png", *hw)
    np.save(root / "poses_bounds.npy", np.stack(rows))


def test_llff_ndc_rays_in_unit_cube(tmp_path: Path) -> None:
    _write_llff(tmp_path)
    data = load_llff(tmp_path, downscale=1, ndc=True)
    assert (len(data.train), len(data.val), len(data.test)) == (7, 2, 2)
    assert data.ndc is not None and data.ndc.focal == pytest.approx(14.0)
    assert not data.scene.contraction and data.scene.near == 0.0
    assert data.meta["forward_facing"] is True and len(data.meta["centers"]) == 9
    assert data.meta["mean_dir"] == pytest.approx([0.0, 0.0, -1.0], abs=1e-5)
    for fr in (data.train, data.test):
        cam = torch.arange(len(fr))
        px, py = torch.full((len(fr),), 7.5), torch.full((len(fr),), 5.5)  # centre pixel
        o, d = data.rays(fr, cam, px, py)
        assert torch.isfinite(o).all() and torch.isfinite(d).all()
        assert o.abs().max() <= 1 + 1e-5 and (d[:, 2] > 0).all()
        far = o + ((1 - o[:, 2]) / d[:, 2])[:, None] * d  # where the ray leaves at z = 1
        assert far.abs().max() <= 1 + 1e-4
        _, d_all = data.image_rays(fr, 0)
        assert torch.isfinite(d_all).all()


def test_llff_contraction_and_prescaled_folder(tmp_path: Path) -> None:
    _write_llff(tmp_path, folder="images_2", hw=(6, 8), focal=14.0)
    data = load_llff(tmp_path, downscale=2, ndc=False)
    assert data.ndc is None and data.scene.contraction
    assert data.scene.near == pytest.approx(0.75) and data.scene.far > 3.5 / 2.5
    assert torch.tensor(data.meta["centers"]).abs().max() < 1.0
    assert data.train.hw[0].tolist() == [6, 8]
    assert data.train.intrinsics[0].tolist() == pytest.approx([14.0, 14.0, 4.0, 3.0])


def test_llff_errors(tmp_path: Path) -> None:
    _write_llff(tmp_path)
    (tmp_path / "images" / "img_004.png").unlink()
    with pytest.raises(DataError, match="8 images but poses_bounds.npy has 9"):
        load_llff(tmp_path, downscale=1)
    np.save(tmp_path / "poses_bounds.npy", np.zeros((8, 15)))
    with pytest.raises(DataError, match="shape"):
        load_llff(tmp_path, downscale=1)
    (tmp_path / "poses_bounds.npy").unlink()
    with pytest.raises(DataError, match="poses_bounds.npy"):
        load_llff(tmp_path, downscale=1)
