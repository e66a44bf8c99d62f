"""Fixtures shared across test modules."""

import pytest

from c123.synthetic import get_scene
from helpers_fit import fit_nerf_to_scene


@pytest.fixture(scope="session")
def fitted_toy_nerf():
    """A NeRF fitted to 16 ground-truth views of the toy scene (64x64, 400 steps: the official smoothstep grid converges more slowly at first): (scene, FitResult)."""
    scene = get_scene("toy")
    return scene, fit_nerf_to_scene(scene, views=16, size=64, iters=400, seed=0)
