"""Volume rendering of a density/albedo field: ray-box sampling, importance resampling, shading, compositing.

A field is anything with `forward(x[N,3]) -> (sigma[N], albedo[N,3])` and, for shaded or normal renders,
`forward_with_normal(x) -> (sigma, albedo, normal[N,3])` (NeRFField has both). Rays are sampled between their
entry and exit of the box [-bound, bound]^3; rays that miss it stay empty.
Depth is the expected distance along the ray given that it hits, sum(w t) / opacity, and 0 where the
opacity is below 1e-4 (as the synthetic scenes' depth maps are 0 where empty).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from c123.cameras import Cameras, generate_rays
from c123.compiling import as_now, hot
from c123.errors import GeometryError

SHADINGS = ("albedo", "lambertian", "textureless", "normal")
CHUNK_RAYS = 8192
"""Rays per chunk: bounds the memory of one field evaluation (chunk * samples points)."""


@dataclass
class RenderOutput:
    """Images [B,H,W,C] plus per-ray/per-sample tensors (R = B*H*W rays, S samples) for the regularisers."""

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    weights: torch.Tensor
    sample_normals: torch.Tensor | None
    rays_d: torch.Tensor
    normal_image: torch.Tensor | None = None
    """(n + 1) / 2 composited with detached weights [B,H,W,3] (renderer.py run_cuda's normal_image)."""
    sample_points: torch.Tensor | None = None
    """Sample positions [R,S,3] (for the 3D normal smoothness)."""
    sample_valid: torch.Tensor | None = None
    """bool [R,S]: samples that exist (in occupied cells); None when every sample does."""
    sample_index: torch.Tensor | None = None
    """Flat indices into [R*S] of the samples that exist, in row-major order, when they were compacted
    (OccupancyGrid mode 'compact'); None when every sample exists or empty ones were masked."""


OCCUPANCY_MODES = ("compact", "mask")


def occupancy_mode_for(mode: str, device, grad_chunk: int = 0) -> str:
    """nerf.occupancy_mode on `device`: 'auto' compacts on CPU (the fewest field evaluations; a host sync costs
    nothing there) and on CUDA when the training render is one graph (grad_chunk 0): a graph's bytes are those
    of the samples evaluated, about 64 KB each (docs/METHOD.md section 7), so masking, which evaluates the empty
    samples too, would hold them all; with checkpointed chunks (grad_chunk > 0) a chunk bounds the memory either
    way, and CUDA masks (no host sync, fixed shapes for compiled code)."""
    if mode == "auto":
        return "mask" if torch.device(device).type == "cuda" and grad_chunk > 0 else "compact"
    return mode


class OccupancyGrid:
    """The density grid of the official `-O` (cuda_ray) renderer: samples outside occupied cells are skipped.

    Each update (nerf/renderer.py update_extra_state) evaluates the density at one jittered point per cell,
    keeps max(0.95 * old, new) per cell and their mean (`mean_density`), and marks a cell occupied when it
    exceeds min(mean_density, density_threshold). Before the first update every cell is occupied.

    mode 'compact': only the occupied samples reach the field (the fewest evaluations; one host sync per render
    pass reads how many there are); 'mask': every sample is evaluated and the empty ones are zeroed (no host
    sync, fixed shapes; costs an evaluation per empty sample). Both give the same image.
    """

    def __init__(self, bound: float, resolution: int = 128, density_threshold: float = 10.0, decay: float = 0.95,
                 device=None, mode: str = "compact"):
        if mode not in OCCUPANCY_MODES:
            raise ValueError(f"unknown occupancy mode '{mode}': use one of {OCCUPANCY_MODES}")
        self.bound, self.resolution, self.decay, self.mode = bound, resolution, decay, mode
        self.density_threshold = density_threshold
        self.density = torch.zeros(resolution, resolution, resolution, device=device)
        self.mask = torch.ones(resolution, resolution, resolution, dtype=torch.bool, device=device)
        self.mean = torch.zeros((), device=device)
        """mean_density as a tensor on the grid's device (reading it as a float waits for the device)."""

    @property
    def mean_density(self) -> float:
        return float(self.mean)

    @torch.no_grad()
    def update(self, field, generator: torch.Generator | None = None) -> None:
        """Re-probe the field's density in every cell and refresh the mean and the mask (no host sync)."""
        r, device = self.resolution, self.density.device
        axis = torch.arange(r, device=device, dtype=torch.float32)
        cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        half = self.bound / r
        centres = (2 * cells / max(r - 1, 1) - 1) * (self.bound - half)
        jitter = (torch.rand(cells.shape, generator=generator, device=generator.device if generator else device)
                  .to(cells) * 2 - 1) * half
        x = centres + jitter
        sigma = torch.cat([field.density(x[i:i + CHUNK_RAYS * 8]) for i in range(0, x.shape[0], CHUNK_RAYS * 8)])
        self.density = torch.maximum(self.density * self.decay, sigma.reshape(r, r, r).float())
        self.mean = self.density.mean()
        self.mask = self.density > self.mean.clamp(max=self.density_threshold)

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        """bool[N]: whether points x[N,3] lie in occupied cells."""
        idx = ((x + self.bound) / (2 * self.bound) * self.resolution).long().clamp(0, self.resolution - 1)
        return self.mask[idx[:, 0], idx[:, 1], idx[:, 2]]

    def state_dict(self) -> dict:
        return {"density": self.density, "mean_density": self.mean_density, "mask": self.mask}

    def load_state_dict(self, state: dict) -> None:
        self.density, self.mask = state["density"], state["mask"]
        self.mean = torch.as_tensor(float(state["mean_density"]), device=self.density.device)


def indices_of(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the True entries of a flat bool `mask` in ascending order, when the host already knows
    there are `count` of them: `mask.nonzero()` without its host sync (torch.nonzero_static: sync-free on CUDA
    since torch 2.6, and one pass, where a cumsum + scatter took four over the whole mask)."""
    return torch.nonzero_static(mask, size=count).squeeze(1)


def near_far_box(rays_o: torch.Tensor, rays_d: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R] of rays through the box [-bound, bound]^3 (near == far where they miss)."""
    inv = 1.0 / torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9), rays_d)
    t0, t1 = (-bound - rays_o) * inv, (bound - rays_o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, torch.maximum(far, near)


def _sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, u: torch.Tensor | None) -> torch.Tensor:
    """n samples [R,n] from the piecewise-constant pdf given by `weights` [R,B] over `bins` [R,B+1], at the
    quantiles u [R,n] in [0,1) (None: n evenly spaced quantiles)."""
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), pdf.cumsum(-1)], -1).clamp(max=1.0)
    if u is None:
        u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=bins.device, dtype=bins.dtype).expand(bins.shape[0], n)
    idx = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    b0, b1 = bins.gather(-1, idx - 1), bins.gather(-1, idx)
    t = ((u - c0) / (c1 - c0).clamp(min=1e-8)).clamp(0, 1)
    return b0 + t * (b1 - b0)


