"""Verification prior: it renders the true synthetic object where the 3D prior would be looking.

It receives exactly what the 3D prior it stands in for receives (renders and that prior's camera vector:
`zero123.camera_vector` for Zero-1-to-3, `stable_zero123.camera_vector` for Stable Zero123, by
prior.zero123_family) and rebuilds the absolute camera with that prior's own convention, written out here
independently: a positive delta azimuth moves the camera to its own right around the object; Zero-1-to-3's
4th entry is the change of radius, Stable Zero123's the input's absolute polar (so its target polar is
4th + 1st entry, and it sees no radius: the oracle answers at the reference's distance, as the model cannot
know another). If the method's camera vector were mirrored or its 4th entry wrong, the oracle would answer
with the wrong view, and a reconstruction of an asymmetric object would come out wrong: that is what its
tests check.

Like the 3D prior, which sees only the image, the oracle answers relative to the camera the image was really
taken from (its `true_elevation` / `true_azimuth`; prior.oracle_elevation / oracle_azimuth), not the camera
the method assumes: a method that assumes elevation 0 for an image taken from elevation 30 gets the views the
prior would give it, 30 degrees off in elevation. The vector is decoded in the prior's convention from the
assumed camera (what the method told it), then moved by the assumption's error (true - assumed polar and
azimuth): for Zero-1-to-3 that is the true camera plus the relative change; for Stable Zero123, told an input
polar it cannot check against the image, the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from c123.cameras import Cameras, orbit_cameras
from c123.priors import stable_zero123, zero123


def cameras_from_zero123_vector(vec: torch.Tensor, ref: Cameras, fovy: torch.Tensor) -> Cameras:
    """Absolute cameras from [d polar (rad), sin d az, cos d az, d radius] relative to `ref`."""
    polar = ref.polar.to(vec) + torch.rad2deg(vec[:, 0])
    azimuth = ref.azimuth.to(vec) + torch.rad2deg(torch.atan2(vec[:, 1], vec[:, 2]))
    radius = ref.radius.to(vec) + vec[:, 3]
    return orbit_cameras(polar, azimuth, radius, fovy.to(vec))


def cameras_from_stable_zero123_vector(vec: torch.Tensor, ref: Cameras, fovy: torch.Tensor) -> Cameras:
    """Absolute cameras from Stable Zero123's [d polar (rad), sin d az, cos d az, input polar (rad)]: polar =
    input polar + d polar (threestudio get_cond: 90 - cond_elevation and (90 - elevation) - (90 - cond_elevation)),
    azimuth relative to `ref`, radius `ref`'s (the vector carries none)."""
    polar = torch.rad2deg(vec[:, 3] + vec[:, 0])
    azimuth = ref.azimuth.to(vec) + torch.rad2deg(torch.atan2(vec[:, 1], vec[:, 2]))
    radius = ref.radius.to(vec).expand_as(polar)
    return orbit_cameras(polar, azimuth, radius, fovy.to(vec))


ORACLE_VIEW_SIZE = 256
"""Pixel size of the views the oracle draws (`sample`): Zero-1-to-3's own output size, also when a tiny preset
shrinks prior.zero123_size (the SDS input); the elevation estimate needs views this large to match points."""

CONVENTIONS = {
    "zero123": (zero123, cameras_from_zero123_vector),
    "stable-zero123": (stable_zero123, cameras_from_stable_zero123_vector),
}
"""prior.zero123_family -> (the prior's module, whose `camera_vector(cams, ref)` the method computes; the
oracle's decoder of that vector)."""


class OraclePrior:
    """Same call as Zero123Prior; its "denoised" answer is the true render, so its loss is an image MSE."""

    def __init__(self, scene, weight: float = 1000.0, *, convention: str = "zero123", size: int = 256,
                 true_elevation: float | None = None, true_azimuth: float | None = None):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown camera-vector convention '{convention}': use one of {', '.join(CONVENTIONS)}")
        self.scene, self.weight, self.ref = scene, weight, None
        self.convention, self.size = convention, size
        self.true_elevation, self.true_azimuth = true_elevation, true_azimuth
        """The camera the reference image was really rendered from (None: the camera the method assumes)."""
        self.prior_module, self.decode = CONVENTIONS[convention]
        self.model_id, self.variant_loaded = f"oracle:{scene.name}", "none"

    def set_reference(self, rgb_white: torch.Tensor, ref_cams: Cameras) -> None:
        """Remember the method's reference camera, from which it measures its camera vectors (the image itself is
        not needed: the oracle knows the object)."""
        self.ref = ref_cams

    def assumption_error(self) -> tuple[float, float]:
        """(true - assumed) polar and azimuth of the reference camera, degrees; (0, 0) without a true camera."""
        d_polar = 0.0 if self.true_elevation is None else (90.0 - self.true_elevation) - float(self.ref.polar[0])
        d_azimuth = 0.0 if self.true_azimuth is None else self.true_azimuth - float(self.ref.azimuth[0])
        return d_polar, d_azimuth

    def seen_cameras(self, cams: Cameras) -> Cameras:
        """The cameras the oracle answers from: `cams` through the prior's camera vector and back (float64),
        moved by the assumption's error."""
        # looked up per call: a test that swaps the module's vector swaps what the oracle receives
        vec = self.prior_module.camera_vector(cams, self.ref).double()
        seen = self.decode(vec, self.ref, cams.fovy.double())
        d_polar, d_azimuth = self.assumption_error()
        if d_polar == 0.0 and d_azimuth == 0.0:  # the assumed camera is the true one: the cameras as decoded
            return seen
        return orbit_cameras(seen.polar + d_polar, seen.azimuth + d_azimuth, seen.radius, seen.fovy)

    @torch.no_grad()
    def target(self, cams: Cameras, height: int, width: int) -> torch.Tensor:
        """The true object on white, seen from the camera rebuilt from the prior's camera vector."""
        seen = self.seen_cameras(cams)
        # one ray per pixel: the target is asked for every step, and 4x supersampling would dominate the run
        rgba = self.scene.render(seen.to(torch.device("cpu")), height, width, supersample=1)["rgba"].float()
        rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        return rgb.permute(0, 3, 1, 2)

    def loss(self, images: torch.Tensor, cams: Cameras, *, t_range=None, step_ratio=None, **_) -> torch.Tensor:
        """weight * MSE(images, true view): images [B,3,H,W] in [0,1] rendered on white."""
        target = self.target(cams, images.shape[-2], images.shape[-1]).to(images)
        return self.weight * F.mse_loss(images, target)

    def sample(self, cams: Cameras, *, generator: torch.Generator | None = None, steps: int | None = None,
               guidance_scale: float | None = None, eta: float | None = None) -> torch.Tensor:
        """The prior's novel views, perfect: the target at `cams`, [B,3,size,size] in [0,1] on white. The oracle
        draws nothing, so `generator`, `steps`, `guidance_scale` and `eta` are accepted for the shared call only."""
        return self.target(cams, self.size, self.size)
