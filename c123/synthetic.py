"""Procedural test objects with known geometry and texture, rendered by sphere tracing in pure torch.

Every scene is deliberately asymmetric, left/right and front/back, in shape and in colour, so a mirrored
camera convention shows up in a test. They fit in a ball of radius ~0.45 (the reference camera at radius
3.2 with fovy 20 sees a half-extent of ~0.56 at the origin) and are the demo inputs on a fresh machine.

`render` returns straight (unassociated) alpha, like a PNG: rgb is the surface colour wherever the
pixel is partly covered and `bg_color` where it is empty, so compositing is rgb * a + bg * (1 - a).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from c123.cameras import Cameras, generate_rays
from c123.errors import C123Error

_TRACE_STEPS = 128
_HIT_EPS = 2e-4
_RAY_CHUNK = 1 << 18
_SCENE_RADIUS = 0.6
"""Rays start marching where they enter this ball (it contains every scene)."""


def _sphere(x, centre, r):
    return (x - x.new_tensor(centre)).norm(dim=-1) - r


def _ellipsoid(x, centre, radii):
    # Inigo Quilez's bound: exact on the surface, conservative enough for sphere tracing with a step factor
    q = (x - x.new_tensor(centre)) / x.new_tensor(radii)
    k0 = q.norm(dim=-1)
    k1 = (q / x.new_tensor(radii)).norm(dim=-1)
    return k0 * (k0 - 1.0) / k1.clamp(min=1e-9)


def _capsule(x, a, b, r):
    a, b = x.new_tensor(a), x.new_tensor(b)
    pa, ba = x - a, b - a
    h = ((pa * ba).sum(-1) / (ba * ba).sum()).clamp(0.0, 1.0)
    return (pa - h[:, None] * ba).norm(dim=-1) - r


def _round_box(x, centre, half, r):
    q = (x - x.new_tensor(centre)).abs() - x.new_tensor(half)
    return q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0) - r


def _cylinder(x, centre, radius, half_height):
    """Capped cylinder along y (exact distance)."""
    q = x - x.new_tensor(centre)
    d = torch.stack([q[:, [0, 2]].norm(dim=-1) - radius, q[:, 1].abs() - half_height], -1)
    return d.clamp(min=0).norm(dim=-1) + d.amax(-1).clamp(max=0)


def _torus_xy(x, centre, major, minor):
    """Torus whose ring lies in the x-y plane (its hole looks along z)."""
    q = x - x.new_tensor(centre)
    ring = torch.stack([q[:, :2].norm(dim=-1) - major, q[:, 2]], -1)
    return ring.norm(dim=-1) - minor


def _smin(a, b, k):
    h = (k - (a - b).abs()).clamp(min=0) / k
    return torch.minimum(a, b) - h * h * k / 4


def _toy_sdf(x):
    body = _ellipsoid(x, (0.0, -0.05, 0.0), (0.22, 0.26, 0.2))
    head = _sphere(x, (0.0, 0.27, 0.02), 0.13)
    arm = _capsule(x, (0.15, 0.0, 0.0), (0.36, 0.12, 0.0), 0.055)      # only on +x
    nose = _capsule(x, (0.0, 0.27, 0.12), (0.0, 0.25, 0.24), 0.035)    # points to the front, +z
    return _smin(_smin(_smin(body, head, 0.06), arm, 0.04), nose, 0.02)


def _toy_albedo(x):
    # each axis drives one channel through a soft step, so every octant has its own colour
    return (0.5 + 0.4 * torch.tanh(x / 0.05)).clamp(0, 1)


def _parts_sdf(parts):
    return lambda x: torch.stack([sdf(x) for sdf, _ in parts], -1).amin(-1)


def _parts_albedo(parts, shade):
    """Each point takes the colour of its nearest part, then `shade` (position-dependent) modulates it."""
    def albedo(x):
        nearest = torch.stack([sdf(x) for sdf, _ in parts], -1).argmin(-1)
        return shade(x, x.new_tensor([c for _, c in parts])[nearest]).clamp(0, 1)
    return albedo


def _side_and_front(x, colours, side: float = 0.2):
    # a gradient along x (of relative strength `side`) and a paler front (+z) keep the sides of each part
    # distinguishable too
    colours = colours * (1 - side + side * torch.tanh(x[:, :1] / 0.2))
    return colours + (1 - colours) * 0.25 * (1 + torch.tanh(x[:, 2:] / 0.05))


_BLOCKS = (
    (lambda x: _round_box(x, (0.0, -0.22, 0.0), (0.34, 0.07, 0.24), 0.02), (0.85, 0.65, 0.35)),   # base
    (lambda x: _round_box(x, (0.18, 0.06, -0.08), (0.09, 0.2, 0.09), 0.02), (0.2, 0.35, 0.85)),   # tower +x back
    (lambda x: _sphere(x, (-0.14, -0.04, 0.1), 0.11), (0.85, 0.15, 0.15)),                       # ball -x front
    (lambda x: _capsule(x, (0.0, -0.12, 0.16), (0.12, -0.12, 0.28), 0.04), (0.15, 0.7, 0.25)),   # log +z
)


_LEG = 0.03
"""Radius of the chair's legs: about 3.5 pixels across in a 64-pixel training view, 7% of the chair's height."""
_CHAIR = (
    (lambda x: _round_box(x, (0.0, 0.08, 0.0), (0.21, 0.02, 0.17), 0.015), (0.8, 0.5, 0.2)),          # seat
    *((lambda x, sx=sx, sz=sz: _capsule(x, (0.16 * sx, 0.06, 0.12 * sz), (0.21 * sx, -0.37, 0.16 * sz), _LEG),
       (0.35, 0.2, 0.1)) for sx in (-1, 1) for sz in (-1, 1)),                                       # four legs
    (lambda x: _capsule(x, (-0.185, -0.17, -0.14), (-0.185, -0.17, 0.14), _LEG), (0.15, 0.7, 0.25)),  # rung, -x only
    *((lambda x, sx=sx: _capsule(x, (0.14 * sx, 0.1, -0.16), (0.15 * sx, 0.38, -0.2), 0.025), (0.2, 0.35, 0.85))
      for sx in (-1, 1)),                                                                            # back rods
    (lambda x: _capsule(x, (-0.17, 0.39, -0.2), (0.17, 0.39, -0.2), 0.035), (0.2, 0.35, 0.85)),        # top rail
    (lambda x: _capsule(x, (0.2, 0.1, 0.13), (0.2, 0.25, 0.13), 0.025), (0.85, 0.15, 0.15)),          # arm post, +x
    (lambda x: _round_box(x, (0.29, 0.25, 0.02), (0.09, 0.012, 0.13), 0.01), (0.85, 0.15, 0.15)),     # tablet arm, +x
)


def _mug_sdf(x):
    body = _cylinder(x, (0.0, -0.05, 0.03), 0.2, 0.2)
    cavity = _cylinder(x, (0.0, 0.17, 0.03), 0.16, 0.2)      # open at the top, 0.18 deep: its floor is at -0.03
    handle = _torus_xy(x, (0.22, -0.06, 0.03), 0.11, 0.03)   # on +x, its hole looks along z
    spout = _ellipsoid(x, (0.0, 0.13, 0.22), (0.07, 0.03, 0.05))  # a lip at the front rim
    return torch.minimum(torch.maximum(torch.minimum(body, spout), -cavity), handle)


def _mug_albedo(x):
    q = x - x.new_tensor([0.0, 0.0, 0.03])
    r = q[:, [0, 2]].norm(dim=-1, keepdim=True)
    outside = x.new_tensor([0.1, 0.55, 0.6]) * (0.7 + 0.3 * torch.tanh(x[:, :1] / 0.1))    # teal, darker at -x
    # inside: cream and brown stripes around the wall over a dark floor; with albedo-only renders, a pattern
    # that shifts with the viewpoint is what tells a hollow from a lid painted to look like one
    stripes = 0.5 + 0.5 * torch.tanh(4 * torch.sin(6 * torch.atan2(q[:, :1], q[:, 2:])))
    wall = x.new_tensor([0.95, 0.9, 0.75]) * (1 - 0.5 * stripes)
    inside = torch.where(x[:, 1:2] < -0.02, x.new_tensor([0.3, 0.15, 0.1]).expand_as(wall), wall)
    colour = torch.where(r < 0.18, inside, outside)
    colour = torch.where(x[:, :1] > 0.2, x.new_tensor([0.9, 0.3, 0.1]).expand_as(colour), colour)  # orange handle
    decal = ((x[:, 1:2] - 0.0).abs() < 0.04) & (x[:, 2:] > 0.12) & (r >= 0.18)                 # yellow band, front only
    return torch.where(decal, x.new_tensor([0.95, 0.85, 0.1]).expand_as(colour), colour)


@dataclass
class SyntheticScene:
    """An object given by a signed distance function and an albedo function of position."""

    name: str
    sdf_fn: Callable[[torch.Tensor], torch.Tensor]
    albedo_fn: Callable[[torch.Tensor], torch.Tensor]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """Signed distance [N] (negative inside) at points x[N,3]."""
        return self.sdf_fn(x)

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        """Surface colour [N,3] in [0,1] at points x[N,3]."""
        return self.albedo_fn(x)

    def sdf_normal(self, x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """Unit outward normals [N,3] by central differences of the SDF."""
        offsets = torch.eye(3, dtype=x.dtype, device=x.device) * eps
        d = torch.stack([self.sdf(x + o) - self.sdf(x - o) for o in offsets], -1)
        return F.normalize(d, dim=-1)

    @torch.no_grad()
    def render(self, cams: Cameras, height: int, width: int, bg_color: torch.Tensor | None = None,
               supersample: int = 2) -> dict[str, torch.Tensor]:
        """Sphere-traced views, `supersample`^2 rays per pixel: rgba[B,H,W,4], depth[B,H,W] (distance along
        the ray, 0 where empty), normal[B,H,W,3] (world, unit; 0 where empty), mask[B,H,W] (alpha > 0.5)."""
        s = supersample
        bg = torch.ones(3) if bg_color is None else torch.as_tensor(bg_color, dtype=torch.float32).cpu()
        rays_o, rays_d = generate_rays(cams.to("cpu", torch.float32), height * s, width * s)
        hit, t, colour, normal = self._trace(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
        B = len(cams)

        def pool(v):
            # average each s x s block of subsamples into its pixel
            v = v.reshape(B, height, s, width, s, -1)
            return v.mean((2, 4))

        h = hit.float()[:, None]
        alpha = pool(h)
        premult = pool(colour * h)
        depth_sum, normal_sum = pool(t[:, None] * h), pool(normal * h)
        covered = alpha > 0
        rgb = torch.where(covered, premult / alpha.clamp(min=1e-8), bg.expand_as(premult))
        depth = torch.where(covered, depth_sum / alpha.clamp(min=1e-8), torch.zeros_like(depth_sum))[..., 0]
        return {"rgba": torch.cat([rgb, alpha], -1), "depth": depth,
                "normal": F.normalize(normal_sum, dim=-1), "mask": alpha[..., 0] > 0.5}

    def _trace(self, rays_o, rays_d):
        outs = [self._trace_chunk(rays_o[i:i + _RAY_CHUNK], rays_d[i:i + _RAY_CHUNK])
                for i in range(0, rays_o.shape[0], _RAY_CHUNK)]
        return [torch.cat(parts) for parts in zip(*outs)]

    def _trace_chunk(self, rays_o, rays_d):
        b = (rays_o * rays_d).sum(-1)
        disc = b * b - ((rays_o * rays_o).sum(-1) - _SCENE_RADIUS ** 2)
        root = disc.clamp(min=0).sqrt()
        t, t_far = (-b - root).clamp(min=0), -b + root
        active = disc > 0
        hit = torch.zeros_like(active)
        for _ in range(_TRACE_STEPS):
            if not active.any():
                break
            idx = active.nonzero().squeeze(1)
            d = self.sdf(rays_o[idx] + t[idx, None] * rays_d[idx])
            t[idx] += 0.9 * d    # 0.9: the ellipsoid SDF is only a bound, stepping a little short stays safe
            done = d.abs() < _HIT_EPS
            hit[idx[done]] = True
            active[idx[done | (t[idx] > t_far[idx])]] = False
        x = rays_o + t[:, None] * rays_d
        colour = torch.zeros_like(x)
        normal = torch.zeros_like(x)
        colour[hit] = self.albedo(x[hit])
        normal[hit] = self.sdf_normal(x[hit])
        return hit, torch.where(hit, t, torch.zeros_like(t)), colour, normal

    def sample_surface(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points [n,3] on the surface, roughly uniform by area (thin-shell rejection, then projection)."""
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        kept, total = [], 0
        while total < n:
            x = (torch.rand(max(64 * n, 4096), 3, generator=gen) * 2 - 1) * _SCENE_RADIUS
            x = x[self.sdf(x).abs() < 0.01]
            for _ in range(3):
                x = x - self.sdf(x)[:, None] * self.sdf_normal(x)
            # inside overlapping parts the union's SDF is only a bound: drop points that did not land
            x = x[self.sdf(x).abs() < 1e-3]
            kept.append(x)
            total += x.shape[0]
        return torch.cat(kept)[:n]


SCENES = ("toy", "blocks", "chair", "mug")
_FUNCTIONS = {"toy": (_toy_sdf, _toy_albedo), "blocks": (_parts_sdf(_BLOCKS), _parts_albedo(_BLOCKS, _side_and_front)),
              "chair": (_parts_sdf(_CHAIR), _parts_albedo(_CHAIR, lambda x, c: _side_and_front(x, c, side=0.4))),
              "mug": (_mug_sdf, _mug_albedo)}


def get_scene(name: str = "toy") -> SyntheticScene:
    """The named synthetic scene (see SCENES)."""
    if name not in _FUNCTIONS:
        raise C123Error(f"unknown synthetic scene '{name}': use one of {', '.join(SCENES)}")
    return SyntheticScene(name, *_FUNCTIONS[name])
