"""Diffusion priors (Zero-1-to-3, Stable Zero123, Stable Diffusion), CLIP, the weights resolver and the tiny test
models.

Names are imported on first use (PEP 562), so `c123.priors.weights` stays light: a missing model is
reported without importing diffusers or transformers.
"""

from importlib import import_module

_EXPORTS = {
    "resolve": "weights", "Zero123Prior": "zero123", "camera_vector": "zero123",
    "StableZero123Prior": "stable_zero123",
    "StableDiffusionPrior": "stable_diffusion", "ClipModel": "clip", "write_tiny_models": "tiny",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'c123.priors' has no attribute '{name}'")
    return getattr(import_module(f"c123.priors.{_EXPORTS[name]}"), name)
