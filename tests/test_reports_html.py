"""The HTML report opens from disk in headless Chromium: no console errors, tables, videos, a screenshot."""

import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

from browser import assert_report_renders, needs_chromium
from fixtures_runs import make_run
from c123_pipeline.reports.build import build_report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    base = make_run(root, "nightly-1", created_at="2026-11-19T02:00:00Z")
    run = make_run(root, "nightly-2", created_at="2026-11-20T02:00:00Z", failed={"43"}, seeds=(0, 1))
    return build_report([base, run], run / "report", baseline=base).index_html


def test_links_are_relative_and_resolve(report):
    page = report.read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links and not [u for u in links if "://" in u or u.startswith("/")]
    files, folders = [u for u in links if not u.endswith("/")], [u for u in links if u.endswith("/")]
    assert all((report.parent / unquote(u)).is_file() for u in files)
    assert page.count("<video") >= 3 and 'type="video/mp4"' in page and "rgb.gif" in page
    # every case shown links its TensorBoard events, a folder holding an events file
    assert len(folders) == page.count("<video") and all(u.endswith("/tb/") for u in folders)
    assert all(any((report.parent / unquote(u)).glob("events.out.tfevents.*")) for u in folders)
    assert "tensorboard --logdir" in page


def test_report_moves_with_its_runs(report, tmp_path):
    """Relative links: copying the runs folder elsewhere keeps the page whole."""
    moved = tmp_path / "copy"
    shutil.copytree(report.parents[2], moved)
    page = moved / report.relative_to(report.parents[2])
    assert all((page.parent / unquote(u)).is_file() for u in re.findall(r'src="([^"]+)"', page.read_text()))


@pytest.mark.browser
@needs_chromium
def test_report_renders_in_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    dom = assert_report_renders(report, shot)
    assert dom["videos"] == 7  # 4 cases in nightly-1 + the 3 ok cases (lowest seed) of nightly-2
    # each case shown with the 3D prior's views below its orbit views, labelled, every image loaded
    assert len(dom["prior_views"]) == 7 * 8 and all(p["width"] == 32 for p in dom["prior_views"]), dom["prior_views"]
    assert dom["text"].count("3D prior, before training") == 7 and dom["text"].count("orbit views (views/)") == 7
    # the runs are tiny-preset runs: only the paper's published rows can be bold
    assert set(dom["bold_texts"]) <= {"Consistent123", "Magic123", "Zero-1-to-3", "Make-it-3D", "RealFusion"}
    assert shot.stat().st_size > 10_000


@pytest.mark.browser
@needs_chromium
def test_checker_catches_console_errors_and_broken_images(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
                    "<table><caption>Table 1</caption><tr><td><strong>1</strong></td></tr></table>"
                    '<img src="missing.png"><script>console.error("boom")</script></body></html>')
    with pytest.raises(AssertionError, match="console errors") as failure:
        assert_report_renders(page, tmp_path / "bad.png")
    assert "console: boom" in str(failure.value) and "ERR_FILE_NOT_FOUND" in str(failure.value)


def test_trend_plot_needs_two_runs(tmp_path):
    """The nightly trend appears once a run has an earlier point (its baseline), not for a lone run."""
    from c123_pipeline.reports.history import from_runs
    from c123_pipeline.reports.plots import make_plots
    from c123_pipeline.reports.runs import load_run

    first = make_run(tmp_path, "nightly-1", created_at="2026-11-19T02:00:00Z")
    second = make_run(tmp_path, "nightly-2", created_at="2026-11-20T02:00:00Z")
    alone = make_plots([load_run(first)], tmp_path / "alone")
    both = make_plots([load_run(second)], tmp_path / "both", history=from_runs([load_run(first), load_run(second)]))
    assert "trend" not in alone and "per-case metrics" in alone
    assert both["trend"].is_file()


@pytest.mark.browser
@needs_chromium
def test_report_with_a_month_of_nights_shows_the_whole_trend_in_chromium(tmp_path):
    """30 nightly runs beside the judged one (a code version change at night 15, a slow decline from night 22):
    the page shows the trend over all of them, the code change listed, and the drift verdict."""
    from c123_pipeline.reports.drift import Reference

    root = tmp_path / "runs"
    nights = [make_run(root, f"c10-tiny-n{n:02d}", created_at=f"2026-11-{n + 1:02d}T02:00:00Z", media=n == 29,
                       seeds=(0, 1), code_version="0.1.0" if n < 15 else "0.2.0",
                       shift=0.3 * max(0, n - 21) + (0.15 if n % 3 == 0 else 0.0)) for n in range(30)]
    paths = build_report([nights[-1]], tmp_path / "report", baseline=nights[-2], history=root,
                         reference=Reference(window=5))
    assert paths.verdict.regressed and any(f.kind == "drift" and f.regressed for f in paths.verdict.findings)
    shot = tmp_path / "month.png"
    dom = assert_report_renders(paths.index_html, shot)
    assert dom["videos"] == 4
    page = paths.index_html.read_text()
    assert "Nightly trend over 30 runs, 2026-11-01 to 2026-11-30" in page and "code 0.2.0" in page
    assert 'alt="trend"' in page and "(drift)" in page
    print(f"screenshot: {shot}")
