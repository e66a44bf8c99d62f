"""Verification prior: it renders the true synthetic object where Zero-1-to-3 would be looking.

It receives exactly what Zero-1-to-3 receives (renders and the relative camera vector of
`zero123.camera_vector`) and rebuilds the absolute camera with Zero-1-to-3's own convention, written
out here independently: a positive delta azimuth moves the camera to its own right around the object.
If the method's camera vector were mirrored, the oracle would answer with the mirrored view, and a
reconstruction of an asymmetric object would come out wrong: that is what its tests check.

Like Zero-1-to-3, which sees only the image, the oracle answers relative to the camera the image was really
taken from (its `true_elevation` / `true_azimuth`; prior.oracle_elevation / oracle_azimuth), not the camera
the method assumes: a method that assumes elevation 0 for an image taken from elevation 30 gets the views
Zero-1-to-3 would give it, 30 degrees off in elevation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from c123.cameras import Cameras, orbit_cameras
from c123.priors.zero123 import camera_vector


def cameras_from_zero123_vector(vec: torch.Tensor, ref: Cameras, fovy: torch.Tensor) -> Cameras:
    """Absolute cameras from [d polar (rad), sin d az, cos d az, d radius] relative to `ref`."""
    polar = ref.polar.to(vec) + torch.rad2deg(vec[:, 0])
    azimuth = ref.azimuth.to(vec) + torch.rad2deg(torch.atan2(vec[:, 1], vec[:, 2]))
    radius = ref.radius.to(vec) + vec[:, 3]
    return orbit_cameras(polar, azimuth, radius, fovy.to(vec))


class OraclePrior:
    """Same call as Zero123Prior; its "denoised" answer is the true render, so its loss is an image MSE."""

    def __init__(self, scene, weight: float = 1000.0, *, true_elevation: float | None = None,
                 true_azimuth: float | None = None):
        self.scene, self.weight, self.ref, self.true_ref = scene, weight, None, None
        self.true_elevation, self.true_azimuth = true_elevation, true_azimuth
        """The camera the reference image was really rendered from (None: the camera the method assumes)."""
        self.model_id, self.variant_loaded = f"oracle:{scene.name}", "none"

    def set_reference(self, rgb_white: torch.Tensor, ref_cams: Cameras) -> None:
        """Remember the method's reference camera, from which it measures its camera vectors, and the true one,
        from which the oracle decodes them (the image itself is not needed: the oracle knows the object)."""
        self.ref = self.true_ref = ref_cams
        if self.true_elevation is not None or self.true_azimuth is not None:
            polar = ref_cams.polar if self.true_elevation is None else 90.0 - self.true_elevation
            azimuth = ref_cams.azimuth if self.true_azimuth is None else self.true_azimuth
            self.true_ref = orbit_cameras(polar, azimuth, ref_cams.radius, ref_cams.fovy)

    @torch.no_grad()
    def target(self, cams: Cameras, height: int, width: int) -> torch.Tensor:
        """The true object on white, seen from the camera that Zero-1-to-3's camera vector (measured from the
        assumed reference camera) names relative to the true one."""
        vec = camera_vector(cams, self.ref).double()
        seen = cameras_from_zero123_vector(vec, self.true_ref, cams.fovy.double())
        # one ray per pixel: the target is asked for every step, and 4x supersampling would dominate the run
        rgba = self.scene.render(seen.to(torch.device("cpu")), height, width, supersample=1)["rgba"].float()
        rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        return rgb.permute(0, 3, 1, 2)

    def loss(self, images: torch.Tensor, cams: Cameras, *, t_range=None, step_ratio=None, **_) -> torch.Tensor:
        """weight * MSE(images, true view): images [B,3,H,W] in [0,1] rendered on white."""
        target = self.target(cams, images.shape[-2], images.shape[-1]).to(images)
        return self.weight * F.mse_loss(images, target)

