"""view.py: render function = eval.py's, camera-path JSON, the server, a live run, a browser."""

from __future__ import annotations

import base64
import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pvdal.tasks import distill, evaluate, render_video, view
from pvdal.utils.errors import CheckpointError, PvdalError
from pvdal.viewer.camera import (
    c2w_from_viser,
    fov_y,
    intrinsics,
    matrix_to_quat,
    quat_to_matrix,
    viser_from_c2w,
)
from pvdal.viewer.camera_path import CameraPath, Keyframe, load_camera_path, path_frames
from pvdal.viewer.live import LiveViewer, live_callbacks
from pvdal.viewer.render import ViewTarget, render_camera
from tests.conftest import ROOT, compose_cfg

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def view_cfg(tmp_path, data_dir, ckpt, extra=()):
    return compose_cfg("view", tmp_path / "view", data_dir,
                       [f"ckpt={ckpt}", "view.block=false", "view.port=0", *extra])


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode(errors="replace")


# --- cameras and the render function ---------------------------------------------------------
def test_camera_conversions_roundtrip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        R = quat_to_matrix(q)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9)
        assert np.allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-9)
        c2w = np.concatenate([R, rng.normal(size=(3, 1))], 1)
        wxyz, pos = viser_from_c2w(c2w)
        assert np.allclose(c2w_from_viser(wxyz, pos), c2w, atol=1e-9)
    K = intrinsics(fov_y(50.0, 32), 32, 32)
    assert np.allclose(K, [50.0, 50.0, 16.0, 16.0])


def test_viewer_render_equals_eval_render(tiny_teacher, tmp_path, data_dir):
    """A dataset camera through the browser's camera model renders what eval.py renders."""
    cfg = compose_cfg("eval", tmp_path / "eval", data_dir, [f"ckpt={tiny_teacher}",
                                                            "progress=false"])
    lf = evaluate.load_checkpoint(cfg, torch.device("cpu"))
    data, _ = evaluate.load_data(cfg, lf)
    frames = data.test
    ref = evaluate.render_view(lf, data, frames, 0, lf.n_samples, 4096)
    h, w = (int(v) for v in frames.hw[0])
    wxyz, pos = viser_from_c2w(frames.c2w[0].double().numpy())
    K = frames.intrinsics[0].double().numpy()
    K_browser = intrinsics(fov_y(K[1], h), w, h)
    assert np.allclose(K_browser, K, rtol=1e-5)
    target = ViewTarget.of(lf, data.ndc)
    out = render_camera(target, c2w_from_viser(wxyz, pos), K_browser, h, w, chunk=64)
    for k in ("rgb", "depth", "opacity"):
        assert torch.allclose(out[k], ref[k], atol=1e-5), k
    assert float(ref["opacity"].max()) > 0.1  # the camera sees the field
    assert render_camera(target, frames.c2w[0], K, h, w, 64, cancelled=lambda: True) is None


# --- camera paths ----------------------------------------------------------------------------
def _keyframes() -> list[Keyframe]:
    def cam(az: float, fov: float) -> Keyframe:
        pos = np.array([3 * math.cos(az), 3 * math.sin(az), 1.0])
        z = pos / np.linalg.norm(pos)
        x = np.cross([0, 0, 1.0], z)
        x /= np.linalg.norm(x)
        return Keyframe(np.stack([x, np.cross(z, x), z, pos], 1), fov)
    return [cam(0.0, 40.0), cam(1.0, 50.0), cam(2.0, 40.0)]


def test_camera_path_roundtrip_own(tmp_path):
    cp = CameraPath(_keyframes(), 40, 30, fps=10, seconds=1.2)
    path = cp.save(tmp_path / "path.json")
    back = load_camera_path(path)
    assert (back.width, back.height, back.fps, back.seconds) == (40, 30, 10, 1.2)
    for a, b in zip(back.keyframes, cp.keyframes):
        assert np.allclose(a.c2w, b.c2w) and a.fov == b.fov
    cams = back.cameras()
    assert len(cams) == 12
    assert np.allclose(cams[0].c2w, cp.keyframes[0].c2w, atol=1e-6)
    assert np.allclose(cams[-1].c2w, cp.keyframes[-1].c2w, atol=1e-6)
    for c in cams:  # interpolated rotations stay rotations
        assert np.allclose(c.c2w[:, :3] @ c.c2w[:, :3].T, np.eye(3), atol=1e-6)
    d = json.loads(path.read_text())  # the nerfstudio view of the same file
    assert len(d["camera_path"]) == 12
    assert np.allclose(np.reshape(d["camera_path"][5]["camera_to_world"], (4, 4))[:3],
                       cams[5].c2w)
    fr = path_frames(back, height=60)
    assert len(fr) == 12 and tuple(fr.hw[0].tolist()) == (60, 80)
    f = 0.5 * 60 / math.tan(math.radians(20.0))
    assert torch.allclose(fr.intrinsics[0], torch.tensor([f, f, 40.0, 30.0]))


