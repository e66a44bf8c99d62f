"""Stable Zero123 (Stability AI, December 2023) as the 3D prior: Zero-1-to-3 with another camera vector.

Chosen by `prior.zero123_family=stable-zero123`; loads the diffusers conversion `ashawkey/stable-zero123-diffusers`
(what DreamGaussian loads: dreamgaussian main.py with `stable_zero123: True`, guidance/zero123_utils.py), whose
folder has the parts of zero123-xl-diffusers (model_index.json of a Zero123Pipeline: unet/ with 8 input channels,
vae/, image_encoder/, feature_extractor/, clip_camera_projection/ with the 772 -> 768 Linear, scheduler/), one
unsuffixed weights file per part (no fp16_ema variant: the loader falls back to it and records 'default').

Everything but the camera vector is Zero123Prior's (the SDS step of the paper's code, `sample`): threestudio's
stable_zero123_guidance.py and zero123_guidance.py differ only in the 4th entry of T in `get_cond`, and
dreamgaussian's Zero123.get_cam_embeddings switches only that entry on `'stable' in model_key`.

The camera vector, [d polar (rad), sin d azimuth, cos d azimuth, polar of the input (rad)]:
- threestudio get_cond: [deg2rad((90 - elevation) - (90 - cond_elevation)), sin(deg2rad(azimuth - cond_azimuth)),
  cos(...), deg2rad(90 - cond_elevation)], elevation positive above the equator (z up), so 90 - elevation is
  the polar angle and the 4th entry the input's polar, deg2rad(ref polar), the same for every view;
- dreamgaussian: deg2rad(90 + default_elevation) with its elevation negative above ("from +y to -y is (-90, 90)",
  cam_utils.orbit_camera), the same polar;
- the first three entries are Zero-1-to-3's (module zero123.camera_vector, with its AZIMUTH_SIGN): in threestudio
  a positive azimuth delta moves the camera to its own right (camera at (cos e cos a, cos e sin a, sin e), right
  = lookat x up = +y at a = 0), as in ours. tests/test_stable_zero123.py pins all of it.
The radius does not enter: Stable Zero123 sees no change of distance (threestudio keeps the distance fixed).

Licence: the weights are Stability AI's, under the Stability AI Non-Commercial Research Community License
Agreement (Hub tag `sai-nc-community`, huggingface.co/stabilityai/stable-zero123; the diffusers conversion is a
derivative of it); a run that loads them announces it once and records it in result.json `notices`.
"""

from __future__ import annotations

import torch

from c123.priors import zero123
from c123.priors.zero123 import Zero123Prior

LICENCE = ("Stable Zero123 weights: Stability AI Non-Commercial Research Community License Agreement "
           "(sai-nc-community): research and non-commercial use only, commercial use needs a licence from "
           "Stability AI (huggingface.co/stabilityai/stable-zero123, stability.ai/license)")
"""What a run that loads Stable Zero123 announces (and records in result.json notices)."""


def camera_vector(cams, ref_cams) -> torch.Tensor:
    """[B,4] = [d polar (rad), sin d azimuth, cos d azimuth, deg2rad(reference polar)], deltas = target - reference
    (the first three entries are zero123.camera_vector's)."""
    relative = zero123.camera_vector(cams, ref_cams)
    ref_polar = torch.deg2rad(ref_cams.polar.to(relative)).expand(relative.shape[0])
    return torch.cat([relative[:, :3], ref_polar[:, None]], dim=-1)


class StableZero123Prior(Zero123Prior):
    """Zero123Prior with Stable Zero123's camera vector (loss, sample and loading are inherited)."""

    licence = LICENCE

    def camera_vector(self, cams) -> torch.Tensor:
        """Stable Zero123's vector (module `camera_vector`) for `cams` relative to the reference."""
        return camera_vector(cams, self.ref_cams).to(self.device, torch.float32)
