"""prior.model_cache: the Hugging Face cache the Hub ids are read from on the node that runs a case."""

from __future__ import annotations

import pytest


def _hub_cache_with(cache, repo_id: str) -> None:
    """A model in the Hugging Face cache layout (models--org--name/refs/main -> snapshots/<rev>/config.json)."""
    rev = "0" * 40
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)
    (root / "snapshots" / rev).mkdir(parents=True)
    (root / "snapshots" / rev / "config.json").write_text("{}")


def test_hub_ids_are_found_in_the_configured_cache_and_only_there(tmp_path, monkeypatch):
    from c123.errors import WeightsMissingError
    from c123.priors.weights import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default-cache"))
    _hub_cache_with(tmp_path / "shared", "org/tiny-clip")
    found = resolve("org/tiny-clip", "CLIP (the boundary detector)", cache_dir=str(tmp_path / "shared"))
    assert found.startswith(str(tmp_path / "shared")) and found.endswith("0" * 40)
    with pytest.raises(WeightsMissingError, match="not in the local Hugging Face cache"):
        resolve("org/tiny-clip", "CLIP (the boundary detector)")
    with pytest.raises(WeightsMissingError, match=r"Hugging Face cache .*/elsewhere \(prior.model_cache\).*"
                                                  r"--cache-dir .*/elsewhere"):
        resolve("org/tiny-clip", "CLIP (the boundary detector)", cache_dir=str(tmp_path / "elsewhere"))


def test_the_cache_location_is_a_config_field_left_out_of_the_result_key():
    from c123.config import apply_overrides, tiny

    cfg = tiny("/models")
    before = cfg.hash()
    apply_overrides(cfg, ["prior.model_cache=/mnt/shared/hf"])
    assert cfg.prior.model_cache == "/mnt/shared/hf" and cfg.to_dict()["prior"]["model_cache"] == "/mnt/shared/hf"
    assert cfg.hash() == before
    apply_overrides(cfg, ["prior.guidance_scale_2d=7.5"])
    assert cfg.hash() != before


def test_the_photo_models_are_looked_up_in_the_same_cache(tmp_path, monkeypatch):
    """A node with the shared cache finds the caption, cut-out and depth models there, as it finds the priors."""
    from c123.config import apply_overrides, tiny
    from c123.errors import WeightsMissingError
    from c123.preprocess import _resolve_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default-cache"))
    cfg = apply_overrides(tiny("/models"), ["preprocess.caption_model=org/tiny-blip2",
                                            "preprocess.background_model=org/tiny-clipseg",
                                            "preprocess.depth_model=org/tiny-dpt"])
    for repo_id in ("org/tiny-blip2", "org/tiny-clipseg", "org/tiny-dpt"):
        _hub_cache_with(tmp_path / "shared", repo_id)
    with pytest.raises(WeightsMissingError, match="not in the local Hugging Face cache"):
        _resolve_models(["prompt", "alpha", "depth"], cfg)
    cfg.prior.model_cache = str(tmp_path / "shared")
    _resolve_models(["prompt", "alpha", "depth"], cfg)
