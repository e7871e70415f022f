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
from pvdal.render.volrend import composite, packed_render_weights, render_weights, use_nerfacc


@dataclass
class RenderOutput:
    rgb: Tensor  # [n_rays, 3]
    opacity: Tensor  # [n_rays]
    depth: Tensor  # [n_rays]
    weights: Tensor  # [n_rays, S] (0 at skipped samples)
    samples: Samples
    field: FieldOutput  # packed per-sample outputs, [M, ...]
    features: Tensor  # [M, feature_dim] explicit features
    sigmas: Tensor  # [M] activated density


def render_samples(
    field: RadianceField, samples: Samples, background: Tensor,
    density_clamp: tuple[float, float] | None = None,
) -> RenderOutput:
    """Evaluate ``field`` at ``samples`` and composite. ``density_clamp`` overrides the field's."""
    feat = field.features(samples.positions)
    out = field.decode(feat, samples.dirs)
    clamp = density_clamp if density_clamp is not None else field.density_clamp
    sigmas = activate_density(out.sigma_raw, clamp)
    if use_nerfacc(sigmas):
        m = samples.mask
        w_packed = packed_render_weights(sigmas, samples.t_starts[m], samples.t_ends[m],
                                         samples.ray_indices, samples.n_rays)
        weights = samples.scatter(w_packed)
    else:
        weights, _ = render_weights(samples.scatter(sigmas), samples.deltas)
    rgbs = samples.scatter(out.rgb)
    res = composite(weights, rgbs, samples.t_mid, background.to(rgbs))
    return RenderOutput(res["rgb"], res["opacity"], res["depth"], weights, samples, out, feat,
                        sigmas)


def render_rays(
    field: RadianceField, rays_o: Tensor, rays_d: Tensor, scene: SceneSpec,
    grid: OccupancyGrid | None, n_samples: int, background: Tensor, perturb: bool = False,
) -> RenderOutput:
    samples = march_rays(rays_o, rays_d, scene, grid, n_samples, perturb)
    return render_samples(field, samples, background)


@torch.no_grad()
def render_chunked(
    field: RadianceField, rays_o: Tensor, rays_d: Tensor, scene: SceneSpec,
    grid: OccupancyGrid | None, n_samples: int, background: Tensor, chunk: int = 4096,
) -> dict[str, Tensor]:
    """Render many rays (a whole image) without gradients; returns rgb [R,3], depth, opacity."""
    parts: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "opacity": []}
    for o, d in zip(rays_o.split(chunk), rays_d.split(chunk)):
        r = render_rays(field, o, d, scene, grid, n_samples, background)
        parts["rgb"].append(r.rgb)
        parts["depth"].append(r.depth)
        parts["opacity"].append(r.opacity)
    return {k: torch.cat(v) for k, v in parts.items()}