def _composite(sigma: torch.Tensor, z: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Compositing weights [R,S] for densities at sorted distances z[R,S]; the last sample extends to far."""
    deltas = torch.cat([z[:, 1:] - z[:, :-1], (far[:, None] - z[:, -1:]).clamp(min=0)], -1)
    alpha = 1.0 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    return alpha * trans


@dataclass
class Pass:
    """One pass of field evaluations at samples [R,S] of a chunk of rays."""

    x: torch.Tensor
    sigma: torch.Tensor
    albedo: torch.Tensor
    normal: torch.Tensor | None
    valid: torch.Tensor | None
    """bool [R,S]: samples in occupied cells (None: no occupancy grid)."""
    count: int | None
    """How many samples are valid, when they were compacted (host int), else None."""


def _eval(field, x: torch.Tensor, with_normal: bool, occupancy: OccupancyGrid | None, shape) -> Pass:
    """The field at points x[N,3] (N = prod(shape)); samples in empty cells get zero density, albedo and normal."""
    if occupancy is None:
        outs = field.forward_with_normal(x) if with_normal else (*field(x), None)
        valid, count = None, None
    elif occupancy.mode == "mask":
        valid = occupancy.occupied(x)
        outs = field.forward_with_normal(x) if with_normal else (*field(x), None)
        outs = tuple(None if v is None else torch.where(valid.view(-1, *([1] * (v.dim() - 1))), v, 0.0)
                     for v in outs)
        count = None
    else:
        valid = occupancy.occupied(x)
        keep = valid.nonzero().squeeze(1)  # the pass's one host sync: how many samples exist
        count = keep.shape[0]
        points = x.index_select(0, keep)
        outs = field.forward_with_normal(points) if with_normal else (*field(points), None)
        n = x.shape[0]
        outs = tuple(None if v is None else v.new_zeros(n, *v.shape[1:]).index_put((keep,), v) for v in outs)
    sigma, albedo, normal = outs
    return Pass(x.reshape(*shape, 3), sigma.reshape(shape), albedo.reshape(*shape, 3),
                None if normal is None else normal.reshape(*shape, 3),
                None if valid is None else valid.reshape(shape), count)


def _shade(albedo, normal, shading, light_dir, ambient, textureless=None):
    if shading == "albedo":
        return albedo
    if shading == "normal":
        return (normal + 1.0) / 2.0
    lambert = ambient + (1.0 - ambient) * (normal * light_dir[:, None, :]).sum(-1, keepdim=True).clamp(min=0.0)
    if shading == "textureless":
        return lambert.expand_as(albedo)
    if textureless is not None:  # decided on the device: lambert alone, or times the albedo
        return lambert * torch.where(textureless, 1.0, albedo)
    return albedo * lambert


@dataclass(frozen=True)
class RaySettings:
    """How a render samples and shades its rays: the static options of render_nerf / render_rays, the same for
    every chunk (plain values: a compiled chunk specialises on them as constants)."""

    shading: str = "albedo"
    """One of SHADINGS."""
    num_samples: int = 64
    """Stratified samples per ray."""
    num_importance: int = 0
    """Importance samples per ray (0: none)."""
    need_normals: bool = False
    """Compute the field's normals even under albedo shading (for a normal-based regulariser)."""
    perturb: bool = True
    """Jitter the stratified samples and draw the importance quantiles (False: bin centres, even quantiles)."""
    bound: float | None = None
    """Half the side of the box the samples are clamped to (None: the field's bound)."""
    check_finite: bool = True
    """Raise GeometryError on a non-finite render (a host sync; the training loop checks its loss periodically
    instead)."""
    grad_chunk: int = 0
    """With gradients on: 0 renders all rays as one graph; N > 0 renders checkpointed chunks of N rays (see
    render_rays)."""

    def __post_init__(self):
        if self.shading not in SHADINGS:
            raise ValueError(f"unknown shading '{self.shading}': use one of {SHADINGS}")

    @property
    def with_normal(self) -> bool:
        """Whether the field's normals are evaluated (shading other than albedo, or need_normals)."""
        return self.need_normals or self.shading != "albedo"


def render_rays(field, rays_o: torch.Tensor, rays_d: torch.Tensor, settings: RaySettings = RaySettings(), *,
                light_dir: torch.Tensor | None = None, ambient=1.0, bg_color: torch.Tensor | None = None,
                occupancy: OccupancyGrid | None = None, generator: torch.Generator | None = None,
                textureless: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Render rays [R,3] (unit directions) as `settings` say: dict of rgb[R,3], opacity[R,1], depth[R,1],
    normal[R,3], weights[R,S], and, when normals are computed, sample_normals[R,S,3], normal_image[R,3]
    ((n+1)/2 under detached weights), sample_points[R,S,3]; sample_valid[R,S] when an occupancy grid skips
    samples, and sample_index (see RenderOutput) when it compacts them.

    light_dir: [3] or [R,3] unit vectors towards the light (default: towards the ray origin); ambient: float,
    0-dim tensor or [R]; bg_color: [3] or [R,3] (default white); occupancy: skip samples in its empty cells;
    textureless: a bool 0-dim tensor that turns 'lambertian' into 'textureless' on the device (no host read).

    With gradients on and settings.grad_chunk 0, all rays form one chunk (the graph keeps every chunk's tensors
    until backward anyway); with grad_chunk N > 0, chunks of N rays whose field passes are recomputed in the backward
    (torch.utils.checkpoint): only the chunks' outputs stay alive; the random numbers are drawn for all rays
    first, as one chunk draws them, so the result is the one-chunk result up to float rounding. Without
    gradients, chunks of CHUNK_RAYS rays bound the memory.
    """
    R = rays_o.shape[0]
    if settings.bound is None:
        settings = replace(settings, bound=field.bound)
    if light_dir is None:
        light_dir = F.normalize(rays_o, dim=-1)
    light_dir = light_dir.to(rays_o).expand(R, 3)
    ambient = torch.as_tensor(ambient, dtype=rays_o.dtype, device=rays_o.device).expand(R)[:, None, None]
    bg = torch.ones(3, device=rays_o.device, dtype=rays_o.dtype) if bg_color is None else bg_color.to(rays_o)
    bg = bg.expand(R, 3)
    chunks = []
    grad_chunk = settings.grad_chunk
    if torch.is_grad_enabled() and grad_chunk > 0:
        jitter, u = _draw(R, settings, generator, rays_o)
        for s in range(0, R, grad_chunk):
            e = min(R, s + grad_chunk)
            chunks.append(recomputed(_chunk_work, field, rays_o[s:e], rays_d[s:e], light_dir[s:e], ambient[s:e],
                                     settings, occupancy, textureless, None if jitter is None else jitter[s:e],
                                     None if u is None else u[s:e]))
    else:
        step = R if torch.is_grad_enabled() else CHUNK_RAYS
        for s in range(0, R, step):
            e = min(R, s + step)
            chunks.append(_render_chunk(field, rays_o[s:e], rays_d[s:e], light_dir[s:e], ambient[s:e], settings,
                                        occupancy, generator, textureless))
    if len(chunks) == 1:
        out = chunks[0]
    else:
        out = {k: torch.cat([c[k] for c in chunks]) if chunks[0][k] is not None else None for k in chunks[0]}
        out["sample_index"] = _join_indices([c["sample_index"] for c in chunks], [c["weights"] for c in chunks])
    if settings.check_finite and not (torch.isfinite(out["sigma_max"]).all() and torch.isfinite(out["rgb"]).all()
                             and torch.isfinite(out["depth"]).all()):
        # densities (inf survives compositing) and the composited outputs (NaN): one host sync per render
        raise GeometryError("the field produced non-finite densities or colours (NaN/inf): lower the learning "
                            "rate or check the inputs")
    del out["sigma_max"]
    out["rgb"] = out["rgb"] + (1.0 - out["opacity"]) * bg
    return out


def checkpointed_rows(fn, x: torch.Tensor, rows: int) -> torch.Tensor:
    """fn(x) for a row-wise fn, computed `rows` rows at a time with each chunk recomputed in the backward
    (torch.utils.checkpoint): the graph of one chunk instead of all of x; rows 0 or no gradients: fn(x)."""
    if rows <= 0 or not torch.is_grad_enabled() or x.shape[0] <= rows:
        return fn(x)
    return torch.cat([recomputed(fn, x[s:s + rows]) for s in range(0, x.shape[0], rows)])


def recomputed(fn, *args):
    """fn(*args) whose graph is not kept but recomputed in the backward (torch.utils.checkpoint, non-reentrant).
    The recomputation runs compiled or eager as this forward did (c123.compiling.as_now), and draws no random
    numbers: the callers pass them in (no RNG state to save)."""
    return checkpoint(as_now(fn), *args, use_reentrant=False, preserve_rng_state=False)


def _join_indices(indices, weights) -> torch.Tensor | None:
    """Flat sample indices of chunks as indices into the concatenated [R*S] samples."""
    if indices[0] is None:
        return None
    out, offset = [], 0
    for index, w in zip(indices, weights):
        out.append(index + offset)
        offset += w.numel()
    return torch.cat(out)


def _draw(rays: int, settings: RaySettings, generator, like: torch.Tensor):
    """The random numbers of `rays` rays: (jitter [rays,num_samples], u [rays,num_importance]), None when not
    perturbed. Drawn per CHUNK_RAYS rays in the order the passes use them (jitter, then importance quantiles),
    so rays drawn in one go or chunk by chunk get the same numbers."""
    where = generator.device if generator is not None else like.device
    jitter, u = [], []
    for s in range(0, rays, CHUNK_RAYS):
        n = min(CHUNK_RAYS, rays - s)
        if settings.perturb:
            jitter.append(torch.rand(n, settings.num_samples, generator=generator, dtype=like.dtype, device=where))
        if settings.perturb and settings.num_importance > 0:
            u.append(torch.rand(n, settings.num_importance, generator=generator, dtype=like.dtype, device=where))
    return (torch.cat(jitter).to(like.device) if jitter else None), (torch.cat(u).to(like.device) if u else None)


def _render_chunk(field, rays_o, rays_d, light_dir, ambient, settings: RaySettings, occupancy, generator,
                  textureless):
    """Draw the chunk's random numbers (`_draw`), then do its work."""
    jitter, u = _draw(rays_o.shape[0], settings, generator, rays_o)
    return _chunk_work(field, rays_o, rays_d, light_dir, ambient, settings, occupancy, textureless, jitter, u)


@hot
def _chunk_work(field, rays_o, rays_d, light_dir, ambient, settings: RaySettings, occupancy, textureless, jitter, u):
    """A chunk's samples, field passes and compositing; jitter [R,S] and u [R,num_importance]: the random
    numbers of the stratified and importance samples (None: bin centres / evenly spaced quantiles)."""
    shading, num_samples, num_importance = settings.shading, settings.num_samples, settings.num_importance
    with_normal, bound = settings.with_normal, settings.bound
    near, far = near_far_box(rays_o, rays_d, bound)
    z = _stratified(near, far, rays_o, num_samples, jitter)
    coarse = _eval(field, _points(rays_o, rays_d, z, bound).reshape(-1, 3), with_normal, occupancy, z.shape)
    x, sigma, albedo, normal, valid, count = (coarse.x, coarse.sigma, coarse.albedo, coarse.normal, coarse.valid,
                                              coarse.count)
    if num_importance > 0:
        with torch.no_grad():
            z_new = _importance(z, sigma, far, num_importance, u)
        fine = _eval(field, _points(rays_o, rays_d, z_new, bound).reshape(-1, 3), with_normal, occupancy,
                     z_new.shape)
        z, order = torch.sort(torch.cat([z, z_new], -1), -1)
        x, sigma, albedo, normal, valid = (_merge(a, b, order) for a, b in ((x, fine.x), (sigma, fine.sigma),
                                           (albedo, fine.albedo), (normal, fine.normal), (valid, fine.valid)))
        count = None if count is None else count + fine.count
    sample_index = None if count is None else indices_of(valid.reshape(-1), count)
    weights = _composite(sigma, z, far)
    color = _shade(albedo, normal, shading, light_dir, ambient, textureless)
    opacity = weights.sum(-1, keepdim=True)
    wz = (weights * z).sum(-1, keepdim=True)
    depth = torch.where(opacity > 1e-4, wz / opacity.clamp(min=1e-4), torch.zeros_like(wz))
    normal_map = (weights[..., None] * normal).sum(-2) if normal is not None else torch.zeros_like(rays_o)
    # the normal regulariser's image sees the geometry only through the normals (detached density)
    normal_image = (weights.detach()[..., None] * (normal + 1.0) / 2.0).sum(-2) if normal is not None else None
    return {"rgb": (weights[..., None] * color).sum(-2), "opacity": opacity, "depth": depth,
            "normal": normal_map, "weights": weights, "sample_normals": normal, "normal_image": normal_image,
            "sample_points": x.detach() if normal is not None else None, "sample_valid": valid,
            "sample_index": sample_index, "sigma_max": sigma.detach().amax(-1)}


def _stratified(near, far, rays_o, num_samples: int, jitter: torch.Tensor | None) -> torch.Tensor:
    """num_samples distances per ray [R,S] in [near, far): one per equal bin, at jitter in [0,1) within it
    (None: the bin centres)."""
    steps = torch.arange(num_samples, device=rays_o.device, dtype=rays_o.dtype)
    steps = steps + jitter if jitter is not None else (steps + 0.5).expand(rays_o.shape[0], num_samples)
    return near[:, None] + (far - near)[:, None] * steps / num_samples


def _points(rays_o, rays_d, z, bound: float) -> torch.Tensor:
    """Sample positions [R,S,3] at distances z along the rays, clamped to the box."""
    return (rays_o[:, None, :] + z[..., None] * rays_d[:, None, :]).clamp(-bound, bound)


def _importance(z, sigma, far, num_importance: int, u: torch.Tensor | None) -> torch.Tensor:
    """Importance samples [R,num_importance] from the coarse pass's compositing weights (u: see _sample_pdf)."""
    weights = _composite(sigma, z, far)
    bins = torch.cat([z, far[:, None]], -1)
    return _sample_pdf(bins, weights, num_importance, u)


def _merge(a, b, order):
    """Coarse and fine samples side by side [R,S1+S2,...], in the order that sorts their distances."""
    if a is None:
        return None
    both = torch.cat([a, b], 1)
    return both.gather(1, order.reshape(*order.shape, *([1] * (both.dim() - 2))).expand_as(both))


def render_nerf(field, cams: Cameras, height: int, width: int, settings: RaySettings = RaySettings(), *,
                light_dir: torch.Tensor | None = None, ambient=1.0, bg_color: torch.Tensor | None = None,
                occupancy: OccupancyGrid | None = None, generator: torch.Generator | None = None,
                ray_jitter: tuple[torch.Tensor, torch.Tensor] | None = None,
                textureless: torch.Tensor | None = None) -> RenderOutput:
    """Render B cameras at height x width as `settings` say; light_dir [B,3] defaults to the direction towards
    each camera.

    bg_color: [3], per camera [B,3] or per pixel [B,H,W,3]; ray_jitter: offsets ([3], [3]) added to every
    ray's origin and direction (the official reference-view camera noise); textureless: see render_rays."""
    B = len(cams)
    rays_o, rays_d = generate_rays(cams, height, width)
    if ray_jitter is not None:
        rays_o = rays_o + ray_jitter[0].to(rays_o)
        rays_d = F.normalize(rays_d + ray_jitter[1].to(rays_d), dim=-1)
    per_ray = height * width

    def per_camera(v, dim):
        # broadcast a per-camera value ([B,dim] or [dim] or scalar) to every ray of its camera
        v = torch.as_tensor(v, dtype=rays_o.dtype, device=rays_o.device)
        if v.dim() == 0 or (dim and v.dim() == 1):
            return v
        if v.numel() == B * per_ray * max(dim, 1):
            return v.reshape(B * per_ray, *([dim] if dim else []))
        return v.reshape(B, *([dim] if dim else [])).repeat_interleave(per_ray, 0)

    light = None if light_dir is None else per_camera(F.normalize(light_dir.to(rays_o), dim=-1), 3)
    bg = None if bg_color is None else per_camera(bg_color, 3)
    out = render_rays(field, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), settings, light_dir=light,
                      ambient=per_camera(ambient, 0), bg_color=bg, occupancy=occupancy, generator=generator,
                      textureless=textureless)
    img = {k: out[k].reshape(B, height, width, -1) for k in ("rgb", "opacity", "depth", "normal")}
    normal_image = None if out["normal_image"] is None else out["normal_image"].reshape(B, height, width, 3)
    return RenderOutput(img["rgb"], img["opacity"], img["depth"], img["normal"], out["weights"],
                        out["sample_normals"], rays_d.reshape(-1, 3), normal_image, out["sample_points"],
                        out["sample_valid"], out["sample_index"])
