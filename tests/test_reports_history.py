"""The history of a runs folder (reports/history.py) and the drift verdict (reports/drift.py): runs of older
schema versions read as one table, `c123 history` prints it and writes one Parquet dataset, and a slow decline
that the night-to-night verdict passes every night is flagged once its total passes the threshold, on a local
runs folder and on S3."""

import json
import math

import pandas as pd
import pytest

from c123.errors import C123Error
from fixtures_runs import make_run
from c123_pipeline.reports.drift import Reference, drift, judge
from c123_pipeline.reports.history import load_history, main
from c123_pipeline.reports.regression import compare
from c123_pipeline.reports.runs import load_run

DECLINE = 0.3
"""dB lost per night from night FIRST_BAD on (PSNR; make_run moves LPIPS and CLIP by 0.02 per dB with it)."""
FIRST_BAD = 3
NIGHTS = 9


def _nights(root, nights: int = NIGHTS) -> list:
    """A runs folder of nightly runs: flat, then losing DECLINE dB a night from night FIRST_BAD."""
    return [make_run(root, f"c10-tiny-n{n:02d}", created_at=f"2026-11-{n + 1:02d}T02:00:00Z", media=False,
                     shift=DECLINE * max(0, n - FIRST_BAD + 1)) for n in range(nights)]


def _drift_table(root, runs_root=None) -> pd.DataFrame:
    """Per night: the total decline, the old verdict (against the night before) and the new (plus drift)."""
    folders = _nights(root)
    history = load_history(runs_root or root, "c10", "tiny")
    rows = []
    for n in range(1, len(folders)):
        run, before = load_run(folders[n]), load_run(folders[n - 1])
        old = compare(run.per_case, before.per_case)
        new = judge(run.per_case, before.per_case, history, reference=Reference(window=5))
        psnr = next(f for f in new.findings if f.kind == "drift" and f.metric == "psnr")
        rows.append({"night": n, "run": run.run_id, "total_decline_db": round(DECLINE * max(0, n - FIRST_BAD + 1), 2),
                     "old_verdict": "REGRESSED" if old.regressed else "ok",
                     "new_verdict": "REGRESSED" if new.regressed else "ok",
                     "psnr_vs_window": round(psnr.delta, 2), "decline_began": psnr.since or "–"})
    return pd.DataFrame(rows)


def _assert_drift_caught(table: pd.DataFrame) -> None:
    print("\n" + table.to_string(index=False))
    assert (table["old_verdict"] == "ok").all()  # 0.3 dB a night never passes 0.5 dB night to night
    past = table[table["total_decline_db"] > 0.5]
    first_past = int(past["night"].iloc[0])
    flagged = table[table["new_verdict"] == "REGRESSED"]
    assert not flagged.empty and int(flagged["night"].iloc[0]) <= first_past + 1
    assert (table.loc[table["night"] >= first_past + 1, "new_verdict"] == "REGRESSED").all()
    assert (table.loc[table["total_decline_db"] <= 0.5, "new_verdict"] == "ok").all()
    assert set(flagged["decline_began"]) == {f"c10-tiny-n{FIRST_BAD:02d}"}


def test_slow_decline_passes_the_night_to_night_verdict_and_is_flagged_against_the_window(tmp_path):
    _assert_drift_caught(_drift_table(tmp_path))


def test_a_pinned_golden_run_is_the_reference(tmp_path):
    folders = _nights(tmp_path, nights=6)
    history = load_history(tmp_path, "c10")
    last = load_run(folders[-1]).per_case
    (psnr,) = [f for f in drift(last, history, reference=Reference(golden="c10-tiny-n00")) if f.metric == "psnr"]
    assert psnr.regressed and psnr.delta == pytest.approx(-DECLINE * 3) and "golden run c10-tiny-n00" in psnr.detail
    with pytest.raises(C123Error, match="golden run nope is not an earlier run"):
        drift(last, history, reference=Reference(golden="nope"))
    with pytest.raises(C123Error, match="drift window 0 must be an integer >= 1"):
        Reference(window=0)


def test_an_equal_history_is_not_flagged_and_a_first_run_has_no_drift(tmp_path):
    folders = [make_run(tmp_path, f"n{n}", created_at=f"2026-11-0{n + 1}T02:00:00Z", media=False) for n in range(4)]
    history = load_history(tmp_path, "c10")
    findings = drift(load_run(folders[-1]).per_case, history)
    assert findings and not any(f.regressed for f in findings) and all(f.delta == pytest.approx(0) for f in findings)
    assert drift(load_run(folders[0]).per_case, history) == []  # nothing earlier to judge against


