"""Frames/s of the viewer's render function (pvdal.viewer.render.render_camera).

    python bench/viewer_fps.py CKPT [CKPT ...] [--sizes 160x120 320x240] [--repeats 5]

Renders the first train camera's view (where the viewer starts; the camera's field of view,
the size asked) with each checkpoint's own sample count, chunk 4096, on the CPU; prints one JSON
line per checkpoint and size with the median time over ``--repeats`` frames after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from omegaconf import OmegaConf

from pvdal.tasks.evaluate import load_checkpoint, load_data
from pvdal.viewer.camera import fov_y, intrinsics
from pvdal.viewer.render import ViewTarget, render_camera


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--sizes", nargs="+", default=["160x120", "320x240"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for ckpt in args.ckpts:
        cfg = OmegaConf.create({"ckpt": ckpt, "data": None})
        lf = load_checkpoint(cfg, torch.device("cpu"))
        data, _ = load_data(cfg, lf)
        fr = data.train
        h0 = int(fr.hw[0][0])
        fov = fov_y(float(fr.intrinsics[0][1]), h0)
        target = ViewTarget.of(lf, data.ndc)
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            K = intrinsics(fov, w, h)
            render_camera(target, fr.c2w[0], K, h, w)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                render_camera(target, fr.c2w[0], K, h, w)
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            print(json.dumps({"arch": lf.arch.get("name"), "size": size,
                              "n_samples": lf.n_samples, "median_s": round(t, 4),
                              "fps": round(1.0 / t, 2), "threads": torch.get_num_threads()}),
                  flush=True)


if __name__ == "__main__":
    main()
