"""Image metrics. LPIPS needs pretrained backbone weights that no package ships offline, so it is
reported as ``None`` (with one log line saying why) unless the optional ``lpips`` package and its
weights are available; it then runs on the device of the images."""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

log = logging.getLogger("pvdal")


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    mse = torch.mean((pred.float() - target.float()) ** 2)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """pred, target: [H, W, 3] in [0, 1]."""
    p = pred.permute(2, 0, 1)[None].float().clamp(0, 1)
    t = target.permute(2, 0, 1)[None].float()
    k = 11 if min(p.shape[-2:]) >= 11 else (min(p.shape[-2:]) // 2) * 2 - 1
    return structural_similarity_index_measure(p, t, data_range=1.0, kernel_size=max(k, 3))


_LPIPS: dict = {}  # device -> network; "error" -> why it cannot run


def lpips(pred: Tensor, target: Tensor) -> float | None:
    """LPIPS (AlexNet) on the images' device when the optional package and its weights load;
    None otherwise, with one log line saying why."""
    if "error" in _LPIPS:
        return None
    dev = pred.device
    try:
        if str(dev) not in _LPIPS:
            import lpips as _lp  # optional, not a dependency

            _LPIPS[str(dev)] = _lp.LPIPS(net="alex", verbose=False).eval().to(dev)
        net = _LPIPS[str(dev)]
        p = pred.permute(2, 0, 1)[None].float() * 2 - 1
        t = target.to(dev).permute(2, 0, 1)[None].float() * 2 - 1
        with torch.no_grad():
            return float(net(p, t))
    except Exception as e:  # not installed, no weights offline, ...
        _LPIPS["error"] = f"{type(e).__name__}: {e}"
        log.info("metrics: lpips is null (%s)", _LPIPS["error"])
        return None
