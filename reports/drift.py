"""Slow drift: the current run judged against a reference window of earlier runs, not only the newest one.

A metric that loses 0.3 dB a night never moves 0.5 dB between two nights, so the verdict against
`baseline='latest'` (reports/regression.compare) passes it forever. Here the reference is the median of the
last N good runs of the history (reports/history.load_history), or one pinned golden run, and the current run
is flagged when its metric moved the wrong way by more than the threshold against that reference, counted over
the same (case, seed) pairs and averaged per method like compare().

"Good" runs are decided by walking the history oldest first, each run judged against the window before it the
same way: a run that drifted is left out of the window of later runs, so a decline keeps being flagged until it
is fixed (or a new golden run is pinned) instead of becoming the new normal. A median window lags a steady
decline by about (N+1)/2 nights, so a decline slower than threshold / ((N+1)/2) per night needs a larger N or
a golden run (benchmark-history tools such as airspeed velocity judge against the history the same way).

The night the decline began is the first run of the unbroken sequence of runs before the current one that are
each worse than the reference by more than ONSET_FRACTION of the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from c123.errors import C123Error
from c123_pipeline.reports.regression import GROUP, HIGHER_IS_BETTER, Finding, Verdict, compare, parse_thresholds

PAIR = ["case", "seed"]
ONSET_FRACTION = 0.2
"""A run counts as moved away from the reference when it is worse by more than this share of the threshold
(noise below it does not start a decline)."""


@dataclass(frozen=True)
class Reference:
    """What the drift check compares the current run with."""

    window: int = 5
    """The median of the last `window` good earlier runs (>= 1)."""
    golden: str | None = None
    """A pinned golden run (its run id in the history) instead of the window."""

    def __post_init__(self):
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise C123Error(f"drift window {self.window!r} must be an integer >= 1 (the number of earlier good "
                            "runs whose median is the reference)")

    def describe(self) -> str:
        return f"golden run {self.golden}" if self.golden else f"median of the last {self.window} good runs"


def _values(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The metric per (case, seed) over succeeded rows with a value."""
    ok = rows[(rows["status"] == "ok")]
    values = ok.set_index(PAIR)[metric].astype("float64").dropna() if metric in ok else pd.Series(dtype="float64")
    return values[~values.index.duplicated()]


def _worse(current: pd.Series, reference: pd.Series, metric: str) -> tuple[float, float, float, int]:
    """(worsening, reference mean, current mean, pairs) over the pairs both have; NaN worsening without pairs."""
    both = pd.concat([reference.rename("ref"), current.rename("cur")], axis=1, join="inner")
    if both.empty:
        return float("nan"), float("nan"), float("nan"), 0
    ref, cur = float(both["ref"].mean()), float(both["cur"].mean())
    return (ref - cur) if HIGHER_IS_BETTER[metric] else (cur - ref), ref, cur, len(both)


def _reference_values(runs: list[pd.DataFrame], metric: str) -> pd.Series:
    """Per (case, seed): the median over the reference runs of the metric."""
    values = [_values(r, metric) for r in runs]
    values = [v for v in values if len(v)]
    return pd.concat(values).groupby(level=PAIR).median() if values else pd.Series(dtype="float64")


def _drifted(run: pd.DataFrame, refs: list[pd.DataFrame], metrics: list[str], thresholds: dict) -> bool:
    worse = [_worse(_values(run, m), _reference_values(refs, m), m)[0] for m in metrics]
    return any(w > thresholds[m] + 1e-9 for w, m in zip(worse, metrics))


def reference_runs(earlier: list[pd.DataFrame], metrics: list[str], thresholds: dict, ref: Reference) -> list:
    """The earlier runs (rows of one method, oldest first) forming the reference: the golden run, or the last
    `window` good ones (a run that drifted from the window before it is not good)."""
    if ref.golden:
        golden = [r for r in earlier if str(r["run_id"].iloc[0]) == ref.golden]
        if not golden:
            raise C123Error(f"golden run {ref.golden} is not an earlier run of this dataset and preset in the runs "
                            "folder: pass the run id of one (c123 history RUNS --dataset D lists them)")
        return golden
    good: list[pd.DataFrame] = []
    for run in earlier:
        if not good or not _drifted(run, good[-ref.window:], metrics, thresholds):
            good.append(run)
    return good[-ref.window:]


