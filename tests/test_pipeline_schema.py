"""Parquet schemas and dtypes (docs/ARCHITECTURE.md), atomic writes, cache keys, inputs resolution."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from pipeline_support import DATA, REPO, needs_data  # noqa: F401  (sets the test environment first)


def _documented_columns(section: str) -> list[str]:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    body = text.split(f"### {section}", 1)[1].split("###", 1)[0]
    body = re.sub(r"\([^)]*\)", "", body.replace("\n", " "))  # drop '(nullable)', '(float64; ...)'
    return [c.strip().strip(".") for c in body.split(",") if c.strip().strip(".")]


def _row(**kw):
    from c123_pipeline.tasks.results import CaseRow

    row = {"run_id": "r", "dataset": "c10", "case": "07", "category": None, "variant": "consistent123",
           "weight_shape": "exp", "preset": "tiny", "seed": 0, "status": "failed", "error": "InputError: x",
           "switch_iteration": None, "seconds_nerf": math.nan, "seconds_dmtet": None, "seconds_export": 1,
           "seconds_total": 1.5, "clip_similarity": math.nan, "psnr": None, "lpips": 0.1,
           "metric_status": "not computed: case failed", "novel_psnr": math.nan, "novel_lpips": math.nan,
           "chamfer_sq": math.nan, "unseen_psnr": math.nan, "fscore": math.nan, "silhouette_iou": math.nan,
           "sd_chamfer": math.nan, "sd_volume_iou": math.nan, "sd_psnr": math.nan, "sd_ssim": math.nan,
           "sd_lpips": math.nan,
           "protocol": "c123", "clip_model": "m", "num_views": 8, "resolution": 64,
           "background": "white",
           "lpips_net": "alex", "config_hash": "h", "code_version": "v", "device": "cpu",
           "case_dir": "cases/consistent123/07/seed0", "cache_key": "k"}
    row.update(kw)
    return CaseRow(**row)


def test_parquet_columns_follow_architecture_md_and_the_row_records():
    import dataclasses

    import pyarrow as pa

    from c123_pipeline.tasks.results import PER_CASE_SCHEMA, PER_VIEW_SCHEMA, CaseRow, ViewRow

    assert PER_CASE_SCHEMA.names == _documented_columns("per_case.parquet")
    assert PER_VIEW_SCHEMA.names == _documented_columns("per_view.parquet")
    # the schemas are derived from the records: same names, str/int/float as string/int64/float64
    assert PER_CASE_SCHEMA.names == [f.name for f in dataclasses.fields(CaseRow)]
    assert PER_VIEW_SCHEMA.names == [f.name for f in dataclasses.fields(ViewRow)]
    assert PER_CASE_SCHEMA.field("seed").type == pa.int64() and PER_CASE_SCHEMA.field("psnr").type == pa.float64()
    assert PER_CASE_SCHEMA.field("error").type == pa.string()


def test_parquet_dtypes_roundtrip(tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    from c123_pipeline.tasks.results import PER_CASE_SCHEMA, PER_VIEW_SCHEMA, CaseRow, ViewRow, frame, write_parquet

    rows = [_row(), _row(case="12", status="ok", error=None, switch_iteration=35, category="ball", seed=3)]
    df = frame(rows, CaseRow)
    path = write_parquet(df, tmp_path / "per_case.parquet", PER_CASE_SCHEMA)
    assert pq.read_schema(path).remove_metadata() == PER_CASE_SCHEMA
    back = pd.read_parquet(path)
    assert list(back.columns) == PER_CASE_SCHEMA.names
    assert str(back["seed"].dtype) == "int64" and str(back["num_views"].dtype) == "int64"
    assert str(back["resolution"].dtype) == "int64" and str(back["switch_iteration"].dtype) == "Int64"
    floats = [f.name for f in PER_CASE_SCHEMA if str(f.type) == "double"]
    assert all(str(back[c].dtype) == "float64" for c in floats)
    assert pd.isna(back.loc[0, "switch_iteration"]) and back.loc[1, "switch_iteration"] == 35
    assert pd.isna(back.loc[0, "category"]) and pd.isna(back.loc[1, "error"])
    assert math.isnan(back.loc[0, "psnr"]) and math.isnan(back.loc[0, "seconds_dmtet"])  # None -> NaN, never 0
    assert back.loc[0, "seconds_export"] == 1.0 and back.loc[1, "seed"] == 3

    views = frame([ViewRow(run_id="r", dataset="c10", case="07", variant="consistent123", weight_shape="exp", seed=0,
                           view_index=i, azimuth=90.0 * i, elevation=0.0, clip_similarity=0.5, novel_psnr=math.nan,
                           silhouette_iou=math.nan) for i in range(4)],
                  ViewRow)
    vpath = write_parquet(views, tmp_path / "per_view.parquet", PER_VIEW_SCHEMA)
    assert pq.read_schema(vpath).remove_metadata() == PER_VIEW_SCHEMA
    assert str(pd.read_parquet(vpath)["view_index"].dtype) == "int64"


def test_parquet_write_is_atomic(tmp_path, monkeypatch):
    import pandas as pd
    import pyarrow.parquet as pq

    from c123_pipeline.tasks import results

    path = results.write_parquet(results.frame([_row()], results.CaseRow), tmp_path / "per_case.parquet",
                                 results.PER_CASE_SCHEMA)
    before = path.read_bytes()

    def broken(table, where, **kw):
        Path(where).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        results.write_parquet(results.frame([_row(), _row(case="12")], results.CaseRow), path, results.PER_CASE_SCHEMA)
    assert path.read_bytes() == before and len(pd.read_parquet(path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["per_case.parquet"]  # no temp file left behind


@needs_data
def test_cache_key_follows_input_bytes_config_and_code(tmp_path):
    from c123_pipeline.datasets.case import Case
    from c123.config_files import resolve_config
    from c123_pipeline.tasks import cache

    src = DATA / "c10" / "07_rgba.png"
    img = tmp_path / "07_rgba.png"
    img.write_bytes(src.read_bytes())
    case = Case("07", img, None, None, "bananas")
    cfg = resolve_config("tiny", "consistent123", 0, [])
    key = cache.cache_key(case, cfg, "v1")
    assert key == cache.cache_key(Case("07", img, None, None, "bananas"), resolve_config("tiny", "consistent123", 0, []), "v1")
    assert key != cache.cache_key(case, cfg, "v2")
    assert key != cache.cache_key(case, resolve_config("tiny", "consistent123", 1, []), "v1")
    assert key != cache.cache_key(case, resolve_config("tiny", "consistent123", 0, ["train.nerf_iters=7"]), "v1")
    assert key != cache.cache_key(Case("07", img, None, None, "bananas!"), cfg, "v1")
    img.write_bytes(src.read_bytes() + b"\0")
    assert key != cache.cache_key(case, cfg, "v1")

    case_dir = tmp_path / "case"
    case_dir.mkdir()
    assert not cache.is_done(case_dir, key)
    cache.mark_done(case_dir, key)
    assert not cache.is_done(case_dir, key)  # no result.json yet
    (case_dir / "result.json").write_text("{}")
    assert cache.is_done(case_dir, key) and not cache.is_done(case_dir, "other")


def test_variants_and_configs_resolve():
    from c123.errors import C123Error
    from c123.config_files import parse_variant, resolve_config
    from c123_pipeline.flows.spec import variant_folder

    assert parse_variant("consistent123") == ("consistent123", None)
    assert parse_variant("consistent123:linear") == parse_variant("consistent123@linear") == ("consistent123", "linear")
    cfg = resolve_config("tiny", "consistent123:log", 2, ["train.nerf_iters=9"])
    assert (cfg.schedule.variant, cfg.schedule.weight_shape, cfg.seed, cfg.train.nerf_iters) == ("consistent123", "log", 2, 9)
    assert variant_folder(cfg) == "consistent123-log"
    assert variant_folder(resolve_config("tiny", "3d-only", 0, [])) == "3d-only"
    for bad in (("tiny", "nope", 0, []), ("tiny", "consistent123:cubic", 0, []), ("huge", "consistent123", 0, []),
                ("tiny", "consistent123", 0, ["train.nope=1"])):
        with pytest.raises(C123Error) as err:
            resolve_config(*bad)
        assert "\n" not in str(err.value)


def test_tiny_models_dir_is_overridable(monkeypatch):
    from c123.config_files import resolve_config  # what the flow resolves its configs with

    monkeypatch.setenv("C123_TINY_MODELS", "/somewhere/tiny")
    assert resolve_config("tiny", "consistent123", 0, []).prior.clip_model == "/somewhere/tiny/clip"
    monkeypatch.delenv("C123_TINY_MODELS")
    assert resolve_config("tiny", "consistent123", 0, []).prior.clip_model == "~/.cache/c123/tiny-models/clip"


def test_prepare_run_json_refuses_another_dataset(tmp_path):
    from c123.errors import C123Error
    from c123_pipeline.tasks.run_folder import prepare_run_json

    info = {"run_id": "a", "dataset": "c10", "preset": "tiny", "created_at": "t0"}
    prepare_run_json(tmp_path, dict(info))
    again = prepare_run_json(tmp_path, {**info, "run_id": "b", "created_at": "t1"})
    assert again["run_id"] == "a" and again["created_at"] == "t0"
    with pytest.raises(C123Error, match="holds a run of dataset 'c10'"):
        prepare_run_json(tmp_path, {**info, "dataset": "realfusion15"})
