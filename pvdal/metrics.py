"""Image metrics. LPIPS needs pretrained backbone weights that no package ships offline, so it is
reported as ``None`` unless the optional ``lpips`` package and its weights are available."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    mse = torch.mean((pred.float() - target.float()) ** 2)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """pred, target: [H, W, 3] in [0, 1]."""
    p = pred.permute(2, 0, 1)[None].float().clamp(0, 1)
    t = target.permute(2, 0, 1)[None].float()
    k = 11 if min(p.shape[-2:]) >= 11 else (min(p.shape[-2:]) // 2) * 2 - 1
    return structural_similarity_index_measure(p, t, data_range=1.0, kernel_size=max(k, 3))


_LPIPS = None


def lpips(pred: Tensor, target: Tensor) -> float | None:
    """LPIPS (AlexNet) when the optional package and its weights load; None otherwise."""
    global _LPIPS
    if _LPIPS is False:
        return None
    try:
        if _LPIPS is None:
            import lpips as _lp  # optional, not a dependency

            _LPIPS = _lp.LPIPS(net="alex", verbose=False)
        p = pred.permute(2, 0, 1)[None] * 2 - 1
        t = target.permute(2, 0, 1)[None] * 2 - 1
        return float(_LPIPS(p.float(), t.float()))
    except Exception:
        _LPIPS = False
        return None
