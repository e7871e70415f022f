"""The catalogue of bad inputs (docs/reliability.md).

Each one must end with ONE clear message naming the file or key at fault, with a hint, exit
code 2 from the entry points (Hydra's own errors for unknown config names: exit 1), and leave
the outputs of earlier runs untouched. Cases run in-process through the task functions; two run
the CLI as a user types it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from pvdal.data.blender import load_blender
from pvdal.data.synthetic import ensure_synthetic_scene
from pvdal.io.checkpoint import AtomicCheckpointIO
from pvdal.tasks import distill, train
from pvdal.utils.errors import CheckpointError, ConfigError, DataError, PvdalError
from tests.conftest import ROOT, TINY_ARCH, TINY_DATA, TINY_RUN, compose_cfg

EARLIER = b'{"psnr": 12.5}\n'  # metrics.json of an earlier run in the same folder


@pytest.fixture(scope="module")
def scene(data_dir) -> Path:
    """The shared tiny synthetic scene (Blender format, the same one TINY_DATA trains on)."""
    return ensure_synthetic_scene(data_dir / "synthetic", 0, 16, 8, 1, 2)


@pytest.fixture
def blender(tmp_path, scene) -> Path:
    """A private copy of the tiny scene to break."""
    return Path(shutil.copytree(scene, tmp_path / "scene"))


def blender_train_cfg(out: Path, data_dir: Path, root: Path | None, extra: list[str] = ()):
    ov = ["arch=ngp", "data=blender", "data.batch_size=128", "data.steps_per_epoch=4",
          "data.val_images=1", *TINY_RUN, *TINY_ARCH["ngp"], *extra]
    if root is not None:
        ov.append(f"data.root={root}")
    return compose_cfg("train", out, data_dir, ov)


def _edit(root: Path, split: str, fn: Callable[[dict], None]) -> None:
    path = root / f"transforms_{split}.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _pose(i: int, value: Callable[[list], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        _edit(root, "train", lambda m: value(m["frames"][i]["transform_matrix"]))
    return mutate


def _set(row: int, col: int, v: float) -> Callable[[list], None]:
    def f(m: list) -> None:
        m[row][col] = v
    return f


def _scale_rotation(m: list) -> None:
    for r in range(3):
        for c in range(3):
            m[r][c] *= 1.5


def _remove_images(split: str, names: list[str]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        for n in names:
            (root / split / n).unlink()
    return mutate


# case -> (break the scene copy, the data.root to pass (None: the copy), regex the error matches)
DATA_CASES = {
    "missing_dir": (lambda r: None, "nope", r"nope: data directory does not exist.*data\.root"),
    "empty_dir": (lambda r: (r / "empty").mkdir(), "empty", r"empty: data directory is empty"),
    "no_root": (lambda r: None, "null", r"data\.root: no data directory given"),
    "not_json": (lambda r: (r / "transforms_train.json").write_text("{not json"), None,
                 r"transforms_train\.json: not valid JSON"),
    "no_frames": (lambda r: _edit(r, "val", lambda m: m.pop("frames")), None,
                  r"transforms_val\.json: has no 'frames' list"),
    "empty_split": (lambda r: _edit(r, "test", lambda m: m.update(frames=[])), None,
                    r"transforms_test\.json: lists no frames: split 'test' would be empty"),
    "all_images_missing": (_remove_images("test", ["r_0.png", "r_1.png"]), None,
                           r"transforms_test\.json: no image of split 'test' exists"),
    "garbage_png": (lambda r: (r / "train" / "r_1.png").write_bytes(b"\x89PNG garbage"), None,
                    r"r_1\.png: cannot read image"),
    "wrong_size": (lambda r: iio.imwrite(r / "train" / "r_1.png", np.zeros((8, 8, 4), np.uint8)),
                   None, r"r_1\.png: image is 8x8, the others are 16x16"),
    "nan_pose": (_pose(2, _set(0, 3, float("nan"))), None,
                 r"transforms_train\.json: train r_2\.png: pose .* NaN/inf"),
    "inf_pose": (_pose(2, _set(1, 1, float("inf"))), None,
                 r"transforms_train\.json: train r_2\.png: pose .* NaN/inf"),
    "scaled_rotation": (_pose(3, _scale_rotation), None,
                        r"transforms_train\.json: train r_3\.png: rotation is not orthonormal"),
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # imageio probing a garbage file
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data(case, blender, tmp_path, data_dir):
    mutate, root, pattern = DATA_CASES[case]
    mutate(blender)
    root = None if root == "null" else blender if root is None else blender / root
    with pytest.raises(DataError, match=pattern) as err:
        load_blender(root)
    assert err.value.hint  # every message carries a hint
    # the same message through the task, with an earlier run's output in the folder
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_bytes(EARLIER)
    with pytest.raises(DataError, match=pattern):
        train.run(blender_train_cfg(out, data_dir, root))
    assert (out / "metrics.json").read_bytes() == EARLIER
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_missing_image_skipped_with_one_warning(blender, caplog):
    _remove_images("train", ["r_3.png", "r_5.png"])(blender)
    with caplog.at_level(logging.WARNING, logger="pvdal"):
        data = load_blender(blender)
    assert len(data.train) == 6 and len(data.test) == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "2 of 8 train images are missing" in warnings[0].getMessage()
    assert "transforms_train.json" in warnings[0].getMessage()
    # ...and an error once the split would be empty: DATA_CASES["all_images_missing"]


@pytest.mark.parametrize("config,overrides,pattern", [
    ("train", ["arch=nope"], r"Could not find 'arch/nope'[\s\S]*options in 'arch'"),
    ("distill", ["teacher=nope"], r"Could not find 'teacher/nope'[\s\S]*options in 'teacher'"),
    ("distill", ["student=nope"], r"Could not find 'student/nope'[\s\S]*options in 'student'"),
    ("distill", ["al=nope"], r"Could not find 'al/nope'[\s\S]*options in 'al'"),
    ("distill", ["al=full", "al.ray.top_fraction=0.5"], r"al\.ray\.top_fraction"),  # misspelt
])
def test_unknown_names_fail_at_compose(config, overrides, pattern, tmp_path, data_dir):
    """Hydra's own error, raised before any work; it lists the options of the group."""
    with pytest.raises(ConfigCompositionException, match=pattern):
        compose_cfg(config, tmp_path / "run", data_dir, overrides)


