"""Fixtures shared across test modules, and the session's isolated homes and caches (tests/session_env.py,
imported first: before any test module imports Prefect, Ray or Hugging Face)."""

import session_env  # noqa: F401, I001  (sets the test environment; must stay the first import)

from pathlib import Path

import pytest

from c123.synthetic import get_scene
from data_support import synthetic_input
from helpers_fit import fit_nerf_to_scene


@pytest.fixture(scope="session")
def fitted_toy_nerf():
    """A NeRF fitted to 16 ground-truth views of the toy scene (64x64, 400 steps: the official smoothstep grid converges more slowly at first): (scene, FitResult)."""
    scene = get_scene("toy")
    return scene, fit_nerf_to_scene(scene, views=16, size=64, iters=400, seed=0)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """The tiny random models in their real on-disk layouts (`c123 models tiny`), written once per session:
    {name: folder}. Read only: a test that damages one copies it first."""
    from c123.priors.tiny import write_tiny_models

    return {k: Path(v) for k, v in write_tiny_models(tmp_path_factory.mktemp("tiny-models")).items()}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs) -> Path:
    """The folder holding `tiny_dirs` (C123_TINY_MODELS of a tiny run)."""
    return tiny_dirs["zero123"].parent


@pytest.fixture(scope="session")
def toy_input(tmp_path_factory):
    """An input image for tests that need one but not a particular dataset: the toy scene rendered (RGBA +
    depth PNG, 128 px) with its prompt; case id `toy`."""
    return synthetic_input(tmp_path_factory.mktemp("inputs"))


def _random_order_line(config) -> str | None:
    """pytest-randomly's seed and how to rerun this order (None when the plugin is off: -p no:randomly)."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is None or not config.pluginmanager.has_plugin("randomly"):
        return None
    return f"random order: seed {seed} (rerun this order with -p randomly --randomly-seed={seed})"


def pytest_sessionstart(session):
    # printed first too: under -q pytest shows no header, and a run that hangs never reaches the summary
    line = _random_order_line(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if line and reporter:
        reporter.write_line(line)


def pytest_terminal_summary(terminalreporter, config):
    line = _random_order_line(config)
    if line:
        terminalreporter.write_line(line)
