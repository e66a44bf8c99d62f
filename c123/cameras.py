"""Cameras on a sphere around the object, rays through their pixels, and the novel-view sampler.

Convention (docs/ARCHITECTURE.md): the world is right-handed with +y up and the object's front facing +z;
angles are in degrees. Polar theta is measured from +y (90 = elevation 0) and azimuth phi from +z towards
+x, so the camera sits at r * (sin(theta) sin(phi), cos(theta), sin(theta) cos(phi)): azimuth 0 sees the
front, 90 the object's +x side, 180 the back. Camera-to-world matrices use the OpenGL camera frame: the
camera looks down its -z, +x is image right, +y is image up, and image row 0 is the top. A positive change
of azimuth moves the camera to its own right around the object.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from c123.config import CameraConfig
from c123.errors import GeometryError


@dataclass
class Cameras:
    """A batch of cameras: spherical coordinates (degrees) and the matching camera-to-world matrices."""

    polar: torch.Tensor
    azimuth: torch.Tensor
    radius: torch.Tensor
    fovy: torch.Tensor
    c2w: torch.Tensor

    def to(self, *args, **kwargs) -> Cameras:
        """Move (or cast) every tensor, with the arguments of `Tensor.to`."""
        return Cameras(*(getattr(self, f.name).to(*args, **kwargs) for f in fields(self)))

    def __len__(self) -> int:
        return self.polar.shape[0]

    def __getitem__(self, idx) -> Cameras:
        # an integer keeps the batch dimension so the result is still a Cameras batch
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return Cameras(*(getattr(self, f.name)[idx] for f in fields(self)))

    @property
    def position(self) -> torch.Tensor:
        """Camera centres [B,3] in world space."""
        return self.c2w[:, :3, 3]


def _as_tensors(*values, device=None) -> list[torch.Tensor]:
    tensors = [v for v in values if torch.is_tensor(v)]
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    device = device if device is not None else (tensors[0].device if tensors else None)
    out = [torch.as_tensor(v, dtype=dtype, device=device).reshape(-1) for v in values]
    return list(torch.broadcast_tensors(*out))


def orbit_cameras(polar, azimuth, radius, fovy, device=None) -> Cameras:
    """Cameras looking at the origin from spherical coordinates (scalars or tensors, broadcast to [B])."""
    polar, azimuth, radius, fovy = _as_tensors(polar, azimuth, radius, fovy, device=device)
    for name, value in (("polar", polar), ("azimuth", azimuth), ("radius", radius), ("fovy", fovy)):
        if not torch.isfinite(value).all():
            raise GeometryError(f"camera {name} is not finite ({value.tolist()}): pass finite angles/radii")
    if (radius <= 0).any():
        raise GeometryError(f"camera radius must be > 0, got {radius.tolist()}: place cameras off the origin")
    if ((fovy <= 0) | (fovy >= 180)).any():
        raise GeometryError(f"camera fovy must be in (0, 180) degrees, got {fovy.tolist()}")
    return _orbit(polar, azimuth, radius, fovy)


def _orbit(polar, azimuth, radius, fovy) -> Cameras:
    """orbit_cameras from checked [B] tensors, on their device (no host sync)."""
    theta, phi = torch.deg2rad(polar), torch.deg2rad(azimuth)
    back = torch.stack([theta.sin() * phi.sin(), theta.cos(), theta.sin() * phi.cos()], -1)
    # the right axis depends on azimuth only, so the frame stays defined at the poles
    right = torch.stack([phi.cos(), torch.zeros_like(phi), -phi.sin()], -1)
    up = torch.linalg.cross(back, right)
    c2w = _frame(right, up, back, radius[:, None] * back)
    return Cameras(polar, azimuth, radius, fovy, c2w)


def _frame(right, up, back, eye) -> torch.Tensor:
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, back, eye
    c2w[:, 3, 3] = 1.0
    return c2w


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenGL camera-to-world matrices [B,4,4] for cameras at `eye` looking at `target`."""
    back = torch.nn.functional.normalize(eye - target, dim=-1)
    right = torch.linalg.cross(up, back)
    norm = right.norm(dim=-1, keepdim=True)
    if (norm < 1e-8).any() or not torch.isfinite(eye).all():
        raise GeometryError("look_at: view direction parallel to `up` or non-finite eye: choose another up vector")
    right = right / norm
    return _frame(right, torch.linalg.cross(back, right), back, eye)


def focal_length(fovy: torch.Tensor, height: int) -> torch.Tensor:
    """Focal length in pixels for a vertical field of view (degrees) and image height."""
    return 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy))


def intrinsics(cams: Cameras, height: int, width: int) -> torch.Tensor:
    """Pinhole matrices K [B,3,3] (pixels, square pixels, principal point at the image centre)."""
    f = focal_length(cams.fovy, height)
    K = torch.zeros(len(cams), 3, 3, dtype=f.dtype, device=f.device)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f, f, 0.5 * width, 0.5 * height, 1.0
    return K


