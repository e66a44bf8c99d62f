"""Regression verdict of a run against a baseline run.

Cases are matched on (dataset, case, variant, weight_shape, seed); weight_shape joins the brief's
(case, variant, seed) because two shapes of one variant are different methods. A metric regresses when,
per (dataset, variant, weight_shape), the mean over matched pairs where both sides have a value moves the
wrong way by more than its threshold, or than the baseline's seed-to-seed spread where it has several seeds
of a case (seed_tolerance): single-image reconstructions are noisy case by case, the mean over the same
cases is not. Failures are judged per case: a case that succeeded in the baseline and failed now,
or whose metric had a value and is NaN now, is flagged on its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from c123 import metrics
from c123.atomic import write_atomic
from c123.errors import C123Error

KEY = ["dataset", "case", "variant", "weight_shape", "seed"]
GROUP = ["dataset", "variant", "weight_shape"]

HIGHER_IS_BETTER = {**metrics.HIGHER_IS_BETTER, "seconds_nerf": False, "seconds_dmtet": False,
                    "seconds_export": False, "seconds_total": False}
"""Metrics a threshold may be set for, and which way is better."""

DEFAULT_THRESHOLDS = {"psnr": 0.5, "lpips": 0.01, "clip_similarity": 0.01, "new_failures": 0}
"""Allowed worsening per metric (in its unit), and how many newly failed cases are tolerated."""


@dataclass
class Finding:
    """One comparison: a metric of a method group, or one case that newly failed."""

    kind: str  # 'metric' | 'new_failure' | 'metric_lost' | 'missing' | 'drift' (reports/drift.py)
    dataset: str
    variant: str
    weight_shape: str
    metric: str
    regressed: bool
    baseline: float = math.nan
    current: float = math.nan
    delta: float = math.nan
    threshold: float = math.nan
    n_pairs: int = 0
    case: str = ""
    seed: int | None = None
    detail: str = ""
    since: str = ""
    """For 'drift': the run the decline began with (the first that moved away from the reference)."""


@dataclass
class Verdict:
    """Whether the run regressed against the baseline, with every finding and a Markdown summary."""

    run_id: str
    baseline_run_id: str
    regressed: bool
    thresholds: dict[str, float]
    findings: list[Finding] = field(default_factory=list)
    markdown: str = ""
    reference: str = ""
    """What the drift findings compare with (reports/drift.py), '' without a drift check."""

    def add(self, findings: list[Finding], reference: str = "") -> "Verdict":
        """More findings (another judgement of the same run): regressed and the markdown follow them."""
        self.findings += findings
        self.reference = reference or self.reference
        self.regressed = any(f.regressed for f in self.findings)
        self.markdown = summary_markdown(self)
        return self

    def to_json(self) -> str:
        """JSON with NaN written as null (NaN is not JSON)."""
        data = asdict(self)
        data["findings"] = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in f.items()}
                            for f in data["findings"]]
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write verdict.json and verdict.md atomically; returns their paths."""
        out = Path(out_dir)
        return write_atomic(out / "verdict.json", self.to_json()), write_atomic(out / "verdict.md", self.markdown)


def parse_thresholds(items: list[str] | dict[str, float] | None = None) -> dict[str, float]:
    """Defaults updated by 'metric=value' strings or a dict; unknown metrics and bad values are C123Errors."""
    pairs = list(items.items()) if isinstance(items, dict) else [item.partition("=")[::2] for item in items or []]
    # a deployment saved before a column was renamed still names it the old way
    pairs = [(metrics.RENAMED_COLUMNS.get(str(name).strip(), name), value) for name, value in pairs]
    given = {}
    for name, value in pairs:
        try:
            given[str(name).strip()] = float(value)
        except (TypeError, ValueError):
            raise C123Error(f"bad threshold '{name}={value}': write metric=number, e.g. psnr=0.5") from None
        if not math.isfinite(given[str(name).strip()]) or given[str(name).strip()] < 0:
            raise C123Error(f"threshold '{name}={value}' must be a finite number >= 0 (the allowed worsening): "
                            "e.g. psnr=0.5")
    unknown = set(given) - set(HIGHER_IS_BETTER) - {"new_failures"}
    if unknown:
        raise C123Error(f"unknown threshold metric {', '.join(sorted(unknown))}: use one of "
                        f"{', '.join([*HIGHER_IS_BETTER, 'new_failures'])}")
    return {**DEFAULT_THRESHOLDS, **given}