def _onset(current: pd.DataFrame, earlier: list[pd.DataFrame], reference: pd.Series, metric: str,
           threshold: float) -> pd.DataFrame:
    """The first run of the unbroken run of nights, ending with the current one, worse than the reference."""
    onset = current
    for run in reversed(earlier):
        if not _worse(_values(run, metric), reference, metric)[0] > ONSET_FRACTION * threshold:
            break
        onset = run
    return onset


def drift(current: pd.DataFrame, history: pd.DataFrame, thresholds=None,
          reference: Reference = Reference()) -> list[Finding]:
    """Findings of kind 'drift', one per method and metric, of `current` per_case rows against the reference
    taken from the runs of `history` (reports.history rows) older than the current run."""
    thresholds = parse_thresholds(thresholds)
    if current.empty or history.empty:
        return []
    cur = current.assign(dataset=current["dataset"].astype(str).str.lower(), seed=current["seed"].astype("int64"))
    run_id = str(cur["run_id"].iloc[0])
    hist = history.assign(dataset=history["dataset"].astype(str).str.lower(), seed=history["seed"].astype("int64"))
    when = hist.loc[hist["run_id"] == run_id, "run_time"]
    earlier_rows = hist[hist["run_id"] != run_id]
    if len(when):  # the current run is in the history: only the runs before it
        earlier_rows = earlier_rows[earlier_rows["run_time"] < when.iloc[0]]
    findings = []
    for key, mine in cur.groupby(GROUP, sort=True):
        theirs = earlier_rows.merge(pd.DataFrame([dict(zip(GROUP, key))]), on=GROUP)
        earlier = [g for _, g in theirs.sort_values("run_time", kind="stable").groupby("run_id", sort=False)]
        metrics = [m for m in HIGHER_IS_BETTER if m in thresholds and m in mine and m in theirs]
        refs = reference_runs(earlier, metrics, thresholds, reference) if earlier else []
        if not refs:
            continue
        for metric in metrics:
            ref_values = _reference_values(refs, metric)
            ids = [str(r["run_id"].iloc[0]) for r in refs if len(_values(r, metric))]  # older runs may lack it
            worse, mb, mc, n = _worse(_values(mine, metric), ref_values, metric)
            if n == 0:
                continue
            regressed = bool(worse > thresholds[metric] + 1e-9)
            since = _onset(mine, earlier, ref_values, metric, thresholds[metric]) if regressed else None
            detail = f"reference: {reference.describe()} ({ids[0]}{' .. ' + ids[-1] if len(ids) > 1 else ''})"
            if since is not None:
                detail += f"; decline began with {since['run_id'].iloc[0]}"
            findings.append(Finding("drift", *key, metric, regressed, baseline=mb, current=mc, delta=mc - mb,
                                    threshold=thresholds[metric], n_pairs=n, detail=detail,
                                    since="" if since is None else str(since["run_id"].iloc[0])))
    return findings


def judge(current: pd.DataFrame, baseline: pd.DataFrame | None, history: pd.DataFrame | None,
          thresholds=None, reference: Reference | None = None) -> Verdict | None:
    """The verdict of `current`: against `baseline` (compare), and with a `reference`, against the history's
    reference window (drift); None when there is nothing to judge against."""
    verdict = compare(current, baseline, thresholds) if baseline is not None else None
    if reference is None or history is None:
        return verdict
    findings = drift(current, history, thresholds, reference)
    if verdict is None:
        if not findings:
            return None
        verdict = Verdict(str(current["run_id"].iloc[0]), "", False, parse_thresholds(thresholds))
    return verdict.add(findings, reference.describe())
