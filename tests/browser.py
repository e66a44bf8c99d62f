"""Headless Chromium through Playwright, on Debian's /usr/bin/chromium (no browser download): open a page, wait
for its media, probe the DOM, collect console errors and failed loads, save a full-page screenshot."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

import pytest

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or importlib.util.find_spec("playwright") is None,
    reason=f"needs {CHROMIUM} (apt-get install -y chromium) and the playwright package (pip install -e '.[test]')")

# Evaluated in the page once it has loaded: what the assertions need, as one JSON-able object.
PROBE = """() => {
  const imgs = [...document.images];
  const videos = [...document.querySelectorAll('video')];
  const viewers = [...document.querySelectorAll('model-viewer')];
  return {
    title: document.title,
    text: document.body.innerText,
    tables: document.querySelectorAll('table').length,
    captions: [...document.querySelectorAll('table caption')].map(c => c.textContent),
    bold: document.querySelectorAll('td strong').length,
    bold_texts: [...document.querySelectorAll('td strong')].map(b => b.closest('tr').cells[0].textContent),
    videos: videos.length,
    video_sources: videos.map(v => (v.querySelector('source') || v).getAttribute('src')),
    videos_playable: videos.filter(v => v.readyState >= 1).length,
    videos_shown: videos.filter(v => v.readyState >= 1 || v.dataset.fellBack === '1').length,
    images: imgs.length,
    broken_images: imgs.filter(i => i.complete && i.naturalWidth === 0).map(i => i.getAttribute('src')),
    pending_images: imgs.filter(i => !i.complete).length,
    external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
      .filter(u => /^(https?:)?\\/\\//.test(u)),
    viewers: viewers.length,
    prior_views: [...document.querySelectorAll('.prior-views img')]
      .map(i => ({src: i.getAttribute('src'), alt: i.alt, width: i.naturalWidth})),
    height: document.documentElement.scrollHeight,
  };
}"""

SETTLED = """() => {
  const videos = [...document.querySelectorAll('video')];
  return videos.every(v => v.readyState >= 1 || v.dataset.fellBack === '1')
    && [...document.images].every(i => i.complete);
}"""
"""Videos have their metadata (or fell back to their gif) and every image finished loading."""


@contextlib.contextmanager
def chromium_page(width: int = 1400) -> Iterator[tuple[object, list[str]]]:
    """A fresh page in headless Chromium and the list its console errors, uncaught exceptions and failed
    loads are appended to."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type in ("error", "assert") else None)
            page.on("pageerror", lambda e: errors.append(f"exception: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"log: {r.failure} {r.url}"))
            page.on("response", lambda r: errors.append(f"http: {r.status} {r.url}") if r.status >= 400 else None)
            yield page, errors
        finally:
            browser.close()


def _url(target) -> str:
    text = str(target)
    return text if text.startswith(("http://", "https://", "file://")) else Path(target).resolve().as_uri()


def settle(page, timeout_ms: int = 10_000) -> None:
    """Wait until the videos and images have loaded (or until the timeout: the probe then tells what did not)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(SETTLED, timeout=timeout_ms)
    except PlaywrightTimeout:
        pass
    page.wait_for_timeout(300)  # late console errors


def load_page(html_path, screenshot_path, width: int = 1400) -> tuple[dict, list[str]]:
    """Open the page (a file or a URL), let media settle, probe the DOM, save a full-page screenshot."""
    with chromium_page(width) as (page, errors):
        page.goto(_url(html_path), wait_until="load")
        settle(page)
        dom = page.evaluate(PROBE)
        _screenshot(page, screenshot_path)
        return dom, list(errors)


def _screenshot(page, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


def assert_report_renders(html_path, screenshot_path) -> dict:
    """The report page loads from disk without console errors, shows its tables and videos; returns the probe."""
    html_path = Path(html_path)
    dom, errors = load_page(html_path, screenshot_path)
    assert not errors, f"console errors on {html_path}: {errors}"
    assert dom["tables"] >= 1 and any(c.startswith("Table 1") for c in dom["captions"]), dom["captions"]
    assert dom["bold"] >= 1, "no best value is bold"
    assert dom["videos"] >= 1, "no <video> element"
    assert all((html_path.parent / unquote(s)).is_file() for s in dom["video_sources"]), dom["video_sources"]
    assert dom["videos_shown"] == dom["videos"], "a video neither loaded nor fell back to its gif"
    assert not dom["broken_images"], f"images that did not load: {dom['broken_images']}"
    assert not dom["external"], f"external resources: {dom['external']}"
    _assert_png(screenshot_path)
    return dom


MODEL_STATE = """mv => ({loaded: mv.dataset.loaded === '1', visible: mv.modelIsVisible,
  size: mv.loaded ? (d => [d.x, d.y, d.z])(mv.getDimensions()) : null})"""


def assert_viewer_renders(page_url, screenshot_path, timeout_ms: int = 120_000) -> dict:
    """The `c123 view` page (a file or a served URL) loads without console errors or external resources, its
    videos and images load, and every <model-viewer> loads its GLB (the `load` event) and shows it; returns
    the probe with `models`: [{loaded, visible, size: the model's bounding-box size x, y, z}] per viewer."""
    with chromium_page() as (page, errors):
        page.goto(_url(page_url), wait_until="load")
        settle(page)
        models = []
        for viewer in page.query_selector_all("model-viewer"):
            viewer.scroll_into_view_if_needed()  # GLBs load when their viewer comes near the screen
            page.wait_for_function("mv => mv.dataset.loaded === '1'", arg=viewer, timeout=timeout_ms)
            models.append(viewer.evaluate(MODEL_STATE))
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(500)  # a rendered frame after the last load, and late console errors
        dom = page.evaluate(PROBE)
        _screenshot(page, screenshot_path)
        dom["models"] = models
        dom["errors"] = list(errors)
    assert not dom["errors"], f"console errors on {page_url}: {dom['errors']}"
    assert dom["viewers"] >= 1 and len(models) == dom["viewers"], dom
    assert all(m["loaded"] and m["visible"] for m in models), models
    assert dom["videos_shown"] == dom["videos"], "a video neither loaded nor fell back to its gif"
    assert not dom["broken_images"], f"images that did not load: {dom['broken_images']}"
    assert not dom["external"], f"external resources: {dom['external']}"
    _assert_png(screenshot_path)
    return dom


def _assert_png(path) -> None:
    png = Path(path).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, "screenshot missing or blank"