def _two_versions(root):
    """Two runs of an older code version whose per_case lacks clip_similarity, config_hash and code_version
    (run.json has the version and the hash), then two of the current version."""
    old_cols = ("clip_similarity", "config_hash", "code_version", "unseen_psnr")
    for n in range(2):
        run = make_run(root, f"c10-tiny-old{n}", created_at=f"2026-10-0{n + 1}T02:00:00Z", media=False,
                       code_version="0.0.9", drop=old_cols)
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, "config": {"consistent123": {"config_hash": "9a8b7c6d"}}}))
    for n in range(2):
        make_run(root, f"c10-tiny-new{n}", created_at=f"2026-11-0{n + 1}T02:00:00Z", media=False, shift=0.1 * n)
    make_run(root, "other-dataset", media=False).joinpath("run.json").write_text(
        json.dumps({"run_id": "other-dataset", "dataset": "realfusion15", "preset": "tiny"}))


def test_runs_of_an_older_schema_read_as_one_table_with_nulls(tmp_path):
    _two_versions(tmp_path)
    history = load_history(tmp_path, "c10")
    assert list(dict.fromkeys(history["run_id"])) == ["c10-tiny-old0", "c10-tiny-old1", "c10-tiny-new0",
                                                      "c10-tiny-new1"]
    old, new = history[history["run_id"].str.contains("old")], history[history["run_id"].str.contains("new")]
    assert old["clip_similarity"].isna().all() and new["clip_similarity"].notna().all()
    assert set(old["code_version"]) == {"0.0.9"} and set(new["code_version"]) == {"0.1.0"}
    assert set(old["config_hash"]) == {"9a8b7c6d"} and set(new["config_hash"]) == {"0123456789abcdef"}
    assert history["run_time"].dt.tz is not None and history["run_time"].is_monotonic_increasing
    # the drift check over them: CLIP's reference comes from the runs that measured it, PSNR's from all four
    findings = {f.metric: f for f in drift(history[history["run_id"] == "c10-tiny-new1"], history)}
    assert findings["clip_similarity"].detail.endswith("(c10-tiny-new0)")
    assert findings["psnr"].detail.endswith("(c10-tiny-old0 .. c10-tiny-new0)")
    assert findings["psnr"].delta == pytest.approx(-0.1) and not any(f.regressed for f in findings.values())


def test_trend_points_carry_the_spread_and_code_changes_are_found(tmp_path):
    from c123_pipeline.reports.plots import code_changes, trend_points

    _two_versions(tmp_path)
    history = load_history(tmp_path, "c10")
    points = trend_points(history, ["psnr", "clip_similarity"])
    assert list(points["run_id"]) == ["c10-tiny-old0", "c10-tiny-old1", "c10-tiny-new0", "c10-tiny-new1"]
    assert points["psnr_sd"].iloc[0] == pytest.approx(pd.Series([20.0, 21, 22, 23]).std(ddof=0))
    assert points["clip_similarity"].isna().tolist() == [True, True, False, False]
    assert code_changes(history) == [(pd.Timestamp("2026-11-01T02:00:00Z"), "0.1.0")]


