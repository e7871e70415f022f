"""Field + samples -> pixels. The glue every module uses (training, distillation, eval, render)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pvdal.fields.activation import activate_density
from pvdal.fields.base import FieldOutput, RadianceField
from pvdal.render.march import Samples, march_rays
from pvdal.render.occupancy import OccupancyGrid
from pvdal.render.scene import SceneSpec
from pvdal.render.volrend import composite_packed, packed_weights


@dataclass
class RenderOutput:
    rgb: Tensor  # [n_rays, 3]
    opacity: Tensor  # [n_rays]
    depth: Tensor  # [n_rays]
    weights: Tensor  # [M] compositing weight of each packed sample
    samples: Samples
    field: FieldOutput  # packed per-sample outputs, [M, ...]
    features: Tensor  # [M, feature_dim] explicit features
    sigmas: Tensor  # [M] activated density
    trans: Tensor | None = None  # [M] transmittance in front of each sample
    n_marched: int = 0  # samples the marcher kept, before early termination dropped any


def composite_samples(
    samples: Samples, sigmas: Tensor, rgbs: Tensor, background: Tensor,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Packed weights and compositing of ``samples``: (pixels, weights [M], trans [M])."""
    w, trans = packed_weights(sigmas, samples.starts, samples.ends, samples.ray_indices,
                              samples.n_rays)
    res = composite_packed(w, rgbs, samples.mid, samples.ray_indices, samples.n_rays,
                           background.to(w.device))
    return res, w, trans


def composite_output(
    samples: Samples, out: FieldOutput, background: Tensor,
    density_clamp: tuple[float, float] | None = None,
) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
    """Clamp -> activate -> composite a field's per-sample output ``out`` ([M, ...]):
    (pixels, weights [M], trans [M], densities [M])."""
    sigmas = activate_density(out.sigma_raw, density_clamp)
    res, w, trans = composite_samples(samples, sigmas, out.rgb, background)
    return res, w, trans, sigmas


def render_samples(
    field: RadianceField, samples: Samples, background: Tensor,
    density_clamp: tuple[float, float] | None = None, early_stop_eps: float = 0.0,
) -> RenderOutput:
    """Evaluate ``field`` at ``samples`` and composite. ``density_clamp`` overrides the field's.

    ``early_stop_eps`` > 0 drops the samples behind surfaces (transmittance below it) before
    the colour work: with gradients through a no-grad density pass (``visible_samples``); without
    (rendering) from the same feature lookup, decoding only the visible samples."""
    clamp = density_clamp if density_clamp is not None else field.density_clamp
    n_marched = len(samples)
    if early_stop_eps > 0.0 and torch.is_grad_enabled():
        samples = visible_samples(field, samples, early_stop_eps, clamp)
    feat = field.features(samples.positions)
    if early_stop_eps > 0.0 and not torch.is_grad_enabled() and len(samples):
        keep = _visible(field, feat, samples, early_stop_eps, clamp)
        samples, feat = samples.keep(keep), feat[keep]
    out = field.decode(feat, samples.dirs)
    res, w, trans, sigmas = composite_output(samples, out, background, clamp)
    return RenderOutput(res["rgb"], res["opacity"], res["depth"], w, samples, out, feat,
                        sigmas, trans, n_marched)


@torch.no_grad()
def visible_samples(
    field: RadianceField, samples: Samples, eps: float,
    density_clamp: tuple[float, float] | None = None,
) -> Samples:
    """Early ray termination before the field is evaluated with gradients (nerfacc's
    ``sigma_fn``): a no-grad density pass gives each sample's transmittance, and samples whose
    transmittance is below ``eps`` (behind a surface) are dropped. Together they could change a
    pixel by less than ``eps``, so they are neither evaluated nor back-propagated."""
    if eps <= 0.0 or len(samples) == 0:
        return samples
    clamp = density_clamp if density_clamp is not None else field.density_clamp
    return samples.keep(_visible(field, field.features(samples.positions), samples, eps, clamp))


def _visible(field: RadianceField, feat: Tensor, samples: Samples, eps: float,
             clamp: tuple[float, float] | None) -> Tensor:
    """[M] bool: transmittance in front of each sample (from the density of ``feat``) at least
    ``eps``; a NaN stays, so the NaN guard sees a broken field."""
    _, trans = packed_weights(activate_density(field.density_raw(feat), clamp), samples.starts,
                              samples.ends, samples.ray_indices, samples.n_rays)
    return ~(trans < eps)


def render_rays(
    field: RadianceField, rays_o: Tensor, rays_d: Tensor, scene: SceneSpec,
    grid: OccupancyGrid | None, n_samples: int, background: Tensor, perturb: bool = False,
    early_stop_eps: float = 0.0,
) -> RenderOutput:
    """march -> (early termination) -> field -> composite: the one render path of a ray batch."""
    samples = march_rays(rays_o, rays_d, scene, grid, n_samples, perturb)
    return render_samples(field, samples, background, early_stop_eps=early_stop_eps)


@torch.no_grad()
def render_chunked(
    field: RadianceField, rays_o: Tensor, rays_d: Tensor, scene: SceneSpec,
    grid: OccupancyGrid | None, n_samples: int, background: Tensor, chunk: int = 4096,
    early_stop_eps: float = 1e-4,
) -> dict[str, Tensor]:
    """Render many rays (a whole image) without gradients; returns rgb [R,3], depth, opacity.
    Samples behind surfaces (transmittance < ``early_stop_eps``, nerfacc's default) get no
    colour work."""
    parts: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "opacity": []}
    for o, d in zip(rays_o.split(chunk), rays_d.split(chunk)):
        r = render_rays(field, o, d, scene, grid, n_samples, background,
                        early_stop_eps=early_stop_eps)
        parts["rgb"].append(r.rgb)
        parts["depth"].append(r.depth)
        parts["opacity"].append(r.opacity)
    return {k: torch.cat(v) for k, v in parts.items()}
