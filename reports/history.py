"""The history of a runs folder: every finished run of a dataset as one table, and `c123 history`.

A runs folder (local, or an fsspec URL such as s3://bucket/runs, read through tasks/storage.py like the run
folders themselves) holds one folder per run. The history is their per_case.parquet files read as ONE pyarrow
dataset under the union of their schemas: a column that older runs lack (a metric added later) is null in
their rows, never a crash; a column whose type widened between versions is read as the wider type. Each row
gains its run's `run_time` (run.json created_at), `code_version` and `config_hash` (the row's own, else
run.json's) and `run_dir`.

`c123 history RUNS --dataset c10` prints one line per run and method and writes the whole dataset's history
to RUNS/history/dataset=c10/history.parquet (hive layout), which reads back in one line:
`pd.read_parquet("runs/history")`, `duckdb.sql("SELECT * FROM 'runs/history/*/*.parquet'")`,
`pl.read_parquet("runs/history/**/*.parquet", hive_partitioning=True)`.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from c123.cli import OneLineParser
from c123.errors import C123Error
from c123.outputs import plain_case_id
from c123_pipeline.reports import published as pub
from c123_pipeline.reports.runs import REQUIRED, Run
from c123_pipeline.tasks import storage

HISTORY_DIR = "history"
"""Subfolder of the runs folder that receives the history Parquet (never read as a run)."""

RUN_COLUMNS = ("run_time", "run_dir")
"""Columns the reader adds to every row (beside code_version and config_hash, filled in when missing)."""

SERIES = ["dataset", "variant", "weight_shape", "preset"]
"""One line of the trend / one method of a run."""


def _complain(message: str, on_unreadable: Callable[[str], None] | None) -> None:
    """An unreadable run: a one-line C123Error, or (given `on_unreadable`) reported there and skipped."""
    if on_unreadable is None:
        raise C123Error(message)
    on_unreadable(message)


def run_folders(runs_root: storage.Location, dataset: str, preset: str | None = None,
                on_unreadable: Callable[[str], None] | None = None) -> list[tuple]:
    """(folder, run.json) of every finished run (a per_case.parquet) of `dataset` (and `preset`) under
    `runs_root`, by folder name; a run.json that cannot be read is a one-line C123Error naming it (or reported
    to `on_unreadable` and left out)."""
    found = []
    for folder in storage.subfolders(runs_root):
        if str(folder).rstrip("/").rsplit("/", 1)[-1] == HISTORY_DIR or \
                not storage.is_file(storage.join(folder, "per_case.parquet")):
            continue
        path = storage.join(folder, "run.json")
        try:
            info = storage.read_json_object(path)
        except (OSError, ValueError) as err:
            _complain(f"{path} cannot be read ({type(err).__name__}: {err}): fix or remove that run folder",
                      on_unreadable)
            continue
        # a run without run.json (hand-made, very old) is judged by its rows below
        if info.get("dataset") and str(info["dataset"]).lower() != dataset.lower():
            continue
        if preset and info.get("preset") and info["preset"] != preset:
            continue
        found.append((folder, info))
    return found


def _dataset(folder: storage.Location) -> pads.Dataset:
    path = storage.join(folder, "per_case.parquet")
    if storage.is_url(path):
        fs, inner = storage.filesystem(str(path))
        return pads.dataset(inner, format="parquet", filesystem=fs)  # pyarrow wraps the fsspec filesystem
    return pads.dataset(str(path), format="parquet")


def _unified_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The union of the runs' schemas; a type that widened (int -> double, null -> string) takes the wider."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise C123Error(f"the runs' per_case columns cannot be read as one table ({err}): a column changed "
                        "type between code versions in a way Arrow cannot widen") from None


def _run_rows(table: pa.Table, folder, info: dict) -> pd.DataFrame:
    """One run's rows with run_time, run_dir, code_version and config_hash filled in."""
    df = table.to_pandas()
    df["run_time"] = _run_time(folder, info)
    df["run_dir"] = str(folder)
    for column, value in (("run_id", info.get("run_id")), ("code_version", info.get("code_version"))):
        if value:
            df[column] = df[column].fillna(value)
    hashes = {v: (c or {}).get("config_hash") for v, c in (info.get("config") or {}).items()}
    df["config_hash"] = df["config_hash"].fillna(df["variant"].map(hashes))
    return df