@pytest.mark.parametrize("config,override,key", [
    ("train", "trainer.max_steps=-5", "trainer.max_steps"),
    ("train", "grid.ema_decay=1.5", "grid.ema_decay"),
    ("train", "data.batch_size=0", "data.batch_size"),
    ("distill", "distill.feat_decay=1.5", "distill.feat_decay"),
    ("distill", "distill.early_stop_eps=-0.1", "distill.early_stop_eps"),
    ("distill", "al.ray.hard_fraction=1.5", "al.ray.hard_fraction"),
    ("distill", "al.point.top_fraction=1.5", "al.point.top_fraction"),
])
def test_numeric_key_out_of_range(config, override, key, tiny_cfg, distill_cfg):
    if config == "train":
        cfg, fn = tiny_cfg("train", [override]), train.run
    else:
        cfg, fn = distill_cfg("ngp", ["al=full", override]), distill.run
    with pytest.raises(ConfigError, match=rf"^{key}: .* out of range .*hint: pass {key}="):
        fn(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.parametrize("value", ["'9 minutes'", "00:00:00:00"])
def test_bad_time_budget(value, tiny_cfg):
    cfg = tiny_cfg("train", [f"trainer.max_time={value}"])
    with pytest.raises(ConfigError, match=r"^trainer\.max_time: .*hint: pass .*trainer\.max_time="):
        train.run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def _truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def _future_format(src: Path, dst: Path) -> None:
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    ckpt["pvdal"]["format"] = 999
    torch.save(ckpt, dst)


def _weights_of_another_arch(src: Path, dst: Path) -> None:
    """Metadata says tensorf, the weights are NGP's."""
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    tensorf = compose_cfg("train", dst.parent / "x", dst.parent, ["arch=tensorf"]).arch
    ckpt["pvdal"]["arch"] = OmegaConf.to_container(tensorf, resolve=True)
    torch.save(ckpt, dst)


@pytest.mark.parametrize("make,teacher,pattern", [
    (_truncated, [], r"bad\.ckpt: cannot be read as a checkpoint .*truncated"),
    (_future_format, [], r"bad\.ckpt: was written by pvdal .*\(format 999\).*reads format 1"),
    (_weights_of_another_arch, [], r"bad\.ckpt \(field\): state does not match the architecture"),
    # also tests/test_distill.py::test_teacher_arch_mismatch_is_a_clear_error
    (shutil.copy, ["teacher=tensorf"], r"^teacher\.ckpt: \S+bad\.ckpt holds a ngp field but "
     r"teacher=tensorf \(hint: pass teacher=ngp"),
], ids=["truncated", "format_999", "weights_of_another_arch", "teacher_flag_says_tensorf"])
def test_bad_teacher_checkpoint(make, teacher, pattern, tiny_teacher, tmp_path, data_dir):
    bad = tmp_path / "bad.ckpt"
    make(tiny_teacher, bad)
    cfg = compose_cfg("distill", tmp_path / "run", data_dir,
                      ["student=ngp", *TINY_DATA, *TINY_RUN, "preset=tiny",
                       *teacher, f"teacher.ckpt={bad}"])
    with pytest.raises(CheckpointError, match=pattern):
        distill.run(cfg)


def test_output_dir_not_writable(tiny_cfg, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode: a path under a regular file instead
            (tmp_path / "afile").write_text("not a folder")
            out = tmp_path / "afile" / "run"
        else:
            out = ro / "run"
        cfg = tiny_cfg("train")
        cfg.paths.output_dir = str(out)
        with pytest.raises(PvdalError, match=rf"{out}: cannot write the output dir.*hint"):
            train.run(cfg)
    finally:
        ro.chmod(0o700)


def _full_disk(obj, f, *args, **kwargs) -> None:
    f.write(b"\0" * 4096)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_checkpoint_write(tiny_cfg, tiny_teacher, tmp_path, monkeypatch):
    ckdir = tmp_path / "run" / "checkpoints"
    ckdir.mkdir(parents=True)
    last = ckdir / "last.ckpt"
    shutil.copy(tiny_teacher, last)  # the previous checkpoint
    before = last.read_bytes()
    state = torch.load(last, map_location="cpu", weights_only=False)
    monkeypatch.setattr(torch, "save", _full_disk)
    # the writer every checkpoint goes through (ModelCheckpoint and SaveLastCheckpoint alike)
    with pytest.raises(PvdalError, match=rf"{last}: write failed \(No space left on device\)"):
        AtomicCheckpointIO().save_checkpoint(state, last)
    assert last.read_bytes() == before and os.listdir(ckdir) == ["last.ckpt"]
    # and through a training run into the same folder
    with pytest.raises(PvdalError, match=rf"{ckdir}/\S+\.ckpt: write failed \(No space left"):
        train.run(tiny_cfg("train", ["trainer.max_steps=2"]))
    assert last.read_bytes() == before and os.listdir(ckdir) == ["last.ckpt"]


KILLED_WRITER = """
import sys, time
from pvdal.io.atomic import atomic_save

def slow(f):
    for i in range(1000):
        f.write(b"N" * 65536)
        f.flush()
        if i == 0:
            print("writing", flush=True)
        time.sleep(0.01)

atomic_save(sys.argv[1], slow)
"""


@pytest.mark.parametrize("previous", [True, False], ids=["over_old_file", "new_file"])
def test_write_killed_midway(previous, tmp_path):
    target = tmp_path / "last.ckpt"
    if previous:
        torch.save({"global_step": 7}, target)
        before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.05)
        assert [p.stat().st_size > 0 for p in tmp_path.glob(".last.ckpt.*.tmp")] == [True]
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    if previous:  # the old content under the final name, still loadable
        assert target.read_bytes() == before
        assert torch.load(target, weights_only=False) == {"global_step": 7}
    else:  # nothing under the final name; a leftover .tmp is allowed
        assert not target.exists()


@pytest.mark.parametrize("args,code,pattern", [
    (["data=blender", "data.root=MISSING"], 2,
     r"^pvdal: error: \S*/missing: data directory does not exist \(hint: check data\.root\)$"),
    (["arch=nope"], 1, r"Could not find 'arch/nope'"),
], ids=["missing_data_dir", "unknown_arch"])
def test_cli_one_message_no_traceback(args, code, pattern, tmp_path, data_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_bytes(EARLIER)
    args = [a.replace("MISSING", str(tmp_path / "missing")) for a in args]
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}",
           *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == code, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    if code == 2:
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("pvdal: error:")]
        assert len(lines) == 1, res.stderr
        assert re.search(pattern, lines[0]), lines[0]
    else:
        assert re.search(pattern, res.stderr), res.stderr
    assert (run_dir / "metrics.json").read_bytes() == EARLIER
