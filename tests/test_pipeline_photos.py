"""A dataset folder of plain photos through the benchmark flow (real Prefect API, real Ray actor, tiny
preset): each photo is cut out, captioned and given depth once; a rerun reuses that preprocessing without
running a model (the models are deleted before it, so any model call would fail the case)."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from data_support import needs_dataset
from pipeline_support import DATA, FAST, ray_cluster

pytestmark = [needs_dataset("c10", files=("c10/12.jpg",)), pytest.mark.timeout(900)]


def test_a_folder_of_photos_is_preprocessed_once_and_a_rerun_runs_no_model(tmp_path):
    from c123.priors.tiny import write_tiny_models
    from c123_pipeline.flows.benchmark import benchmark

    ray_cluster()
    data = tmp_path / "photos"
    data.mkdir()
    shutil.copy2(DATA / "c10" / "12.jpg", data / "ball.jpg")  # no table, no alpha, no mask, no depth, no prompt
    assert Image.open(data / "ball.jpg").mode == "RGB"
    models = write_tiny_models(tmp_path / "preprocess-models")
    overrides = [*FAST, f"preprocess.background_model={models['background']}",
                 f"preprocess.depth_model={models['depth']}", f"preprocess.caption_model={models['caption']}"]

    def run(seed: int):
        out = tmp_path / f"run-seed{seed}"
        summary = benchmark(dataset=str(data), preset="tiny", seeds=[seed], out=str(out), overrides=overrides,
                            num_actors=1)
        assert summary["ok"] == 1 and summary["failed"] == 0, summary
        return json.loads((out / "cases" / "consistent123" / "ball" / f"seed{seed}" / "result.json").read_text())

    first = run(0)
    pre = first["preprocessing"]
    assert pre["cached"] is False and [e["part"] for e in pre["estimates"]] == ["prompt", "alpha", "depth"]
    assert first["prompt"] == pre["estimates"][0]["result"].removeprefix("caption: ") != ""

    shutil.rmtree(tmp_path / "preprocess-models")  # from here on, running any preprocessing model would fail
    second = run(1)  # another seed: a new reconstruction of the same photo
    assert second["preprocessing"]["cached"] is True and second["preprocessing"]["key"] == pre["key"]
    assert second["prompt"] == first["prompt"] and second["input_digest"] == first["input_digest"]