def test_history_command_prints_the_runs_and_writes_one_parquet_dataset(tmp_path, capsys):
    _two_versions(tmp_path)
    assert main([str(tmp_path), "--dataset", "c10", "--metric", "psnr", "clip_similarity"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "c10-tiny-old0" in out and "0.0.9" in out and "c10-tiny-new1" in out and "0.1.0" in out
    assert "other-dataset" not in out
    # the one line a user writes: every run, the partition column back, older runs' missing metric as null
    df = pd.read_parquet(tmp_path / "history")
    print(df.groupby(["code_version", "run_id"], observed=True)[["psnr", "clip_similarity"]].mean())
    assert set(df["dataset"]) == {"c10"} and df["run_id"].nunique() == 4 and len(df) == 16
    assert df.loc[df["code_version"] == "0.0.9", "clip_similarity"].isna().all()
    assert (tmp_path / "history" / "dataset=c10" / "history.parquet").is_file()
    assert main([str(tmp_path), "--dataset", "c10", "--preset", "tiny"]) == 0  # a rerun replaces the file,
    assert "c10 · tiny: 4 runs" in capsys.readouterr().out  # never reads it as a run
    assert pd.read_parquet(tmp_path / "history")["run_id"].nunique() == 4


@pytest.mark.parametrize("args, says", [(["--dataset", "c10", "--metric", "fid"], "no column fid in any run"),
                                        (["--dataset", "nope"], "no finished run of dataset nope"),
                                        (["--dataset", "c10", "--preset", "fast"],
                                         "no finished c10 run of preset fast under"),
                                        ([], "the following arguments are required: --dataset")])
def test_history_command_bad_input_is_one_line(tmp_path, capsys, args, says):
    make_run(tmp_path, "n0", media=False)
    assert main([str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err, err
    assert not (tmp_path / "history").exists()


def test_missing_runs_folder_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--dataset", "c10"]) == 2
    assert "runs folder" in capsys.readouterr().err and not (tmp_path / "nope").exists()


def test_report_judges_drift_against_the_runs_folder(tmp_path, capsys):
    """`c123 report RUN --baseline PREV --history RUNS --drift-window 5`: exit 1, verdict.json names the
    night the decline began, the trend covers every night."""
    from c123_pipeline.reports.build import main as report

    folders = _nights(tmp_path / "runs", nights=6)
    out = tmp_path / "report"
    args = [str(folders[-1]), "--baseline", str(folders[-2]), "--out", str(out)]
    assert report(args) == 0  # night to night: fine
    assert report([*args, "--history", str(tmp_path / "runs"), "--drift-window", "5"]) == 1
    verdict = json.loads((out / "verdict.json").read_text())
    drifted = [f for f in verdict["findings"] if f["kind"] == "drift" and f["regressed"]]
    assert {f["metric"] for f in drifted} >= {"psnr"} and {f["since"] for f in drifted} == {"c10-tiny-n03"}
    assert "Drift against the median of the last 5 good runs" in (out / "verdict.md").read_text()
    assert "Nightly trend over 6 runs" in (out / "index.html").read_text()
    assert report([*args, "--drift-window", "5"]) == 2
    assert "pass --history RUNS too" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_history_and_drift_on_an_s3_runs_folder(tmp_path):
    """The same on a runs folder at s3:// (moto on 127.0.0.1): read through tasks/storage.py, history
    Parquet written back to the bucket."""
    import s3fs

    from storage_support import environ, s3, s3_server

    local = tmp_path / "runs"
    with s3_server(tmp_path) as env, environ(env):
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3(env)
        _nights(local)
        _two_versions(tmp_path / "versions")
        fs.put(str(local), "c123-runs/nightly", recursive=True)
        fs.put(str(tmp_path / "versions"), "c123-runs/versions", recursive=True)
        _assert_drift_caught(_drift_table(tmp_path / "again", runs_root="s3://c123-runs/nightly"))
        assert main(["s3://c123-runs/versions", "--dataset", "c10"]) == 0
        fs.invalidate_cache()
        assert fs.isfile("c123-runs/versions/history/dataset=c10/history.parquet")
        df = pd.read_parquet("c123-runs/versions/history", filesystem=fs)
        assert df["run_id"].nunique() == 4 and df.loc[df["code_version"] == "0.0.9", "clip_similarity"].isna().all()
        assert math.isnan(df.loc[df["run_id"] == "c10-tiny-old0", "clip_similarity"].iloc[0])


def test_the_nightly_report_task_judges_drift_and_trends_over_the_runs_folder(tmp_path, monkeypatch):
    """What the nightly deployments run (drift_window=5): the report task flags the drift the baseline alone
    passes, its trend covers every earlier night, and a damaged sibling run only leaves the trend (warned)."""
    from c123_pipeline.tasks.report import check_golden, report_task

    from c123_pipeline.reports import build

    warned = []
    monkeypatch.setattr(build.log, "warning", warned.append)
    folders = _nights(tmp_path, nights=6)
    (make_run(tmp_path, "c10-tiny-broken", media=False) / "per_case.parquet").write_bytes(b"PAR1 damaged")
    plain = report_task.fn(str(folders[-1]), str(folders[-2]), publish_artifact=False)
    assert plain["regressed"] is False and "trend" in plain["plots"]
    assert "Nightly trend over 6 runs" in (folders[-1] / "report" / "index.html").read_text()
    assert len(warned) == 1 and "c10-tiny-broken/per_case.parquet cannot be read" in warned[0]
    judged = report_task.fn(str(folders[-1]), str(folders[-2]), publish_artifact=False, drift_window=5)
    assert judged["regressed"] is True and "decline began" not in judged["verdict_markdown"].split("Drift")[0]
    assert "| c10-tiny-n03 | **drifted** |" in judged["verdict_markdown"]
    check_golden("c10-tiny-n00", folders[-1], "c10", "tiny")
    with pytest.raises(C123Error, match="golden run n99 is not a finished c10 tiny run in"):
        check_golden("n99", folders[-1], "c10", "tiny")
    with pytest.raises(C123Error, match="cannot be read"):  # the history command names it instead
        load_history(tmp_path, "c10")