def test_camera_path_reads_nerfstudio(tmp_path):
    """nerfstudio's viewer export: camera_path frames are rendered as they are."""
    keys = _keyframes()
    ns = {"default_fov": 75.0, "default_transition_sec": 2.0, "camera_type": "perspective",
          "render_height": 48, "render_width": 64, "fps": 3, "seconds": 1.0,
          "smoothness_value": 0.5, "is_cycle": False, "crop": None,
          "keyframes": [{"matrix": np.eye(4).reshape(-1).tolist(), "fov": 75.0, "aspect": 1.33,
                         "override_transition_enabled": False, "override_transition_sec": None}],
          "camera_path": [{"camera_to_world": np.vstack([k.c2w, [0, 0, 0, 1]]).reshape(-1)
                           .tolist(), "fov": k.fov, "aspect": 4 / 3} for k in keys]}
    (tmp_path / "ns.json").write_text(json.dumps(ns))
    cp = load_camera_path(tmp_path / "ns.json")
    assert not cp.keyframes and len(cp.cameras()) == 3
    fr = path_frames(cp)
    assert torch.allclose(fr.c2w, torch.tensor(np.stack([k.c2w for k in keys]),
                                               dtype=torch.float32), atol=1e-6)
    f = 0.5 * 48 / math.tan(math.radians(25.0))
    assert math.isclose(float(fr.intrinsics[1, 1]), f, rel_tol=1e-5)
    for bad in ("{", json.dumps({"render_width": 4})):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(PvdalError, match="bad.json"):
            load_camera_path(tmp_path / "bad.json")


def test_render_py_renders_a_camera_path(tmp_path, data_dir, tiny_teacher):
    path = CameraPath(_keyframes(), 16, 12, fps=4, seconds=0.75).save(tmp_path / "p.json")
    cfg = compose_cfg("render", tmp_path / "render", data_dir,
                      [f"ckpt={tiny_teacher}", f"path={path}", "progress=false"])
    res = render_video.run(cfg)
    assert res["frames"] == 3 and res["fps"] == 4 and (res["height"], res["width"]) == (12, 32)
    assert Path(res["video"]).name == "video_p.mp4" and Path(res["video"]).is_file()


# --- the server ------------------------------------------------------------------------------
def test_server_answers_http_and_moves_off_a_busy_port(tmp_path, data_dir, tiny_teacher,
                                                       capsys):
    port = free_port()
    a = view.run(view_cfg(tmp_path, data_dir, tiny_teacher, [f"view.port={port}"]))
    b = view.run(view_cfg(tmp_path, data_dir, tiny_teacher, [f"view.port={port}"]))
    try:
        out = capsys.readouterr().out
        assert a.url == f"http://127.0.0.1:{port}" and b.url != a.url
        busy = [ln for ln in out.splitlines() if "in use" in ln]
        assert len(busy) == 1 and str(port) in busy[0]
        assert len(a.cameras) > 0  # the checkpoint's own data: dataset cameras
        for v in (a, b):
            status, body = http_get(v.url)
            assert status == 200 and "<html" in body.lower()
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("kind", ["safetensors", "tensorf"])
def test_view_reads_exports_and_imports(kind, tmp_path, data_dir, tiny_teacher):
    """An export.py safetensors file and an imported TensoRF .th (no dataset: no camera list,
    a default camera outside the unit box) both serve and render."""
    from pvdal.io.checkpoint import load_field
    from pvdal.io.export import save_safetensors

    if kind == "tensorf":
        ckpt = ROOT / "tests" / "data" / "tensorf_synthetic" / "tensorf.th"
    else:
        ckpt, _ = save_safetensors(load_field(tiny_teacher), tmp_path / "f.safetensors")
    v = view.run(view_cfg(tmp_path, data_dir, ckpt))
    try:
        assert v.cameras if kind == "safetensors" else not v.cameras
        ic = v.server.initial_camera
        pos = torch.tensor(np.asarray(ic.position), dtype=torch.float32)[None]
        c2w = render_video.look_at_origin(pos, torch.tensor(v.up, dtype=torch.float32))[0]
        out = render_camera(v.target(), c2w, intrinsics(0.7, 24, 24), 24, 24)
        assert float(out["opacity"].max()) > 0.1
    finally:
        v.stop()


