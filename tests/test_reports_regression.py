"""The regression verdict flags a worse run and a newly failed case, and passes an equal run."""

import json

import pandas as pd
import pytest

from c123.errors import C123Error
from fixtures_runs import case_row, make_run
from c123_pipeline.reports.build import main
from c123_pipeline.reports.regression import compare, parse_thresholds
from c123_pipeline.reports.runs import load_run


def _verdict(tmp_path, **current):
    base = load_run(make_run(tmp_path, "base", media=False))
    run = load_run(make_run(tmp_path, "cur", created_at="2026-11-21T02:00:00Z", media=False, **current))
    return compare(run.per_case, base.per_case)


def test_equal_run_is_not_flagged(tmp_path):
    verdict = _verdict(tmp_path)
    assert not verdict.regressed
    assert {f.metric for f in verdict.findings} == {"clip_similarity", "psnr", "lpips"}
    assert all(f.delta == pytest.approx(0) and f.n_pairs == 4 for f in verdict.findings)
    assert "OK: no regression" in verdict.markdown


def test_worse_run_is_flagged_per_metric(tmp_path):
    verdict = _verdict(tmp_path, shift=1.0)  # psnr -1 dB, lpips +0.02, clip -0.02
    assert verdict.regressed
    flagged = {f.metric: f for f in verdict.findings if f.regressed}
    assert set(flagged) == {"clip_similarity", "psnr", "lpips"}
    assert flagged["psnr"].delta == pytest.approx(-1.0) and flagged["lpips"].delta == pytest.approx(0.02)
    assert "REGRESSED" in verdict.markdown and "**regressed**" in verdict.markdown


def test_slightly_worse_within_thresholds_is_not_flagged(tmp_path):
    assert not _verdict(tmp_path, shift=0.2).regressed  # psnr -0.2 dB, lpips +0.004, clip -0.004


def test_newly_failed_case_is_flagged(tmp_path):
    verdict = _verdict(tmp_path, failed={"43"})
    assert verdict.regressed
    (finding,) = [f for f in verdict.findings if f.regressed]
    assert (finding.kind, finding.case, finding.seed) == ("new_failure", "43", 0)
    assert "newly failed: c10/43 seed 0" in verdict.markdown
    # The failed case leaves the metric means; the others are unchanged, so no metric regresses.
    assert all(not f.regressed and f.n_pairs == 3 for f in verdict.findings if f.kind == "metric")


def test_thresholds_parse_and_reject_unknown_metrics():
    assert parse_thresholds(["psnr=2", "new_failures=1"]) == {"psnr": 2.0, "lpips": 0.01, "clip_similarity": 0.01,
                                                              "new_failures": 1.0}
    with pytest.raises(C123Error, match="unknown threshold metric fid"):
        parse_thresholds(["fid=1"])
    with pytest.raises(C123Error, match="bad threshold"):
        parse_thresholds(["psnr"])


def test_cli_exit_codes_and_verdict_files(tmp_path, capsys):
    base = make_run(tmp_path, "base", media=False)
    worse = make_run(tmp_path, "worse", shift=1.0, media=False)
    out = tmp_path / "report"
    assert main([str(worse), "--baseline", str(base), "--out", str(out)]) == 1
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["regressed"] is True and verdict["baseline_run_id"] == "base"
    assert (out / "verdict.md").read_text().startswith("## Regression verdict: REGRESSED")
    assert {p.name for p in out.iterdir()} >= {"index.html", "tables.md", "tables.tex", "plots"}
    # Loosened thresholds: the same run passes.
    loose = ["--threshold", "psnr=2", "lpips=0.05", "--threshold", "clip_similarity=0.05"]
    assert main([str(worse), "--baseline", str(base), "--out", str(out), *loose]) == 0
    assert main([str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no per_case.parquet" in capsys.readouterr().err
    assert not list(out.glob(".*"))  # atomic writes leave no temp files behind


def test_metric_that_newly_failed_is_flagged():
    base = pd.DataFrame([case_row("b", "07", "fruit"), case_row("b", "12", "ball")])
    cur = pd.DataFrame([case_row("c", "07", "fruit"), case_row("c", "12", "ball", lpips=float("nan"))
                        | {"metric_status": "lpips: weights missing"}])
    verdict = compare(cur, base)
    (lost,) = [f for f in verdict.findings if f.regressed]
    assert (lost.kind, lost.metric, lost.case, lost.detail) == ("metric_lost", "lpips", "12", "lpips: weights missing")


@pytest.mark.parametrize("name,damage", [("per_case.parquet", b"PAR1 not a parquet file"),
                                         ("per_case.parquet", b""),
                                         ("per_view.parquet", b"\x00" * 64),
                                         ("run.json", b'{"run_id": "x", "created'),
                                         ("run.json", b'["a list"]')])
def test_a_damaged_run_file_is_one_line_naming_it_and_how_to_rebuild_it(tmp_path, capsys, name, damage):
    run = make_run(tmp_path, "nightly-1", media=False)
    (run / name).write_bytes(damage)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main([str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {run / name} cannot be read ("), err
    assert err.endswith(f"rebuild it by rerunning `c123 evaluate` with --out {run} (finished cases are reused, "
                        "not recomputed)")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before and not (run / "report").exists()


def test_a_per_case_table_without_its_key_columns_is_named(tmp_path, capsys):
    run = make_run(tmp_path, "nightly-1", media=False)
    pd.read_parquet(run / "per_case.parquet").drop(columns=["status"]).to_parquet(run / "per_case.parquet")
    assert main([str(run)]) == 2
    assert "(ValueError: columns status missing)" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["psnr=nan", "psnr=inf", "lpips=-0.1"])
def test_thresholds_must_be_finite_and_not_negative(bad):
    with pytest.raises(C123Error, match=r"must be a finite number >= 0"):
        parse_thresholds([bad])
