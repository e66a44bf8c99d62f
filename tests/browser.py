"""Headless Chromium over the DevTools protocol on a pipe (stdlib only): load a report page, check it, screenshot it."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"{CHROMIUM} is absent (apt-get install -y chromium; CI installs it)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--remote-debugging-pipe"]

# Evaluated in the page once it has loaded: what the assertions need, as one JSON-able object.
PROBE = """(() => {
  const imgs = [...document.images];
  const videos = [...document.querySelectorAll('video')];
  return {
    title: document.title,
    tables: document.querySelectorAll('table').length,
    captions: [...document.querySelectorAll('table caption')].map(c => c.textContent),
    bold: document.querySelectorAll('td strong').length,
    videos: videos.length,
    video_sources: videos.map(v => (v.querySelector('source') || v).getAttribute('src')),
    videos_playable: videos.filter(v => v.readyState >= 1).length,
    videos_shown: videos.filter(v => v.readyState >= 1 || v.dataset.fellBack === '1').length,
    images: imgs.length,
    broken_images: imgs.filter(i => i.complete && i.naturalWidth === 0).map(i => i.getAttribute('src')),
    pending_images: imgs.filter(i => !i.complete).length,
    external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
      .filter(u => /^(https?:)?\\/\\//.test(u)),
    height: document.documentElement.scrollHeight,
  };
})()"""


def _pipe_fds(read_end: int, write_end: int) -> None:
    """In the child: our pipe ends become fds 3 (commands) and 4 (replies), as --remote-debugging-pipe expects."""
    # Copies above 10 first (close-on-exec), so dup2 onto 3/4 cannot clobber an end that already sits there.
    a, b = fcntl.fcntl(read_end, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, 10)
    os.dup2(a, 3)
    os.dup2(b, 4)


class Browser:
    """One headless Chromium, driven through --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, timeout: float = 30.0):
        self.timeout, self.events, self._id, self._buf = timeout, [], 0, b""
        self._profile = tempfile.TemporaryDirectory(prefix="c123-chromium-")
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            close_fds=False, preexec_fn=lambda: _pipe_fds(to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)

    def _read(self, deadline: float) -> dict | None:
        """The next message, or None at the deadline."""
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                return None
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its answer; events seen meanwhile are kept in self.events."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while (reply := self._read(deadline)) is not None:
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"no answer to {method} within {self.timeout} s")

    def wait_event(self, method: str, timeout: float) -> bool:
        """Wait until an event named `method` has arrived (or was already seen)."""
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            event = self._read(deadline)
            if event is None:
                return False
            self.events.append(event)
        return True

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console errors, media loads)."""
        deadline = time.monotonic() + seconds
        while (event := self._read(deadline)) is not None:
            self.events.append(event)

    def close(self) -> None:
        """Close the browser, then its profile folder."""
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        self.proc.stderr.close()
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors (failed resource loads) among the events."""
    errors = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(f"exception: {d.get('exception', {}).get('description', d.get('text'))}")
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
    return errors


def load_page(html_path: Path, screenshot_path: Path, width: int = 1400) -> tuple[dict, list[str]]:
    """Open the page from disk, let media settle, probe the DOM, save a full-page screenshot."""
    with Browser() as b:
        target = next(t for t in b.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = b.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            b.send(f"{domain}.enable", session=session)
        b.send("Emulation.setDeviceMetricsOverride",
               {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        b.send("Page.navigate", {"url": Path(html_path).resolve().as_uri()}, session=session)
        assert b.wait_event("Page.loadEventFired", 20), "the page never fired load"
        expr = {"expression": PROBE, "returnByValue": True}
        deadline = time.monotonic() + 10
        while True:  # videos need a moment for metadata (or their gif fallback)
            dom = b.send("Runtime.evaluate", expr, session=session)["result"]["value"]
            if (dom["videos_shown"] == dom["videos"] and not dom["pending_images"]) or time.monotonic() > deadline:
                break
            b.drain(0.2)
        b.drain(0.5)
        shot = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        screenshot_path = Path(screenshot_path)
        screenshot_path.parent.mkdir(parents=True, exist_ok=True)
        screenshot_path.write_bytes(base64.b64decode(shot["data"]))
        return dom, console_errors(b.events)


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
    png = Path(screenshot_path).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, "screenshot missing or blank"
    return dom

