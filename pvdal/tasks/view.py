"""``view.py``: serve a live web viewer of one checkpoint (any file ``eval.py`` reads).

The dataset cameras (and their ground truth) come from ``data=...`` or the data config stored in
the checkpoint; a file without one (an imported TensoRF, an export) is still viewable, only
without the camera list.
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from pvdal.tasks.common import check_ranges, writable_output_dir
from pvdal.tasks.evaluate import load_checkpoint, load_data, pick_device
from pvdal.utils.errors import ConfigError, PvdalError

log = logging.getLogger("pvdal")

VIEW_RANGES = {"chunk": (1, None), "n_samples": (2, None), "view.port": (0, 65535),
               "view.resolution": (16, 4096), "view.coarse": (1, 64)}


def run(cfg: DictConfig):
    """Start the viewer; block until Ctrl-C (``view.block=true``), else return it."""
    from pvdal.viewer.render import ViewTarget
    from pvdal.viewer.server import Viewer, dataset_cameras

    check_ranges(cfg, VIEW_RANGES)
    out = writable_output_dir(cfg)
    lf = load_checkpoint(cfg, pick_device(cfg))
    try:
        data, _ = load_data(cfg, lf)
    except PvdalError as e:
        if cfg.get("data") is not None:
            raise
        if not isinstance(e, ConfigError):
            log.warning("view: no dataset cameras (%s)", e)
        data = None
    target = ViewTarget.of(lf, data.ndc if data is not None else None)
    if cfg.get("n_samples") is not None:
        target = target.with_(n_samples=int(cfg.n_samples))
    v = cfg.view
    viewer = Viewer({"field": target}, dataset_cameras(data), str(v.host), int(v.port),
                    int(v.resolution), int(v.coarse), int(cfg.get("chunk", 4096)),
                    out_dir=out)
    log.info("view: %s (%s), %d dataset cameras", lf.path, lf.arch.get("name"),
             len(viewer.cameras))
    if not v.get("block", True):
        return viewer
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return None