def compare(current: pd.DataFrame, baseline: pd.DataFrame,
            thresholds: list[str] | dict[str, float] | None = None) -> Verdict:
    """Judge `current` per_case rows against `baseline` per_case rows."""
    thresholds = parse_thresholds(thresholds)
    cur, base = (df.assign(dataset=df["dataset"].astype(str).str.lower(), seed=df["seed"].astype("int64"))
                 for df in (current, baseline))
    pairs = base.merge(cur, on=KEY, how="outer", suffixes=("_base", "_cur"), indicator=True)
    findings: list[Finding] = []
    missing = pairs[pairs["_merge"] == "left_only"]
    for row in missing.itertuples():
        findings.append(Finding("missing", row.dataset, row.variant, row.weight_shape, "", False, case=row.case,
                                seed=int(row.seed), detail="in the baseline, not in this run"))
    both = pairs[pairs["_merge"] == "both"]
    newly_failed = both[(both["status_base"] == "ok") & (both["status_cur"] != "ok")]
    over = len(newly_failed) > thresholds["new_failures"]
    for row in newly_failed.itertuples():
        findings.append(Finding("new_failure", row.dataset, row.variant, row.weight_shape, "status", over,
                                case=row.case, seed=int(row.seed), detail=str(row.error_cur)))
    ok = both[(both["status_base"] == "ok") & (both["status_cur"] == "ok")]
    metrics = [m for m in HIGHER_IS_BETTER if m in thresholds and f"{m}_base" in ok and f"{m}_cur" in ok]
    for metric in metrics:
        b, c = ok[f"{metric}_base"].astype("float64"), ok[f"{metric}_cur"].astype("float64")
        for row in ok[b.notna() & c.isna()].itertuples():
            findings.append(Finding("metric_lost", row.dataset, row.variant, row.weight_shape, metric, True,
                                    case=row.case, seed=int(row.seed),
                                    detail=str(getattr(row, "metric_status_cur", ""))))
        valid = ok[b.notna() & c.notna()]
        for key, group in valid.groupby(GROUP, sort=True):
            mb, mc = group[f"{metric}_base"].astype("float64").mean(), group[f"{metric}_cur"].astype("float64").mean()
            worse = (mb - mc) if HIGHER_IS_BETTER[metric] else (mc - mb)
            allowed = max(thresholds[metric], seed_tolerance(base[_same(base, key)], metric))
            # The tolerance keeps a change of exactly the threshold (0.5 dB in float arithmetic) from flagging.
            regressed = bool(worse > allowed + 1e-9)
            findings.append(Finding("metric", *key, metric, regressed, baseline=float(mb),
                                    current=float(mc), delta=float(mc - mb), threshold=thresholds[metric],
                                    n_pairs=len(group)))
    run_id = str(cur["run_id"].iloc[0]) if len(cur) else ""
    base_id = str(base["run_id"].iloc[0]) if len(base) else ""
    verdict = Verdict(run_id, base_id, any(f.regressed for f in findings), thresholds, findings)
    verdict.markdown = summary_markdown(verdict)
    return verdict


def seed_tolerance(per_seed: pd.DataFrame, metric: str) -> float:
    """The seed-to-seed spread of a metric in the per-seed rows of one method (baseline run): the mean over cases
    with two or more succeeded seeds of the standard deviation across those seeds; 0 when no case has two seeds.
    `compare` flags a change only beyond max(threshold, this): less than a reseed moves a case is noise."""
    if metric not in per_seed:
        return 0.0
    ok = per_seed[per_seed["status"] == "ok"]
    by_case = ok.groupby("case")[metric].agg(lambda s: s.astype("float64").dropna().std(ddof=1)
                                             if s.notna().sum() >= 2 else float("nan")).dropna()
    return float(by_case.mean()) if len(by_case) else 0.0


def _same(df: pd.DataFrame, key: tuple) -> pd.Series:
    """Rows of `df` in the GROUP `key`."""
    mask = pd.Series(True, index=df.index)
    for col, value in zip(GROUP, key):
        mask &= df[col] == value
    return mask


def summary_markdown(verdict: Verdict) -> str:
    """A headline, then the metric comparisons, then per-case findings."""
    head = "REGRESSED" if verdict.regressed else "OK: no regression"
    against = [f"baseline `{verdict.baseline_run_id}`"] if verdict.baseline_run_id else []
    against += [f"the {verdict.reference}"] if verdict.reference else []
    lines = [f"## Regression verdict: {head}", "",
             f"Run `{verdict.run_id}` against {' and '.join(against) or 'nothing'}. Thresholds: "
             + ", ".join(f"{k} {v:g}" for k, v in verdict.thresholds.items()) + ".", ""]
    metric_rows = [f for f in verdict.findings if f.kind == "metric"]
    drift_rows = [f for f in verdict.findings if f.kind == "drift"]
    if metric_rows:
        lines += ["| dataset | variant | shape | metric | baseline | current | delta | threshold | pairs | verdict |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {f.dataset} | {f.variant} | {f.weight_shape} | {f.metric} | {f.baseline:.4f} | "
                  f"{f.current:.4f} | {f.delta:+.4f} | {f.threshold:g} | {f.n_pairs} | "
                  f"{'**regressed**' if f.regressed else 'ok'} |" for f in metric_rows]
        lines.append("")
    if drift_rows:
        lines += [f"Drift against the {verdict.reference}:", "",
                  "| dataset | variant | shape | metric | reference | current | delta | threshold | pairs | decline began "
                  "| verdict |", "|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
        lines += [f"| {f.dataset} | {f.variant} | {f.weight_shape} | {f.metric} | {f.baseline:.4f} | {f.current:.4f} | "
                  f"{f.delta:+.4f} | {f.threshold:g} | {f.n_pairs} | {f.since or '–'} | "
                  f"{'**drifted**' if f.regressed else 'ok'} |" for f in drift_rows]
        lines.append("")
    text = {"new_failure": "newly failed", "metric_lost": "metric newly unavailable", "missing": "missing"}
    for f in verdict.findings:
        if f.kind in text:
            what = f"{f.metric} " if f.kind == "metric_lost" else ""
            flag = " **(regression)**" if f.regressed else ""
            lines.append(f"- {text[f.kind]}: {what}{f.dataset}/{f.case} seed {f.seed} "
                         f"({f.variant}, {f.weight_shape}){flag}" + (f": {f.detail}" if f.detail else ""))
    return "\n".join(lines).rstrip() + "\n"
