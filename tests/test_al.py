"""Active learning: each level on hand-built inputs, then every ``al`` option in distill.run."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from pvdal.al import CameraBand, PointLevel, RayLevel, ViewLevel, build_levels, check_al
from pvdal.al.view import look
from pvdal.data.frames import Frames
from pvdal.render.march import Samples
from pvdal.tasks import distill
from pvdal.utils.errors import ConfigError
from tests.conftest import TINY_AL, compose_cfg

ANGLE = math.pi / 20


# --- hand-built inputs ---------------------------------------------------------------------------
def orbit_frames(n: int = 40, seed: int = 0) -> Frames:
    g = torch.Generator().manual_seed(seed)
    el = torch.rand(n, generator=g, dtype=torch.float64) * 0.6 + 0.2
    az = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    r = 3.5 + torch.rand(n, generator=g, dtype=torch.float64)
    d = torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    c2w = torch.cat([look(d, up), (r[:, None] * d)[:, :, None]], -1).float()
    return Frames(c2w, torch.tensor([[20.0, 20.0, 8.0, 8.0]]).expand(n, 4).clone(),
                  torch.tensor([[16, 16]]).expand(n, 2).clone())


def view_level(frames: Frames, **kw) -> ViewLevel:
    band = CameraBand.from_frames(frames.c2w, kw.pop("forward_facing", False))
    args = dict(n_views=20, warmup_epochs=0, hard_fraction=0.2, pool_size=6, pool_share=0.5,
                include_real=True)
    return ViewLevel(band, frames, **{**args, **kw})


def fake_run(epoch: int, logs: dict):
    dm = SimpleNamespace(train_frames=None)
    dm.set_train_frames = lambda f: setattr(dm, "train_frames", f)
    trainer = SimpleNamespace(current_epoch=epoch, datamodule=dm)
    module = SimpleNamespace(device=torch.device("cpu"),
                             log=lambda k, v, **_: logs.__setitem__(k, v))
    return trainer, module


def rot_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    tr = (a[:, :, :3].double().transpose(1, 2) @ b[:, :, :3].double()).diagonal(0, 1, 2).sum(-1)
    return torch.acos(((tr - 1) / 2).clamp(-1, 1))


def run_epoch(level: ViewLevel, epoch: int, psnr_of) -> tuple[Frames, dict]:
    """One AL epoch through the hooks; every frame f gets rays with MSE 10^(-psnr_of(f)/10)."""
    logs: dict = {}
    trainer, module = fake_run(epoch, logs)
    level.on_train_epoch_start(trainer, module)
    frames = trainer.datamodule.train_frames
    cam = torch.arange(len(frames)).repeat(3)
    psnr = torch.tensor([psnr_of(f) for f in range(len(frames))], dtype=torch.float64)
    level.observe(cam, 10 ** (-psnr[cam] / 10))
    level.on_train_epoch_end(trainer, module)
    return frames, logs


def test_view_pool_keeps_lowest_psnr_views():
    real = orbit_frames()
    lv = view_level(real)
    n_real = len(real)
    frames, logs = run_epoch(lv, 0, lambda f: 40.0 - 0.5 * ((f * 7) % 23))
    assert len(frames) == n_real + 20 and frames.images is None
    drawn = torch.arange(n_real, n_real + 20)
    psnr = torch.tensor([40.0 - 0.5 * ((f * 7) % 23) for f in drawn.tolist()])
    hard = drawn[torch.argsort(psnr, stable=True)[:4]]  # ceil(0.2 * 20)
    assert torch.allclose(lv.pool["psnr"], torch.sort(psnr).values[:4], atol=1e-4)
    assert torch.equal(lv.pool["c2w"], frames.c2w[hard])
    assert logs["al/view_pool_fill"] == pytest.approx(4 / 6)
    assert logs["al/view_hard_psnr"] == pytest.approx(float(psnr.sort().values[:4].mean()), 1e-4)
    old = lv.pool["psnr"].clone()
    run_epoch(lv, 1, lambda f: 35.0 + 0.1 * f)  # pool not full yet: all random views again
    new = torch.tensor([35.0 + 0.1 * f for f in range(n_real, n_real + 20)]).sort().values[:4]
    assert torch.allclose(lv.pool["psnr"], torch.cat([old, new]).sort().values[:6], atol=1e-4)


def test_view_perturbed_poses_within_rotation_bound_and_band():
    real = orbit_frames()
    lv = view_level(real)
    band = lv.band
    assert band.el_lo >= 0.2 - 1e-6 and band.el_hi <= 0.8 + 1e-6 and band.r_lo >= 3.5
    for e in range(3):  # the pool fills (6 slots, 4 per epoch)
        run_epoch(lv, e, lambda f: float(f % 13))
    assert lv.fill == 6
    frames, parent = lv.draw(3)
    assert (parent == -2).sum() == len(real) and (parent >= 0).sum() == 10
    assert band.contains(frames.c2w[parent != -2]).all()
    kids = parent >= 0
    ang = rot_angle(frames.c2w[kids], lv.pool["c2w"][parent[kids]])
    assert (ang <= ANGLE + 1e-4).all() and (ang > 0).all()
    # random views look at the origin; intrinsics come from real frames
    rnd = frames.c2w[parent == -1]
    assert torch.allclose(rnd[:, :, 2], rnd[:, :, 3] / rnd[:, :, 3].norm(dim=-1, keepdim=True),
                          atol=1e-5)
    assert torch.equal(frames.hw[parent == -1], real.hw[: int((parent == -1).sum())])
    # forward-facing: inside the grown box of the centres, rotated about the camera centre
    ff = Frames(real.c2w.clone(), real.intrinsics, real.hw)
    ff.c2w[:, :, :3] = torch.eye(3)
    ff.c2w[:, :, 3] = torch.rand(len(ff), 3) * 0.4
    fb = CameraBand.from_frames(ff.c2w, forward_facing=True)
    g = torch.Generator().manual_seed(1)
    pos = fb.sample(50, g)
    assert fb.contains(pos).all() and torch.allclose(pos[:, :, :3], torch.eye(3).expand(50, 3, 3),
                                                     atol=1e-5)
    moved = fb.perturb(pos, ANGLE, g)
    assert torch.equal(moved[:, :, 3], pos[:, :, 3])
    assert (rot_angle(moved, pos) <= ANGLE + 1e-4).all()


def test_view_resample_mode_and_identical_draws():
    real = orbit_frames()
    a, b = view_level(real, mode="resample"), view_level(real, mode="resample")
    for lv in (a, b):
        run_epoch(lv, 0, lambda f: float(f % 5))
    fa, pa = a.draw(1)
    fb, pb = b.draw(1)
    assert torch.equal(fa.c2w, fb.c2w) and torch.equal(pa, pb)  # same (seed, epoch) -> same
    assert a.fill == 6 and (pa >= 0).sum() == 10 and a.temperature(50) == a.t_min


def test_ray_pool_keeps_worst_rays():
    lv = RayLevel(hard_fraction=0.25, pool_batches=2, add_fraction=0.25)
    pool: list[tuple[float, float]] = []  # reference: (err, id)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        ids = torch.arange(8, dtype=torch.float32) + 100 * step
        o = torch.stack([ids, torch.zeros(8), torch.zeros(8)], -1)
        o2, d2 = lv.augment(o, o.clone())
        n_add = o2.shape[0] - 8
        assert n_add == (2 if step >= 2 else 0) and torch.equal(o2[:8], o)
        err = torch.rand(o2.shape[0], generator=g)
        drawn = set(o2[8:, 0].tolist())
        cand = sorted(zip(err.tolist(), o2[:, 0].tolist(), strict=True), reverse=True)[:2]
        pool = sorted([p for p in pool if p[1] not in drawn] + cand, reverse=True)[:4]
        lv.observe(o2, d2, err)
        assert lv.fill <= lv.capacity == 4
        assert sorted(lv.o[:, 0].tolist()) == sorted(p[1] for p in pool)
        assert torch.allclose(lv.err.sort().values, torch.tensor(sorted(p[0] for p in pool)))
    assert lv.last_share == pytest.approx(2 / 10)
    buf = io.BytesIO()  # checkpoint round trip
    torch.save(lv.state_dict(), buf)
    lv2 = RayLevel(hard_fraction=0.25, pool_batches=2, add_fraction=0.25)
    lv2.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(lv2.o, lv.o) and torch.equal(lv2.err, lv.err) and lv2.full


def test_point_mask_top_weights_and_opaque_rays():
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    t_w = torch.tensor([[.1, .5, .2, .05, .05], [.1, .1, .05, .05, 0], [0, .2, .6, .1, 0]])
    s_w = torch.tensor([[.6, .1, .1, .0, .0], [.9, 0, 0, 0, 0], [0, .1, .1, .1, 0]])
    idx = torch.nonzero(mask)
    samples = Samples(mask, torch.zeros(3, 5), torch.ones(3, 5), torch.zeros(len(idx), 3),
                      torch.zeros(len(idx), 3), idx[:, 0])
    sel = PointLevel(0.3, 0.5).select(t_w, s_w, samples)
    # ray 0: teacher {1, 2} (ceil(.3*5)=2), student {0, 1}; ray 1: teacher transparent (0.3),
    # student {0, 1}; ray 2: teacher {2} (ceil(.3*3)=1), student too transparent (0.3)
    want = torch.zeros(3, 5, dtype=torch.bool)
    want[0, :3] = want[1, :2] = want[2, 2] = True
    assert torch.equal(sel, want[mask])
    only_t = PointLevel(0.3, 0.5, use_student=False).select(t_w, s_w, samples)
    assert not only_t[samples.ray_indices == 1].any()


def test_config_validation_and_none_untouched(tmp_path):
    cfg = compose_cfg("distill", tmp_path, tmp_path,
                      ["al=none", "al.view.enabled=true", "al.ray.enabled=true"])
    assert check_al(cfg.al)["view"]["enabled"] and not cfg.al.point.enabled
    for key, val in (("ray.hard_fraction", 1.5), ("view.pool_size", -1), ("view.mode", "x"),
                     ("point.top_fraction", -0.1), ("ray.pool_batches", 2.5)):
        bad = compose_cfg("distill", tmp_path, tmp_path, [f"al.{key}={val}"])
        with pytest.raises(ConfigError, match=f"al.{key}"):
            check_al(bad.al)
    none = compose_cfg("distill", tmp_path, tmp_path, ["al=none"])
    assert build_levels(none.al, None, None, none) == ({}, [])
    rays = torch.rand(8, 3)  # a level with an empty pool passes batches through as they are
    o, d = RayLevel().augment(rays, rays)
    assert o is rays and d is rays


# --- distill.run (tiny ngp -> ngp; conftest's distill_cfg reuses one session-wide teacher) ------
def pool_digest(pool: dict) -> str:
    h = hashlib.sha256()
    for k in ("c2w", "intrinsics", "hw", "psnr"):
        h.update(pool[k].contiguous().numpy().tobytes())
    return h.hexdigest()


class PoolDump(pl.Callback):
    """Writes, per rank, the view pool digest at train start and end (and the ray pool fill)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def _dump(self, trainer, tag: str) -> None:
        lv = {type(c).__name__: c for c in trainer.callbacks}
        view, ray = lv.get("ViewLevel"), lv.get("RayLevel")
        frames = trainer.datamodule.train_frames
        rec = {"view": pool_digest(view.pool) if view else None,
               "view_fill": view.fill if view else 0,
               "frames": hashlib.sha256(frames.c2w.numpy().tobytes()).hexdigest(),
               "ray_fill": ray.fill if ray else 0}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{tag}_rank{trainer.global_rank}.json").write_text(json.dumps(rec))

    def on_train_start(self, trainer, pl_module) -> None:
        self._dump(trainer, "start")

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, "end")


