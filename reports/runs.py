"""Loading benchmark run folders (run.json, per_case/per_view Parquet, per-case result.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from c123.errors import C123Error
from c123.outputs import plain_case_id

METHOD_KEY = ["run_id", "variant", "weight_shape", "preset"]
"""Columns that make one 'reproduced' method row: the same variant in two runs stays two rows."""


@dataclass
class Run:
    """One benchmark run folder, loaded."""

    path: Path
    run_id: str
    info: dict
    per_case: pd.DataFrame
    per_view: pd.DataFrame
    created_at: pd.Timestamp

    def case_dir(self, case_dir: str) -> Path:
        """Absolute folder of one case output, from per_case's case_dir (relative to the run)."""
        return self.path / case_dir

    def result(self, case_dir: str) -> dict | None:
        """The case's result.json, or None when the case never wrote one (failed early)."""
        if not isinstance(case_dir, str):
            return None
        path = self.case_dir(case_dir) / "result.json"
        return json.loads(path.read_text()) if path.is_file() else None


TRUTH_DIR = "truth"
"""Folder of a synthetic case's true views (written with its metrics), named like the orbit views they are
compared with: the report shows them side by side."""

REQUIRED = ("run_id", "dataset", "case", "variant", "weight_shape", "preset", "seed", "status")
"""per_case columns without which a run cannot be reported or compared."""


class RunFolderError(C123Error):
    """A file of a run folder cannot be read; the message says how to rebuild it."""


def _unreadable(path: Path, err: BaseException) -> RunFolderError:
    reason = " ".join(str(err).split())[:160] or type(err).__name__
    return RunFolderError(f"{path} cannot be read ({type(err).__name__}: {reason}): rebuild it by rerunning "
                          f"`c123 evaluate` with --out {path.parent} (finished cases are reused, not recomputed)")


def _read_parquet(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise _unreadable(path, err) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _unreadable(path, ValueError(f"columns {', '.join(missing)} missing"))
    return df


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object, {} when absent; OSError or ValueError when it cannot be read as one."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _read_info(path: Path) -> dict:
    """run.json as a dict ({} when absent)."""
    try:
        info = read_json_object(path)
        if info.get("created_at"):
            pd.Timestamp(info["created_at"])
    except (OSError, ValueError) as err:
        raise _unreadable(path, err) from None
    return info


def load_run(run_dir: str | Path) -> Run:
    """Load RUN/run.json (optional), RUN/per_case.parquet and RUN/per_view.parquet (optional); a damaged file
    is a one-line RunFolderError naming it and how to rebuild it."""
    path = Path(run_dir).resolve()
    per_case_path = path / "per_case.parquet"
    if not per_case_path.is_file():
        raise C123Error(f"no per_case.parquet in {path}: pass a finished benchmark run folder")
    info = _read_info(path / "run.json")
    per_case = renamed_columns(_read_parquet(per_case_path, REQUIRED))
    per_case["dataset"] = per_case["dataset"].astype(str).str.lower()  # 'C10' and 'c10' are one dataset
    per_view_path = path / "per_view.parquet"
    per_view = _read_parquet(per_view_path) if per_view_path.is_file() else pd.DataFrame()
    for frame in (per_case, per_view):
        if "case" in frame:  # runs before case ids lost the '_rgba' suffix compare with the runs after them
            frame["case"] = frame["case"].astype(str).map(plain_case_id)
    run_id = str(info.get("run_id") or (per_case["run_id"].iloc[0] if len(per_case) else path.name))
    # Nightly trends need an order; a run.json without created_at falls back to the Parquet's mtime.
    created = info.get("created_at")
    created_at = pd.Timestamp(created) if created else pd.Timestamp(per_case_path.stat().st_mtime, unit="s")
    if created_at.tzinfo is None:
        created_at = created_at.tz_localize("UTC")
    return Run(path=path, run_id=run_id, info=info, per_case=per_case, per_view=per_view, created_at=created_at)


def renamed_columns(per_case: pd.DataFrame) -> pd.DataFrame:
    """per_case rows of a run written before a column was renamed (c123.metrics.RENAMED_COLUMNS: the squared
    Chamfer was `chamfer`) under today's names; a frame holding both names keeps both (nothing is overwritten)."""
    from c123.metrics import RENAMED_COLUMNS

    return per_case.rename(columns={old: new for old, new in RENAMED_COLUMNS.items()
                                    if old in per_case and new not in per_case})


def load_runs(run_dirs) -> list[Run]:
    """Load several runs, in the order given."""
    return [load_run(d) for d in run_dirs]


def all_cases(runs: list[Run]) -> pd.DataFrame:
    """per_case rows of all runs, with a `label` column naming the method row they belong to."""
    frames = [r.per_case for r in runs if len(r.per_case)]
    if not frames:
        return pd.DataFrame(columns=[*METHOD_KEY, "label", "dataset", "case", "status"])
    df = pd.concat(frames, ignore_index=True)
    df["label"] = method_labels(df)
    return df


def method_labels(df: pd.DataFrame) -> pd.Series:
    """'variant · shape · preset', then the 3D prior when it is not Zero-1-to-3 ('· stable-zero123': Table 1's
    "Consistent123 with Stable Zero123" row), plus the run id when the frame holds more than one run."""
    label = df["variant"].astype(str) + " · " + df["weight_shape"].astype(str) + " · " + df["preset"].astype(str)
    if "prior_3d" in df:  # runs before the column read as Zero-1-to-3's
        other = df["prior_3d"].notna() & (df["prior_3d"].astype(str) != "zero123")
        label = label.where(~other, label + " · " + df["prior_3d"].astype(str))
    if df["run_id"].nunique() > 1:
        label = label + " · " + df["run_id"].astype(str)
    return label




def run_datasets(run: Run) -> set[str]:
    """The datasets (lower case) a run's rows and run.json name."""
    named = {str(run.info["dataset"]).lower()} if run.info.get("dataset") else set()
    return {str(d).lower() for d in run.per_case["dataset"].unique()} | named


def check_comparable(base: Run, where, datasets: set[str], case_ids) -> None:
    """C123Error unless the baseline run `base` (at `where`) is of the same dataset(s) and shares a case with the
    run it judges (else the verdict would compare nothing and say "OK")."""
    theirs, ours = run_datasets(base), {d.lower() for d in datasets}
    if theirs != ours:
        raise C123Error(f"baseline {where} is a run of {', '.join(sorted(theirs)) or 'no dataset'}, not "
                        f"{', '.join(sorted(ours)) or 'no dataset'}: pass a run folder of the same dataset")
    case_ids = [str(c) for c in case_ids]
    if not set(base.per_case["case"].astype(str)) & set(case_ids):
        raise C123Error(f"baseline {where} shares no case with this run ({', '.join(case_ids[:5])}"
                        f"{', ...' if len(case_ids) > 5 else ''}): pass a run of the same cases")
