"""The GSO dataset (SyncDreamer's evaluation layout): the layout reader, `c123 fetch gso` from a mirror, the input
elevation passed to the reconstruction as camera.ref_polar, and a tiny GSO-layout fixture (built from the chicken
fixture) through the benchmark flow under --protocol syncdreamer to Parquet and the report."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import trimesh

from pipeline_support import FAST, ray_cluster

CHICKEN = Path(__file__).parent / "fixtures" / "syncdreamer_chicken"


def make_gso(folder: Path) -> Path:
    """folder/chicken/{model.obj, gt/NNN.png, gt/NNN-depth.png} + gso_cases.tsv from the chicken fixture. The
    fixture keeps 4 of the 16 renders: view k reuses render 4 * (k // 4), so the layout is complete (the views'
    scores are then not SyncDreamer's, only the files' plumbing)."""
    from c123_pipeline.datasets.fetch import gso_table

    case = folder / "chicken"
    (case / "gt").mkdir(parents=True)
    trimesh.load(CHICKEN / "mesh.ply", process=False).export(case / "model.obj")
    for k in range(16):
        shutil.copy(CHICKEN / "gt" / f"{k:03}-depth.png", case / "gt" / f"{k:03}-depth.png")
        shutil.copy(CHICKEN / "gt" / f"{4 * (k // 4):03}.png", case / "gt" / f"{k:03}.png")
    (folder / "gso_cases.tsv").write_text(gso_table(["chicken"]))
    return folder


def test_gso_layout_gives_elevation_rotation_and_ground_truth(tmp_path):
    from c123.errors import DatasetError
    from c123_pipeline.datasets import load_dataset

    root = make_gso(tmp_path / "gso")
    ds = load_dataset("gso", data_root=tmp_path)
    [case] = ds.cases
    assert (case.id, case.ref_elevation, case.gso.rotation, case.category) == ("chicken", 30.0, 270.0, "gso")
    assert case.rgba_path == root / "chicken" / "gt" / "000.png" and Path(case.gso.views) == root / "chicken" / "gt"
    assert load_dataset(root).cases[0].gso == case.gso  # the folder itself reads the same
    (root / "chicken" / "gt" / "007-depth.png").unlink()
    with pytest.raises(DatasetError, match=r"gso_cases.tsv line 2: chicken/gt/007-depth.png not in .*c123 fetch gso"):
        load_dataset(root)
    (root / "gso_cases.tsv").write_text("case\televation\trotation\tprompt\nchicken\tthirty\t270\ta chicken\n")
    with pytest.raises(DatasetError, match="line 2: elevation and rotation must be numbers"):
        load_dataset(root)


def test_fetch_gso_from_a_mirror_writes_the_layout(tmp_path):
    from c123.errors import DatasetError
    from c123_pipeline.datasets import load_dataset
    from c123_pipeline.datasets.fetch import fetch

    make_gso(tmp_path / "mirror" / "gso")
    dest = fetch("gso", tmp_path / "data", base_url=(tmp_path / "mirror").as_uri(), gso_cases=["chicken"])
    assert [c.id for c in load_dataset(dest).cases] == ["chicken"]
    assert (dest / "chicken" / "gt" / "015-depth.png").read_bytes() == (CHICKEN / "gt" / "015-depth.png").read_bytes()
    with pytest.raises(DatasetError, match="only on SyncDreamer's OneDrive"):
        fetch("gso", tmp_path / "data2", gso_cases=["alarm"])


def test_case_elevation_becomes_the_reference_polar_angle(tmp_path):
    from c123.config import preset
    from c123_pipeline.datasets import load_dataset
    from c123_pipeline.flows.spec import case_config

    [case] = load_dataset(make_gso(tmp_path / "gso")).cases
    cfg = preset("fast")
    assert case_config(cfg, case).camera.ref_polar == 60.0 and cfg.camera.ref_polar == 90.0


@pytest.mark.slow
def test_gso_fixture_through_the_flow_to_parquet_and_report(tmp_path):
    import pandas as pd

    from c123.metrics import SYNCDREAMER_METRICS
    from c123_pipeline.flows.benchmark import benchmark

    root = make_gso(tmp_path / "gso")
    ray_cluster()
    overrides = [o for o in FAST if not o.startswith("train.eval_views")]
    summary = benchmark(dataset=str(root), preset="tiny", out=str(tmp_path / "run"), overrides=overrides,
                        protocol="syncdreamer", num_actors=1)
    assert summary["ok"] == 1, summary
    row = pd.read_parquet(tmp_path / "run" / "per_case.parquet").iloc[0]
    assert row["protocol"] == "syncdreamer" and row["num_views"] == 16
    for m in SYNCDREAMER_METRICS:
        assert not math.isnan(row[m]), (m, row["metric_status"])
    assert 0 <= row["sd_volume_iou"] <= 1 and row["sd_chamfer"] > 0
    result = (tmp_path / "run" / row["case_dir"] / "result.json").read_text()
    assert '"ref_polar": 60.0' in result and '"eval_at_ref_polar": true' in result
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "Chamfer (SyncDreamer)" in page and "Reported GSO rows" in page