def dump_overrides(path: Path) -> list[str]:
    return [f"+callbacks.al_dump._target_={__name__}.PoolDump", f"+callbacks.al_dump.out={path}"]


@pytest.mark.parametrize("al", ["none", "view", "ray", "point", "full"])
def test_every_al_option_runs(al, distill_cfg, tmp_path):
    cfg = distill_cfg("ngp", [f"al={al}", *TINY_AL])
    result = distill.run(cfg)
    assert result["steps"] == 8 and math.isfinite(result["student_vs_teacher_psnr"])
    rows = list(csv.DictReader(next((tmp_path / "run").rglob("metrics.csv")).read_text()
                               .splitlines()))
    logged = {k for r in rows for k, v in r.items() if v and k.startswith("al/")}
    want = {"none": set(), "view": {"al/view_pool_fill", "al/view_hard_psnr"},
            "ray": {"al/ray_pool_fill", "al/ray_hard_share"}, "point": {"al/point_kept"}}
    assert logged == (set().union(*want.values()) if al == "full" else want[al])
    if al != "full":
        return
    # the pools are in the checkpoint, and a resumed run starts from exactly them
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    saved = state["callbacks"]
    assert saved["ViewLevel"]["pool"]["psnr"].numel() == 2 and saved["RayLevel"]["err"].numel()
    resumed = distill_cfg("ngp", ["al=full", *TINY_AL, "ckpt_path=last", "trainer.max_steps=12",
                                  *dump_overrides(tmp_path / "d")])
    assert distill.run(resumed)["steps"] == 12
    start = json.loads((tmp_path / "d" / "start_rank0.json").read_text())
    assert start["view"] == pool_digest(saved["ViewLevel"]["pool"])
    assert start["ray_fill"] == saved["RayLevel"]["err"].numel()


