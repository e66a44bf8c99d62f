"""The per_case / per_view records and their Parquet files: one dataclass per table, the Arrow schema derived
from it (docs/ARCHITECTURE.md lists the same columns), atomic writes."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from c123_pipeline.tasks import storage


@dataclass
class CaseRow:
    """One row of per_case.parquet: a (case, variant, seed) of a run, its outcome, metrics and provenance."""

    run_id: str
    dataset: str
    case: str
    category: str | None
    variant: str
    weight_shape: str
    preset: str
    seed: int
    status: str
    """'ok' or 'failed'."""
    error: str | None
    """One line, e.g. 'InputError: ... is not a readable image ...'."""
    switch_iteration: int | None
    """NeRF step of the 3D -> dynamic switch (None when failed or never)."""
    seconds_nerf: float
    seconds_dmtet: float
    seconds_export: float
    seconds_total: float
    clip_similarity: float
    psnr: float
    lpips: float
    metric_status: str
    """'ok', or '; '-joined 'metric: reason'; 'not computed: case failed'."""
    novel_psnr: float
    novel_lpips: float
    chamfer_sq: float
    """Sum of the two squared mean nearest distances between 10^4 samples of the exported mesh and of the true
    surface, scene units (synthetic only); called `chamfer` before (reports.runs reads old runs)."""
    unseen_psnr: float
    """Novel-view PSNR over the orbit views at least 90 degrees from the reference (synthetic only)."""
    fscore: float
    """F-score at 0.01 of the exported mesh against the true surface (synthetic only)."""
    silhouette_iou: float
    """Mean IoU of the orbit views' silhouettes (alpha > 0.5) with the true ones (synthetic only)."""
    sd_chamfer: float
    """SyncDreamer's Chamfer (protocol syncdreamer; synthetic and GSO): mean unsquared nearest distance between
    the 16-depth-map point clouds both ways, halved, for a truth of largest extent 1."""
    sd_volume_iou: float
    """SyncDreamer's volume IoU on mesh2sdf's 64^3 grid (protocol syncdreamer)."""
    sd_psnr: float
    """PSNR of the 16 orbit views at the reference elevation against the true ones, on white (syncdreamer)."""
    sd_ssim: float
    """SSIM of those views (torchmetrics' 2023 SSIM: 11 px Gaussian, border cropped)."""
    sd_lpips: float
    """LPIPS-VGG of those views."""
    protocol: str
    """Name of the metric protocol (c123.metrics.PROTOCOLS); the next five columns are its resolved values."""
    clip_model: str
    num_views: int
    resolution: int
    background: str
    lpips_net: str
    config_hash: str
    code_version: str
    device: str
    case_dir: str
    """Case folder relative to the run folder."""
    cache_key: str
    node_id: str | None = None
    """Ray node that computed the case in this run (None when it was reused from the cache)."""
    peak_memory_gb: float = float("nan")
    """Peak GPU memory of the case's tensors, torch.cuda.max_memory_allocated in GB (1e9 bytes) of the actor
    that computed it; NaN on CPU (no such counter) and for a case reused from the cache."""
    elevation: float = float("nan")
    """Elevation (degrees) of the input camera the reconstruction assumed, 90 - camera.ref_polar."""
    elevation_source: str | None = None
    """Where that elevation came from: 'parameter' (the flow's `elevation`), 'table' (the dataset's), 'config'
    (the preset's 0 or an override), 'estimate' (from the image); flows.spec.ELEVATION_SOURCES."""
    elevation_confidence: float = float("nan")
    """Confidence (0 to 1) of an estimated elevation (c123/elevation.py); NaN where it was given."""
    prior_3d: str = "zero123"
    """The 3D prior's family (prior.zero123_family: 'zero123' or 'stable-zero123'); the oracle stands in for it."""
    true_elevation: float = float("nan")
    """Elevation the input view was really taken from, where the dataset knows it (synthetic, GSO); else NaN."""


@dataclass
class ViewRow:
    """One row of per_view.parquet: the metrics of one orbit view of a case."""

    run_id: str
    dataset: str
    case: str
    variant: str
    seed: int
    view_index: int
    azimuth: float
    elevation: float
    clip_similarity: float
    weight_shape: str
    novel_psnr: float
    """PSNR against the true view (synthetic only, else NaN)."""
    silhouette_iou: float
    """IoU of the silhouette with the true one (synthetic only, else NaN)."""


_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64()}


def _column_types(cls) -> list[tuple[str, type, bool]]:
    """(name, base type, nullable) of each field of a row record; `X | None` is nullable X."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        out.append((f.name, args[0] if args else hints[f.name], bool(args)))
    return out


def arrow_schema(cls) -> pa.Schema:
    """The Arrow schema of a row record: str -> string, int -> int64, float -> float64 (NaN when unknown)."""
    return pa.schema([(name, _ARROW[base]) for name, base, _ in _column_types(cls)])


PER_CASE_SCHEMA = arrow_schema(CaseRow)
PER_VIEW_SCHEMA = arrow_schema(ViewRow)


def frame(rows: list, cls) -> pd.DataFrame:
    """Row records -> DataFrame in schema order; dtypes: string, int64 (Int64 when nullable), float64."""
    records = [dataclasses.asdict(r) for r in rows]
    data = {}
    for name, base, nullable in _column_types(cls):
        values = [r[name] for r in records]
        if base is float:
            data[name] = pd.array([float("nan") if v is None else float(v) for v in values], dtype="float64")
        elif base is int:
            data[name] = pd.array([None if v is None or v != v else int(v) for v in values],
                                  dtype="Int64" if nullable else "int64")
        else:
            data[name] = pd.array([None if v is None else str(v) for v in values], dtype="string")
    return pd.DataFrame(data, columns=[name for name, _, _ in _column_types(cls)])


def write_parquet(df: pd.DataFrame, path: storage.Location, schema: pa.Schema) -> storage.Location:
    """Write with the explicit Arrow schema, atomically (a local path or a URL: tasks.storage.atomic_file)."""
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    with storage.atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return path


@task(name="write-parquet", cache_policy=NO_CACHE)
def write_results_task(run_dir: str, case_rows: list[CaseRow], view_rows: list[ViewRow]) -> dict:
    """RUN/per_case.parquet and RUN/per_view.parquet (atomic); returns their paths."""
    per_case = write_parquet(frame(case_rows, CaseRow), storage.join(run_dir, "per_case.parquet"), PER_CASE_SCHEMA)
    per_view = write_parquet(frame(view_rows, ViewRow), storage.join(run_dir, "per_view.parquet"), PER_VIEW_SCHEMA)
    return {"per_case": str(per_case), "per_view": str(per_view)}