def test_view_bad_checkpoint_is_evals_error(tmp_path, data_dir):
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"\x00junk")
    errs = []
    for name, fn in (("eval", evaluate.run), ("view", view.run)):
        cfg = compose_cfg(name, tmp_path / name, data_dir, [f"ckpt={bad}"])
        with pytest.raises(CheckpointError) as e:
            fn(cfg)
        errs.append(str(e.value))
    assert errs[0] == errs[1] and "junk.ckpt" in errs[0]


def test_view_cli_bad_checkpoint_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "view.py"), f"ckpt={tmp_path}/gone.ckpt",
           f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    errs = [ln for ln in res.stderr.splitlines() if "pvdal: error" in ln]
    assert len(errs) == 1 and "gone.ckpt" in errs[0] and "Traceback" not in res.stderr


# --- watching a run --------------------------------------------------------------------------
def test_distill_with_live_viewer(distill_cfg):
    cfg = distill_cfg("tensorf", ["view=true", "viewer.port=0", "trainer.max_steps=6"])
    [cb] = live_callbacks(cfg)
    assert isinstance(cb, LiveViewer)
    live = LiveViewer(port=0, every_n_steps=2, resolution=24, budget=1.0)
    cfg.view = False
    res = distill.run(cfg, extra_callbacks=[live])
    assert res["student"]["psnr"] is not None
    assert live.refreshes >= 1 and live.viewer is None  # refreshed, then stopped with the run
    img = live.g_img.image
    assert img.shape[1] > 3 * img.shape[0]  # teacher | student | |difference|
    assert "stage" in live.g_stats.content and "PSNR" in live.g_stats.content


# --- a real browser --------------------------------------------------------------------------
def _view_area(shot: np.ndarray) -> np.ndarray:
    """Below the "software WebGL" notice, right of the axes gizmo, left of the panel."""
    h, w = shot.shape[:2]
    return shot[int(0.45 * h): int(0.85 * h), int(0.12 * w): int(0.45 * w), :3].astype(float)


def _cdp_screenshot(url: str, profile: Path, until, done, timeout: float = 60.0) -> np.ndarray:
    """Open ``url`` in headless Chromium, wait for ``until()``, then take screenshots until
    ``done(shot)`` (the browser draws what it got) or ``timeout``; return the last one."""
    from websockets.sync.client import connect

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
           "--window-size=640,480", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port_file, t0 = profile / "DevToolsActivePort", time.time()
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.time() - t0 < timeout and proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages:
            _, body = http_get(f"http://127.0.0.1:{port}/json/list")
            pages = [p for p in json.loads(body) if p.get("type") == "page"]
            time.sleep(0.1)
        while not until():
            assert time.time() - t0 < timeout, "no frame reached the page"
            time.sleep(0.2)
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=2**26) as ws:
            for i in range(1, 10**6):
                ws.send(json.dumps({"id": i, "method": "Page.captureScreenshot",
                                    "params": {"format": "png"}}))
                while True:
                    msg = json.loads(ws.recv(timeout=timeout))
                    if msg.get("id") == i:
                        break
                shot = iio.imread(base64.b64decode(msg["result"]["data"]))
                if done(shot) or time.time() - t0 > timeout:
                    return shot
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                    reason="needs headless Chromium at /usr/bin/chromium (apt-get install "
                    "chromium)")
def test_browser_shows_a_render(tmp_path, data_dir, tiny_teacher):
    v = view.run(view_cfg(tmp_path, data_dir, tiny_teacher, ["view.resolution=64"]))
    try:
        shot = _cdp_screenshot(v.url, tmp_path / "chromium", lambda: v.frames_rendered >= 1,
                               lambda img: _view_area(img).std() > 5.0)
        assert http_get(v.url)[0] == 200  # the browser is gone, the server is not
    finally:
        v.stop()
    iio.imwrite(tmp_path / "shot.png", shot)
    std = _view_area(shot).std()
    assert std > 5.0, f"blank page (std {std:.2f}); screenshot in {tmp_path}"
