"""`c123 view` without a browser: what the page links, a damaged case among good ones, bad folders as one line,
and the vendored model-viewer being exactly the file its licence notes name."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote

from c123.cli import main
from c123.viewer import STATIC, build_view
from fixtures_runs import write_case


def test_a_run_folder_gets_one_entry_per_case_and_a_damaged_one_says_why(tmp_path):
    run = tmp_path / "run"
    write_case(run / "cases" / "consistent123" / "07" / "seed0", case="07", seed=0, switch=35)
    write_case(run / "cases" / "consistent123" / "12" / "seed0", case="12", seed=0, switch=38)
    broken = run / "cases" / "consistent123" / "43" / "seed0"
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{not json")
    page = build_view(run)
    html = page.read_text()
    assert page == run / "view" / "index.html"
    titles = re.findall(r'<section class="case" id="case-\d+"><h2>([^<]+)</h2>', html)
    assert titles == ["cases/consistent123/07/seed0", "cases/consistent123/12/seed0", "cases/consistent123/43/seed0"]
    assert "result.json cannot be read (JSONDecodeError" in html
    # data:, is the page's no-favicon icon and #case-N its table of contents
    links = [u for u in re.findall(r'(?:src|href)="([^"]+)"', html) if u != "data:," and not u.startswith("#")]
    assert not [u for u in links if "://" in u or u.startswith("/")]
    for link in links:
        target = page.parent / unquote(link)
        assert target.is_dir() if link.endswith("/") else target.is_file(), link
    assert html.count("<video") == 2 and "step 35" in html and "step 38" in html
    assert (run / "view" / "static" / "model-viewer-umd.min.js").stat().st_size == (
        STATIC / "model-viewer-umd.min.js").stat().st_size


def test_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no result.json" in err
    assert main(["view", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_the_vendored_model_viewer_is_the_file_its_notes_name():
    notes = (STATIC / "LICENSES.txt").read_text()
    stated = re.search(r"file sha256\s+([0-9a-f]{64})", notes).group(1)
    assert hashlib.sha256((STATIC / "model-viewer-umd.min.js").read_bytes()).hexdigest() == stated
    for licence in ("Apache License", "The MIT License", "BSD 3-Clause License", "MONOGRID"):
        assert licence in notes, licence