class ViewOnly(pl.LightningModule):
    """A stand-in student: per-ray error that favours different views on each rank, so only the
    all-reduce of the per-view sums can make the ranks agree on the hard views."""

    def __init__(self, level: ViewLevel) -> None:
        super().__init__()
        self.lin, self.al = torch.nn.Linear(3, 3), {"view": level}

    def training_step(self, batch, batch_idx):
        # the datamodule turned the loader's placeholder into this step's rays
        mse = (self.lin(batch["rays_d"]) - batch["rays_d"].abs()).square().mean(-1)
        skew = ((batch["cam"] % 2) == self.global_rank).float() * (1 + batch["cam"] % 3)
        self.al["view"].observe(batch["cam"], mse.detach() + skew)
        return mse.mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_ddp_ranks_share_the_view_pool(tiny_cfg, tmp_path):
    """Two CPU processes (ddp_spawn): every rank ends with the same view pool and poses."""
    from pvdal.tasks.train import build_datamodule

    cfg = tiny_cfg("distill", ["al=view", *TINY_AL, "al.view.n_views=8"], arch="")
    dm = build_datamodule(cfg)
    view = build_levels(cfg.al, dm, None, cfg)[0]["view"]
    trainer = pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=8,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False,
                         limit_val_batches=0, callbacks=[view, PoolDump(str(tmp_path / "d"))])
    trainer.fit(ViewOnly(view), datamodule=dm)
    r0, r1 = (json.loads((tmp_path / "d" / f"end_rank{r}.json").read_text()) for r in (0, 1))
    assert r0["view"] == r1["view"] and r0["frames"] == r1["frames"]
    assert r0["view_fill"] == 2
