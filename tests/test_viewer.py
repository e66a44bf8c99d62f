"""`c123 view` without a browser: what the page links, a damaged case among good ones, bad folders as one line,
the vendored model-viewer being exactly the file its licence notes name, and what `--serve` answers over HTTP
(the page and the run folder, nothing beside them: no `..`, no symlink out of the run)."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import pytest

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


@contextmanager
def served(*args: str):
    """`c123 view ARGS --serve --port 0` in a subprocess; yields (host, port, page path of the printed URL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "c123.cli", "view", *args, "--serve", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = [server.stdout.readline()]
        while lines[-1] and not lines[-1].startswith("serving "):  # past e.g. matplotlib's font-cache notice
            lines.append(server.stdout.readline())
        assert lines[-1].startswith("serving http://127.0.0.1:"), lines
        url = urlsplit(lines[-1].split()[1])
        yield url.hostname, url.port, url.path
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=30)
    assert server.returncode == 0 and "stopped serving" in rest, rest


def get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """GET `path` sent as written (http.client does not normalise `..` or `%2e%2e` the way urllib might)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def run_and_secrets(tmp_path):
    """A run folder under tmp_path with symlinks out of it, and secrets beside it (where `--out` elsewhere
    makes the served URLs start: the common parent of the page and the run, `/` in the reported case)."""
    run = tmp_path / "run"
    write_case(run / "cases" / "consistent123" / "07" / "seed0", case="07", seed=0, switch=35)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0 SECRET")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "key.txt").write_text("SECRET key")
    (run / "leak.txt").symlink_to(tmp_path / "etc" / "passwd")
    (run / "leakdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (run / "leak_abs.txt").symlink_to("/etc/hostname")
    page_dir = tmp_path / "pages" / "view"
    page_dir.mkdir(parents=True)
    (page_dir / "notes.txt").write_text("SECRET notes the user keeps beside the page")
    return run, page_dir


def test_serve_answers_the_page_and_the_run_folder(run_and_secrets):
    run, page_dir = run_and_secrets
    with served(str(run), "--out", str(page_dir)) as (host, port, page):
        assert page == "/pages/view/index.html"  # URLs start at the common parent of page and run
        status, html = get(host, port, page)
        assert status == 200 and b"c123 view: run" in html
        status, script = get(host, port, "/pages/view/static/model-viewer-umd.min.js")
        assert status == 200 and len(script) == (STATIC / "model-viewer-umd.min.js").stat().st_size
        links = [unquote(u) for u in re.findall(r'(?:src|href|data-glb)="([^"]+)"', html.decode())
                 if u != "data:," and not u.startswith("#")]
        assert any(u.endswith("result.json") for u in links) and any(u.endswith("rgb.mp4") for u in links)
        for link in links:  # every link of the page is served (resolved against the page's URL)
            path = os.path.normpath(os.path.join(os.path.dirname(page), link))
            assert get(host, port, path)[0] in (200, 301), link


ESCAPES = [
    "/etc/passwd", "/", "/outside/key.txt", "/pages/view/notes.txt", "/pages/", "/run/leak.txt",
    "/run/leakdir/key.txt", "/run/leakdir/", "/run/leak_abs.txt", "/run/../etc/passwd",
    "/pages/view/../../etc/passwd", "/run/%2e%2e/etc/passwd", "/pages/view/%2E%2E/%2e%2e/etc/passwd",
    "/run/..%2fetc/passwd", "//etc/passwd", "/run/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fhostname",
]
"""Requests out of the page and the run folder: files beside them, `..` spelt in several ways, symlinks."""


def test_serve_answers_404_outside_the_page_and_the_run_folder(run_and_secrets):
    run, page_dir = run_and_secrets
    with served(str(run), "--out", str(page_dir)) as (host, port, _):
        answers = {path: get(host, port, path) for path in ESCAPES}
    for path, (status, body) in answers.items():
        assert status == 404 and b"SECRET" not in body and b"root:" not in body, (path, status, body[:200])


def test_serve_with_the_page_inside_the_run_answers_the_run_but_not_its_symlinks_out(run_and_secrets):
    run, _ = run_and_secrets
    with served(str(run)) as (host, port, page):
        assert page == "/view/index.html"
        assert get(host, port, page)[0] == 200
        assert get(host, port, "/cases/consistent123/07/seed0/result.json")[0] == 200
        for path in ("/leak.txt", "/leakdir/key.txt", "/leak_abs.txt", "/../etc/passwd", "/%2e%2e/etc/passwd"):
            status, body = get(host, port, path)
            assert status == 404 and b"SECRET" not in body, path
