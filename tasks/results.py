"""per_case / per_view tables with the exact docs/ARCHITECTURE.md schema and dtypes; atomic Parquet writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from c123.atomic import atomic_path

PER_CASE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("dataset", pa.string()), ("case", pa.string()), ("category", pa.string()),
    ("variant", pa.string()), ("weight_shape", pa.string()), ("preset", pa.string()), ("seed", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("switch_iteration", pa.int64()),
    ("seconds_nerf", pa.float64()), ("seconds_dmtet", pa.float64()), ("seconds_export", pa.float64()),
    ("seconds_total", pa.float64()), ("clip_similarity", pa.float64()), ("psnr", pa.float64()),
    ("lpips", pa.float64()), ("metric_status", pa.string()), ("novel_psnr", pa.float64()),
    ("novel_lpips", pa.float64()), ("chamfer", pa.float64()), ("clip_model", pa.string()),
    ("num_views", pa.int64()), ("resolution", pa.int64()), ("background", pa.string()),
    ("lpips_net", pa.string()), ("config_hash", pa.string()), ("code_version", pa.string()),
    ("device", pa.string()), ("case_dir", pa.string()), ("cache_key", pa.string()),
])
"""per_case.parquet; nullable: category, error, switch_iteration (Int64 in pandas); floats NaN when unknown."""

PER_VIEW_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("dataset", pa.string()), ("case", pa.string()), ("variant", pa.string()),
    ("seed", pa.int64()), ("view_index", pa.int64()), ("azimuth", pa.float64()), ("elevation", pa.float64()),
    ("clip_similarity", pa.float64()), ("weight_shape", pa.string()),
])
"""per_view.parquet: ARCHITECTURE.md's columns, then weight_shape (two shapes of a variant are two methods)."""

_PANDAS_DTYPES = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64"}
NULLABLE_INT = {"switch_iteration"}


def _frame(rows: list[dict], schema: pa.Schema) -> pd.DataFrame:
    data = {}
    for f in schema:
        values = [row.get(f.name) for row in rows]
        if f.type == pa.float64():
            data[f.name] = pd.array([float("nan") if v is None else float(v) for v in values], dtype="float64")
        elif f.type == pa.int64():
            if f.name in NULLABLE_INT:
                data[f.name] = pd.array([None if v is None or v != v else int(v) for v in values], dtype="Int64")
            else:
                data[f.name] = pd.array([int(v) for v in values], dtype="int64")
        else:
            data[f.name] = pd.array([None if v is None else str(v) for v in values], dtype="string")
    return pd.DataFrame(data, columns=[f.name for f in schema])


def per_case_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts) -> per_case DataFrame in schema order and dtypes (unknown keys dropped)."""
    return _frame(rows, PER_CASE_SCHEMA)


def per_view_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts) -> per_view DataFrame in schema order and dtypes."""
    return _frame(rows, PER_VIEW_SCHEMA)


def write_parquet(df: pd.DataFrame, path: str | Path, schema: pa.Schema) -> Path:
    """Write with the explicit Arrow schema via a temp file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


@task(name="write-parquet", cache_policy=NO_CACHE)
def write_results_task(run_dir: str, case_rows: list[dict], view_rows: list[dict]) -> dict:
    """RUN/per_case.parquet and RUN/per_view.parquet (atomic); returns their paths."""
    run = Path(run_dir)
    per_case = write_parquet(per_case_frame(case_rows), run / "per_case.parquet", PER_CASE_SCHEMA)
    per_view = write_parquet(per_view_frame(view_rows), run / "per_view.parquet", PER_VIEW_SCHEMA)
    return {"per_case": str(per_case), "per_view": str(per_view)}