def _run_time(folder, info: dict) -> pd.Timestamp:
    """run.json's created_at (UTC); without one (a hand-made or very old run), the Parquet's modification time,
    as reports.runs.load_run does."""
    created = info.get("created_at")
    if created:
        when = pd.Timestamp(created)
    else:
        path = storage.join(folder, "per_case.parquet")
        if storage.is_url(path):
            fs, inner = storage.filesystem(str(path))
            when = pd.Timestamp(fs.modified(inner))
        else:
            when = pd.Timestamp(path.stat().st_mtime, unit="s")
    return when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")


def load_history(runs_root: storage.Location, dataset: str, preset: str | None = None,
                 on_unreadable: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every finished run's per_case rows of `dataset` (and `preset`) under `runs_root`, oldest run first. A run
    that cannot be read is a one-line C123Error, or with `on_unreadable` (the report's trend) reported there and
    left out."""
    root = storage.location(runs_root)
    if storage.is_url(root):
        storage.check_reachable(root)
    elif not root.is_dir():
        raise C123Error(f"runs folder {root} does not exist: pass the folder that holds the run folders "
                        "(c123 evaluate's --out parent, $C123_RUNS)")
    parts, schemas = [], []
    for folder, info in run_folders(root, dataset, preset, on_unreadable):
        try:
            data = _dataset(folder)
        except (OSError, pa.ArrowInvalid) as err:
            _complain(f"{storage.join(folder, 'per_case.parquet')} cannot be read ({' '.join(str(err).split())}): "
                      f"rebuild it by rerunning `c123 evaluate` with --out {folder}", on_unreadable)
            continue
        missing = [c for c in REQUIRED if c not in data.schema.names]
        if missing:
            _complain(f"{storage.join(folder, 'per_case.parquet')} lacks the columns {', '.join(missing)}: rebuild "
                      f"it by rerunning `c123 evaluate` with --out {folder}", on_unreadable)
            continue
        parts.append((folder, info, data))
        schemas.append(data.schema)
    base = pa.schema([(c, pa.null()) for c in (*REQUIRED, "code_version", "config_hash")])  # typed by the runs
    schema = _unified_schema([base, *schemas])
    frames = []
    for folder, info, data in parts:
        # the unified schema on the run's own dataset: its missing columns come back as nulls
        table = pads.dataset(data.files, schema=schema, format="parquet", filesystem=data.filesystem).to_table()
        frames.append(_run_rows(table, folder, info))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=[*schema.names, *RUN_COLUMNS])
    df = pd.concat(frames, ignore_index=True)
    df["dataset"] = df["dataset"].astype(str).str.lower()
    df = df[df["dataset"] == dataset.lower()]
    if preset:
        df = df[df["preset"] == preset]
    df["case"] = df["case"].astype(str).map(plain_case_id)
    return df.sort_values(["run_time", "run_id"], kind="stable").reset_index(drop=True)


def from_runs(runs: list[Run]) -> pd.DataFrame:
    """The history rows of runs already loaded (the report's runs and baseline when no runs folder is given)."""
    frames = []
    for run in runs:
        df = run.per_case.copy()
        df["run_time"], df["run_dir"] = run.created_at, str(run.path)
        if "code_version" not in df:
            df["code_version"] = run.info.get("code_version")
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*REQUIRED, *RUN_COLUMNS])
    return pd.concat(frames, ignore_index=True).sort_values(["run_time", "run_id"], kind="stable")


def history_path(runs_root: storage.Location, dataset: str) -> storage.Location:
    """RUNS/history/dataset=<dataset>/history.parquet: hive partitioning, so readers get `dataset` back."""
    return storage.join(storage.location(runs_root), HISTORY_DIR, f"dataset={dataset.lower()}", "history.parquet")


def write_history(history: pd.DataFrame, out: storage.Location) -> storage.Location:
    """The history as one Parquet file at `out` (atomic, local or URL); the partition column `dataset` lives in
    the folder name, as hive readers expect."""
    table = pa.Table.from_pandas(history.drop(columns=["dataset"]), preserve_index=False)
    with storage.atomic_file(out) as tmp:
        import pyarrow.parquet as pq

        pq.write_table(table, tmp)
    return out


def run_summary(history: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per run and method: when, code version, config hash(es), ok/cases, and per metric the mean and
    standard deviation over its succeeded cases and seeds."""
    rows = []
    for (when, run_id, *series), group in history.groupby(["run_time", "run_id", *SERIES[1:]], sort=True,
                                                          dropna=False):
        ok = group[group["status"] == "ok"]
        row = {"run_time": when, "run_id": run_id, "method": " · ".join(map(str, series)),
               "code_version": ", ".join(sorted(group["code_version"].dropna().astype(str).unique())) or None,
               "config_hash": ", ".join(sorted(group["config_hash"].dropna().astype(str).unique())) or None,
               "ok": len(ok), "cases": len(group)}
        for m in metrics:
            values = ok[m].astype("float64").dropna() if m in ok else pd.Series(dtype="float64")
            row[m], row[f"{m}_sd"] = (values.mean(), values.std(ddof=0)) if len(values) else (math.nan, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def print_summary(summary: pd.DataFrame, metrics: list[str], title: str) -> None:
    """The summary as a rich table on stdout (a column of '–' for a metric a run did not measure)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("run time", "run", "code", "config", "method", "ok"):
        table.add_column(name, no_wrap=name != "run")
    for m in metrics:
        table.add_column(pub.METRIC_LABELS.get(m, m), justify="right")
    for r in summary.itertuples():
        cells = [getattr(r, m) for m in metrics]
        sds = [getattr(r, f"{m}_sd") for m in metrics]
        table.add_row(pd.Timestamp(r.run_time).strftime("%Y-%m-%d %H:%M") if not pd.isna(r.run_time) else "–",
                      str(r.run_id), _text(r.code_version), _text(r.config_hash)[:12], r.method,
                      f"{r.ok}/{r.cases}",
                      *("–" if math.isnan(v) else f"{v:.4g} ± {s:.2g}" for v, s in zip(cells, sds)))
    Console(width=200).print(table)


def _text(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def parser() -> argparse.ArgumentParser:
    """`c123 history RUNS --dataset D [--preset P] [--metric M ...] [--out FILE]`."""
    p = OneLineParser(prog="c123 history", description="Every finished run of a dataset under a runs folder as "
                      "one table (printed) and one Parquet dataset (written).")
    p.add_argument("runs", metavar="RUNS", help="the runs folder: a local folder or a URL such as s3://bucket/runs")
    p.add_argument("--dataset", required=True, help="dataset of the runs (c10, realfusion15, synthetic, ...)")
    p.add_argument("--preset", help="only runs of this preset in the printed table (the Parquet holds all)")
    p.add_argument("--metric", action="extend", nargs="+", default=[], metavar="METRIC",
                   help="metrics to print (default: psnr lpips clip_similarity; any per_case column)")
    p.add_argument("--out", metavar="FILE", help="history Parquet (default RUNS/history/dataset=D/history.parquet)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 when the history is written, 2 on a usage error or when no run is found."""
    try:
        args = parser().parse_args(argv)
        history = load_history(args.runs, args.dataset)
        if history.empty:
            raise C123Error(f"no finished run of dataset {args.dataset} under {storage.location(args.runs)}: "
                            "pass the folder that holds the run folders")
        metrics = args.metric or list(pub.METRICS)
        unknown = [m for m in metrics if m not in history]
        if unknown:
            raise C123Error(f"no column {', '.join(unknown)} in any run's per_case.parquet: use metric columns "
                            f"such as {', '.join(pub.METRICS)}")
        shown = history[history["preset"] == args.preset] if args.preset else history
        if shown.empty:
            raise C123Error(f"no finished {args.dataset} run of preset {args.preset} under "
                            f"{storage.location(args.runs)}: its runs are of {', '.join(sorted(set(history['preset'])))}")
        out = write_history(history, args.out or history_path(args.runs, args.dataset))
    except C123Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(run_summary(shown, metrics), metrics,
                  f"{args.dataset}{' · ' + args.preset if args.preset else ''}: {shown['run_id'].nunique()} runs")
    print(f"history: {out} ({len(history)} rows, {history['run_id'].nunique()} runs); read it with "
          f"pandas.read_parquet('{storage.parent(storage.parent(out))}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
