"""Resume through the flow reuses only the same work: a changed image recomputes its case from scratch, and a
damaged checkpoint in a case folder is set aside while the case still finishes."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline_support import FAST, copy_dataset, needs_data, ray_cluster

pytestmark = [needs_data, pytest.mark.timeout(900)]


def run(data, out):
    from c123_pipeline.flows.benchmark import benchmark

    return benchmark(dataset=str(data / "c10"), preset="tiny", cases=["07"], out=str(out), overrides=FAST,
                     num_actors=1)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    ray_cluster()
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    copy_dataset("c10", data / "c10")
    summary = run(data, root / "run")
    assert summary["ok"] == 1
    return data, root / "run"


def test_a_changed_image_recomputes_its_case_without_resuming_the_old_training(first_run, tmp_path):
    shared, original = first_run
    out, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(original, out)
    shutil.copytree(shared, data)
    shutil.copy2(data / "c10" / "12_rgba.png", data / "c10" / "07_rgba.png")   # the same case id, another image
    shutil.copy2(data / "c10" / "12_depth.png", data / "c10" / "07_depth.png")
    summary = run(data, out)
    assert summary["ok"] == 1 and summary["computed"] == 1
    result = json.loads((out / "cases/consistent123/07/seed0/result.json").read_text())
    assert result["resumed_from"] is None
    assert any("another input" in notice for notice in result["notices"]), result["notices"]


def test_a_damaged_checkpoint_is_set_aside_and_the_case_finishes(first_run, tmp_path):
    data, original = first_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    case = out / "cases/consistent123/07/seed0"
    (case / "checkpoints" / "dmtet.pt").write_bytes(b"\x00garbage")
    (case / "cache_key").unlink()   # the finished result no longer counts: the case must run again
    summary = run(data, out)
    assert summary["ok"] == 1 and summary["computed"] == 1
    result = json.loads((case / "result.json").read_text())
    assert (case / "checkpoints" / "dmtet.pt.corrupt").is_file()
    assert any("unreadable" in notice and "set aside" in notice for notice in result["notices"])
    assert result["resumed_from"] == 8   # the NeRF stage's last checkpoint (nerf_iters = 8 in FAST)
