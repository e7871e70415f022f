"""Loggers: W&B offline (keys, panels, summary, run name), TensorBoard and CSV on a tiny run."""

from __future__ import annotations

from pathlib import Path

from pvdal.tasks import distill


def test_wandb_offline_tensorboard_and_csv(distill_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = distill_cfg("ngp", ["logger=many", "trainer.max_steps=4", "data.steps_per_epoch=2",
                              "distill.stages.feat_end=1", "distill.stages.point_end=2"])
    distill.run(cfg)
    out = Path(cfg.paths.output_dir)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # the offline record stream (protobuf, strings stored as-is) holds the keys, the run name,
    # the group-less run's config and the final summary; panels land as PNG media files
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in ("train/loss", "distill/loss_rgb", "distill/loss_volume", "distill/loss_sigma",
                "val/psnr", "val/psnr_vs_teacher", "final/student/psnr",
                "final/student_vs_teacher_psnr", "ngp2ngp-none", "teacher_sha256"):
        assert key.encode() in record, key
    panels = list((runs[0] / "files").glob("media/images/val/panel*.png"))
    assert panels, "no validation panel image logged"
    # TensorBoard: scalars + the same panel; CSV: scalars, panels as PNGs in the run dir
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    csv_text = next(out.glob("csv/version_*/metrics.csv")).read_text()
    assert "distill/loss_rgb" in csv_text and "val/psnr" in csv_text
    assert list((out / "val").glob("step*.png"))


def test_training_steps_log_every_n_steps(distill_cfg):
    """Per-step values are logged (self.log, ~1 ms each) only on the steps the logger writes."""
    import csv

    import pytorch_lightning as pl

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.seen: list[bool] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append(module.log_step())

    cfg = distill_cfg("ngp", ["trainer.max_steps=8", "trainer.log_every_n_steps=3",
                              "data.steps_per_epoch=8"])
    rec = Record()
    distill.run(cfg, [rec])
    assert rec.seen == [s % 3 == 2 for s in range(8)]  # steps 2 and 5
    rows = csv.DictReader(next(Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv")).open())
    assert {int(r["step"]) for r in rows if r.get("distill/loss_rgb")} == {2, 5}