def projection_matrix(cams: Cameras, near: float, far: float, aspect: float = 1.0) -> torch.Tensor:
    """OpenGL perspective projections [B,4,4] (camera space -> clip space, NDC y up; aspect = width/height)."""
    t = torch.tan(0.5 * torch.deg2rad(cams.fovy))
    P = torch.zeros(len(cams), 4, 4, dtype=t.dtype, device=t.device)
    P[:, 0, 0], P[:, 1, 1] = 1.0 / (aspect * t), 1.0 / t
    P[:, 2, 2], P[:, 2, 3] = -(far + near) / (far - near), -2.0 * far * near / (far - near)
    P[:, 3, 2] = -1.0
    return P


def generate_rays(cams: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres: origins [B,H,W,3] and unit directions [B,H,W,3] in world space."""
    dtype, device = cams.c2w.dtype, cams.c2w.device
    f = focal_length(cams.fovy, height)[:, None, None]
    rows = torch.arange(height, dtype=dtype, device=device) + 0.5
    cols = torch.arange(width, dtype=dtype, device=device) + 0.5
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    u = (x - 0.5 * width) / f
    v = -(y - 0.5 * height) / f   # row 0 is the top of the image, i.e. camera +y
    d_cam = torch.stack([u, v, -torch.ones_like(u)], -1)
    rays_d = torch.einsum("bij,bhwj->bhwi", cams.c2w[:, :3, :3], d_cam)
    rays_d = torch.nn.functional.normalize(rays_d, dim=-1)
    rays_o = cams.position[:, None, None, :].expand_as(rays_d)
    return rays_o, rays_d


def reference_camera(cfg: CameraConfig, device=None) -> Cameras:
    """The single reference camera of the configuration."""
    return orbit_cameras(cfg.ref_polar, cfg.ref_azimuth, cfg.ref_radius, cfg.fovy, device=device)


def progressive_ratio(cfg: CameraConfig, step: int, iters: int) -> float:
    """Fraction r of the full novel-view ranges at a 1-based NeRF step: min(1, start + rate * step / iters)
    (nerf/utils.py train_step, progressive_view)."""
    return min(1.0, cfg.progressive_start + cfg.progressive_rate * step / max(iters, 1))


def view_ranges(cfg: CameraConfig, r: float) -> dict[str, tuple[float, float]]:
    """Polar, azimuth and radius ranges at ratio r: each bound moves linearly from the reference value
    (r = 0) to the full bound (r = 1), as stable-dreamfusion's progressive view does."""
    def widen(ref: float, bounds: tuple[float, float]) -> tuple[float, float]:
        return ref * (1 - r) + bounds[0] * r, ref * (1 - r) + bounds[1] * r

    return {"polar": widen(cfg.ref_polar, cfg.polar_range), "azimuth": widen(cfg.ref_azimuth, cfg.azimuth_range),
            "radius": widen(cfg.ref_radius, cfg.radius_range)}


def sample_novel_cameras(cfg: CameraConfig, batch: int, r: float = 1.0,
                         generator: torch.Generator | None = None, device=None) -> Cameras:
    """Random novel views, uniform in the ranges at ratio r (`view_ranges`); r = 1: the full ranges.

    Drawn and built on the generator's device (else `device`), in float64, then cast to float32 on `device`: on
    the compute device this involves no host sync (the ranges come from a checked config)."""
    ranges = view_ranges(cfg, min(max(r, 0.0), 1.0))
    where = generator.device if generator is not None else device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=generator, dtype=torch.float64, device=where)

    # the draw order (radius, polar, azimuth) is nerf/provider.py rand_poses'
    radius = uniform(*ranges["radius"])
    polar = uniform(*ranges["polar"])
    azimuth = uniform(*ranges["azimuth"])
    fovy = torch.full_like(radius, cfg.fovy)
    return _orbit(polar, azimuth, radius, fovy).to(device=device, dtype=torch.float32)


def view_angle(cams: Cameras, ref_cams: Cameras) -> torch.Tensor:
    """Great-circle angle [B] (degrees) between each camera direction and the reference direction."""
    def direction(c):
        theta, phi = torch.deg2rad(c.polar.double()), torch.deg2rad(c.azimuth.double())
        return torch.stack([theta.sin() * phi.sin(), theta.cos(), theta.sin() * phi.cos()], dim=-1)

    cos = (direction(cams) * direction(ref_cams).to(cams.polar.device)).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)).to(cams.polar.dtype)


def orbit(num_views: int, polar: float = 90.0, radius: float = 3.2, fovy: float = 20.0,
          start_azimuth: float = 0.0, device=None) -> Cameras:
    """`num_views` cameras evenly spaced in azimuth (start_azimuth + 360 * i / n) at a fixed polar angle."""
    azimuth = start_azimuth + 360.0 * torch.arange(num_views, dtype=torch.float64) / num_views
    return orbit_cameras(polar, azimuth, radius, fovy).to(device=device, dtype=torch.float32)


__all__ = ["Cameras", "orbit_cameras", "look_at", "focal_length", "intrinsics", "projection_matrix",
           "generate_rays", "reference_camera", "progressive_ratio", "view_ranges", "sample_novel_cameras", "view_angle",
           "orbit"]
