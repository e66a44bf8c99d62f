"""`c123 view RUN_OR_CASE_DIR`: one static page to look at reconstructions (opens from disk, no network).

Per reconstruction folder (one holding result.json; a folder of them gives one entry each): the reference,
the turntable (mp4, gif fallback), the orbit views beside the 3D prior's own views at the detector's azimuths
(prior_views/, drawn before training), an interactive 3D view of mesh/mesh.glb (model-viewer,
shipped in c123/viewer/static with its licences), the switch, S^k/R^k and the prior weights, the loss, S^k
and weight curves, and links to result.json, config.yaml, the mesh and the TensorBoard events.

A page opened from disk cannot fetch files, so by default each GLB is also written as a small script that
hands its bytes to the viewer (glb/*.js); a served page (`--serve`, 127.0.0.1 only) fetches the GLB itself.
"""

from __future__ import annotations

import base64
import errno
import functools
import json
import os
import shutil
from dataclasses import dataclass, field
from html import escape
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

from c123.atomic import write_atomic
from c123.errors import C123Error
from c123.prior_views import read_prior_views

STATIC = Path(__file__).parent / "static"
MODEL_VIEWER = "model-viewer-umd.min.js"
"""The vendored model-viewer build (classic script: module scripts are refused on file:// pages)."""
STATIC_FILES = (MODEL_VIEWER, "LICENSES.txt")

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1400px}
section.case{border-top:1px solid #ccc;padding-top:.5rem;margin-top:1.5rem}
.media{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.media figure{margin:0}
.media img.ref,.media video,.media img.gif{width:256px;background:#fff;border:1px solid #ddd;display:block}
model-viewer{width:360px;height:360px;background:#f4f4f4;border:1px solid #ddd}
.views img{width:96px;margin:1px;background:#fff;border:1px solid #eee}
table.orbit th{text-align:left;font-weight:normal;font-size:.85rem;padding-right:.6rem;width:14rem}
table.orbit figure{display:inline-block;margin:0 1px;text-align:center}
table.orbit figcaption{font-size:.75rem;color:#555}
.curves img{max-width:32%;min-width:320px;border:1px solid #ddd;margin:2px}
table.facts td{padding:.1rem .6rem .1rem 0;vertical-align:top;font-size:.9rem}
.warn{color:#a60}
.failed{color:#b00}
code{background:#f4f4f4;padding:0 .2rem}
"""

TURNTABLE_SCRIPT = """
function gifFallback(source){var v=source.parentNode;var img=v.querySelector('img');
if(!img||v.dataset.fellBack){return;}v.dataset.fellBack='1';var gif=img.cloneNode();gif.className='gif';
v.hidden=true;v.insertAdjacentElement('afterend',gif);}
"""
"""If the mp4 cannot be played (codec, missing file), show the gif next to the hidden <video>."""

GLB_SCRIPT = """
window.c123Glb = function (id, b64) {
  var bytes = Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); });
  document.getElementById(id).src = URL.createObjectURL(new Blob([bytes], {type: 'model/gltf-binary'}));
};
(function () {
  var viewers = document.querySelectorAll('model-viewer[data-glb]');
  function request(mv) {
    if (mv.dataset.requested) { return; }
    mv.dataset.requested = '1';
    if (!mv.dataset.glbScript) { mv.src = mv.dataset.glb; return; }
    var script = document.createElement('script');
    script.src = mv.dataset.glbScript;
    script.onerror = function () { console.error('cannot load ' + script.src); };
    document.head.appendChild(script);
  }
  var visible = new IntersectionObserver(function (entries) {
    entries.forEach(function (e) { if (e.isIntersecting) { request(e.target); visible.unobserve(e.target); } });
  }, {rootMargin: '300px'});
  viewers.forEach(function (mv) {
    mv.addEventListener('load', function () { mv.dataset.loaded = '1'; });
    mv.addEventListener('error', function (e) {
      console.error('the 3D view cannot load ' + mv.dataset.glb + ': ' + (e.detail && e.detail.type));
    });
    visible.observe(mv);
  });
})();
"""
"""Load each GLB when its viewer comes near the screen (a run folder can hold many), from its script on disk
or from the server."""


def href(target: Path, page_dir: Path) -> str:
    """A relative, URL-quoted link from the page's folder to `target`."""
    return quote(Path(os.path.relpath(target, page_dir)).as_posix())


def turntable_html(mp4: Path, gif: Path, page_dir: Path, alt: str) -> str:
    """The turntable as a looping <video> with the gif as fallback (or the gif alone); '' when neither exists.
    Pages that use it include TURNTABLE_SCRIPT."""
    if mp4.is_file():
        fallback = f'<img src="{href(gif, page_dir)}" alt="{escape(alt)}">' if gif.is_file() else ""
        return (f'<video controls loop muted autoplay playsinline preload="metadata">'
                f'<source src="{href(mp4, page_dir)}" type="video/mp4" onerror="gifFallback(this)">'
                f"{fallback}</video>")
    if gif.is_file():
        return f'<img class="gif" src="{href(gif, page_dir)}" alt="{escape(alt)}">'
    return ""


# ---- what is in the folder ----------------------------------------------------------------------
@dataclass
class Entry:
    """One reconstruction folder and its result.json (None with `error` when it cannot be read)."""

    folder: Path
    title: str
    result: dict | None = None
    error: str = ""
    plots: dict[str, Path] = field(default_factory=dict)


def find_entries(root: Path) -> list[Entry]:
    """The reconstruction folders at or under `root` (those holding a result.json), in path order."""
    if (root / "result.json").is_file():
        folders = [root]
    else:
        folders = sorted(p.parent for p in root.rglob("result.json"))
    entries = []
    for folder in folders:
        title = folder.name if folder == root else folder.relative_to(root).as_posix()
        try:
            result = json.loads((folder / "result.json").read_text())
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
            if folder == root and result.get("case"):
                title = f"{result['case']} · {folder.name}"
            entries.append(Entry(folder, title, result))
        except (OSError, ValueError) as err:
            entries.append(Entry(folder, title, error=f"result.json cannot be read ({type(err).__name__}: "
                                                       f"{' '.join(str(err).split())[:160]})"))
    return entries


# ---- the page ------------------------------------------------------------------------------------
def build_view(folder: str | Path, out: str | Path | None = None, embed: bool = True) -> Path:
    """Write OUT/index.html (default FOLDER/view) for the reconstructions in `folder`; returns its path.

    embed: also write each GLB as a script (glb/*.js), so that the page works opened from disk."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise C123Error(f"{folder} is not a folder: pass a reconstruction folder (c123 reconstruct --out DIR) "
                        "or a folder holding several")
    entries = find_entries(root)
    if not entries:
        raise C123Error(f"{folder} holds no result.json: pass a finished reconstruction folder or a folder of them")
    page_dir = Path(out).resolve() if out else root / "view"
    for name in STATIC_FILES:
        target = page_dir / "static" / name
        if not target.is_file() or target.stat().st_size != (STATIC / name).stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(STATIC / name, target)
    sections = [_entry_html(i, e, page_dir, embed) for i, e in enumerate(entries)]
    contents = "".join(f'<li><a href="#case-{i}">{escape(e.title)}</a></li>' for i, e in enumerate(entries))
    title = f"c123 view: {root.name}"
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            '<link rel="icon" href="data:,">'  # served pages: no favicon request (and no 404)
            f"<title>{escape(title)}</title><style>{STYLE}</style><script>{TURNTABLE_SCRIPT}</script>"
            f'<script src="static/{MODEL_VIEWER}"></script></head>\n<body>\n'
            f"<h1>{escape(title)}</h1><p>{len(entries)} reconstruction(s) in <code>{escape(str(root))}</code>"
            f"</p>{'<ul>' + contents + '</ul>' if len(entries) > 1 else ''}\n" + "\n".join(sections)
            + f'\n<p class="foot">3D view: <a href="static/LICENSES.txt">model-viewer and its licences</a></p>'
            + f"\n<script>{GLB_SCRIPT}</script>\n</body></html>\n")
    return write_atomic(page_dir / "index.html", page)


def _entry_html(i: int, entry: Entry, page_dir: Path, embed: bool) -> str:
    head = f'<section class="case" id="case-{i}"><h2>{escape(entry.title)}</h2>'
    if entry.result is None:
        return head + f'<p class="failed">{escape(entry.error)}</p></section>'
    r, folder = entry.result, entry.folder
    outputs = r.get("outputs") or {}
    media = []
    reference = folder / outputs.get("reference", "reference.png")
    if reference.is_file():
        media.append(f'<figure><img class="ref" src="{href(reference, page_dir)}" alt="reference">'
                     "<figcaption>input</figcaption></figure>")
    turntable = turntable_html(folder / outputs.get("video_rgb", "video/rgb.mp4"),
                               folder / outputs.get("gif_rgb", "video/rgb.gif"), page_dir, f"turntable {entry.title}")
    if turntable:
        media.append(f"<figure>{turntable}<figcaption>turntable</figcaption></figure>")
    glb = folder / outputs.get("mesh_glb", "mesh/mesh.glb")
    if glb.is_file():
        media.append(f"<figure>{_model_viewer(i, glb, page_dir, embed)}<figcaption>mesh.glb (drag to turn)"
                     "</figcaption></figure>")
    orbit = orbit_views_html(r, folder, page_dir)
    curves = "".join(f'<img src="{href(p, page_dir)}" alt="{escape(name)}">'
                     for name, p in _curves(i, r, page_dir, entry.title).items())
    return (head + f"<p>{escape(str(r.get('prompt', '')))}</p>" + _facts_html(r, folder, page_dir)
            + f'<div class="media">{"".join(media)}</div>'
            + (f"<h3>orbit views and what the 3D prior imagines</h3>{orbit}" if orbit else "")
            + (f'<h3>curves</h3><div class="curves">{curves}</div>' if curves else "") + "</section>")


def _figures(views: list, folder: Path, page_dir: Path, what: str) -> str:
    """One captioned thumbnail per view record ({file, azimuth, ...}) whose file exists."""
    out = []
    for v in views:
        if not isinstance(v, dict) or not isinstance(v.get("file"), str) or not (folder / v["file"]).is_file():
            continue
        az = v.get("azimuth")
        label = f"{float(az):g}°" if isinstance(az, (int, float)) else Path(v["file"]).stem
        out.append(f'<figure><img src="{href(folder / v["file"], page_dir)}" alt="{escape(f"{what} {label}")}" '
                   f'title="{escape(v["file"])}"><figcaption>{escape(label)}</figcaption></figure>')
    return "".join(out)


def prior_views_caption(prior: dict) -> str:
    """How the prior views were drawn, as one line of plain text (escape it to show it)."""
    sampler = prior.get("sampler") or {}
    parts = [str(prior.get("model_id", "the 3D prior"))]
    if "steps" in sampler:
        parts.append(f"{sampler['steps']} DDIM steps, guidance {sampler.get('guidance_scale', '–')}, "
                     f"eta {sampler.get('eta', '–')}, run seed {sampler.get('seed', '–')}")
    return " · ".join(parts)


def orbit_views_html(r: dict, folder: Path, page_dir: Path) -> str:
    """The reconstruction's orbit views (views/) above the 3D prior's own views (prior_views/, drawn before
    training at the detector's azimuths), each row labelled, each view captioned with its azimuth; a prior row
    that was skipped says why. '' when there is neither."""
    rows = []
    recon = _figures(r.get("views") or [], folder, page_dir, "reconstruction")
    if recon:
        rows.append('<tr><th>reconstruction<br><small>views/, after training</small></th>'
                    f'<td class="views recon-views">{recon}</td></tr>')
    prior = read_prior_views(folder, r)
    if isinstance(prior, dict) and prior.get("skipped"):
        rows.append(f'<tr><th>3D prior</th><td class="prior-skipped">not drawn: {escape(str(prior["skipped"]))}'
                    "</td></tr>")
    elif isinstance(prior, dict):
        figures = _figures(prior.get("views") or [], folder, page_dir, "3D prior")
        if figures:
            rows.append(f"<tr><th>3D prior, before training<br><small>prior_views/: "
                        f"{escape(prior_views_caption(prior))}</small></th>"
                        f'<td class="views prior-views">{figures}</td></tr>')
    return f'<table class="orbit">{"".join(rows)}</table>' if rows else ""


def _model_viewer(i: int, glb: Path, page_dir: Path, embed: bool) -> str:
    """A <model-viewer> that loads `glb` when scrolled near (from glb/case-i.js when embedded)."""
    script = ""
    if embed:
        data = base64.b64encode(glb.read_bytes()).decode("ascii")
        path = write_atomic(page_dir / "glb" / f"case-{i}.js", f'c123Glb("mv-{i}", "{data}");\n')
        script = f' data-glb-script="{href(path, page_dir)}"'
    return (f'<model-viewer id="mv-{i}" data-glb="{href(glb, page_dir)}"{script} camera-controls '
            'interaction-prompt="none" shadow-intensity="0.5" alt="the reconstructed mesh"></model-viewer>')


def _facts_html(r: dict, folder: Path, page_dir: Path) -> str:
    """Switch, final weights, last S^k / R^k, run identity, timings, warnings and links, as a small table."""
    det, weights = r.get("detector") or {}, r.get("weights") or {}
    switch = r.get("switch_iteration")
    method = f"preset {r.get('preset', '–')} · variant {r.get('variant', '–')} · seed {r.get('seed', '–')}"
    rows = [("method", method),
            ("switch", "–" if switch is None else f"step {switch}" + (" (forced)" if det.get("forced") else ""))]
    if weights.get("w3d"):
        rows.append(("final weights", f"w3D {weights['w3d'][-1]:.3f} · w2D {weights['w2d'][-1]:.3f}"))
    if det.get("S"):
        last_r = next((v for v in reversed(det.get("R") or []) if v is not None), None)
        rows.append(("detector", f"S^k {det['S'][-1]:.4f} at step {det['iterations'][-1]} · "
                                 f"R^k {'–' if last_r is None else format(last_r, '.2e')} · {len(det['S'])} scores"))
    seconds = r.get("stage_seconds") or {}
    if seconds:
        rows.append(("seconds", " · ".join(f"{k} {v:.0f}" for k, v in seconds.items())))
    rows.append(("config", f"hash {r.get('config_hash', '–')} · code {r.get('code_version', '–')} · "
                           f"{r.get('device', '–')}"))
    outputs = r.get("outputs") or {}
    links = [("result.json", folder / "result.json"), ("config.yaml", folder / outputs.get("config", "config.yaml")),
             ("mesh.glb", folder / outputs.get("mesh_glb", "mesh/mesh.glb")),
             ("mesh.obj", folder / outputs.get("mesh_obj", "mesh/mesh.obj"))]
    shown = [f'<a href="{href(p, page_dir)}">{escape(name)}</a>' for name, p in links if p.is_file()]
    events = folder / outputs.get("events", "tb")
    if events.is_dir():
        shown.append(f'<a href="{href(events, page_dir)}/">TensorBoard events</a> '
                     f"(<code>tensorboard --logdir {escape(str(events))}</code>)")
    rows.append(("files", " · ".join(shown)))
    rows += [("warning", f'<span class="warn">{escape(str(w))}</span>') for w in r.get("warnings") or []]
    cells = "".join(f"<tr><td>{escape(k)}</td><td>{v if k in ('files', 'warning') else escape(v)}</td></tr>"
                    for k, v in rows)
    return f'<table class="facts">{cells}</table>'


def _curves(i: int, r: dict, page_dir: Path, title: str) -> dict[str, Path]:
    """The case's loss, detector and weight curves as PNGs under OUT/plots (only those it has data for)."""
    from c123.viewer.curves import detector_plot, loss_plot, weights_plot

    made, label = {}, str(r.get("case") or title)
    plots = page_dir / "plots"
    if any(r.get("loss", {}).values()):
        made["loss"] = loss_plot(r, f"loss terms: {title}", plots / f"case-{i}-loss.png")
    if (r.get("detector") or {}).get("iterations"):
        made["S^k"] = detector_plot({label: r}, f"boundary detector: {title}", plots / f"case-{i}-detector.png")
    if (r.get("weights") or {}).get("iterations"):
        made["weights"] = weights_plot({label: r}, f"prior weights: {title}", plots / f"case-{i}-weights.png")
    return made


# ---- serving -----------------------------------------------------------------------------------------
PAGE_PARTS = ("static", "plots", "glb")
"""What build_view writes beside index.html: with the page itself, all that is served of the page's folder
(`--out` may name a folder that holds other things, e.g. the user's home)."""


class _RunFolderHandler(SimpleHTTPRequestHandler):
    """Serves the page and the run folder, nothing else, without a log line per request.

    URLs map onto the common parent of the two (the page links the run with relative paths such as
    ../run/x.png), which may be `/`: so every request is resolved (symlinks followed, `..` and `%2e%2e`
    already dropped by translate_path) and answered 404 unless it lands in `allowed`."""

    allowed: tuple[Path, ...] = ()

    def send_head(self):
        real = Path(os.path.realpath(self.translate_path(self.path)))
        if not any(real == root or root in real.parents for root in self.allowed):
            self.send_error(404, "File not found")
            return None
        return super().send_head()

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def served_paths(page: Path, folder: str | Path) -> tuple[Path, ...]:
    """The real paths `serve` answers for: the run folder, the page and the viewer's own folders beside it."""
    page = Path(os.path.realpath(page))
    return (Path(os.path.realpath(folder)), page, *(page.parent / part for part in PAGE_PARTS))


def serve(page: Path, folder: str | Path, port: int = 8123) -> None:
    """Serve the page and the reconstructions (only those: see _RunFolderHandler) on http://127.0.0.1:PORT until
    Ctrl-C (port 0: any free one)."""
    allowed = served_paths(page, folder)
    root = Path(os.path.commonpath([allowed[0], allowed[1]]))
    handler_class = type("RunFolderHandler", (_RunFolderHandler,), {"allowed": allowed})
    handler = functools.partial(handler_class, directory=str(root))
    try:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        raise C123Error(f"port {port} on 127.0.0.1 is in use: pass another with --port N") from None
    with httpd:
        url = f"http://127.0.0.1:{httpd.server_port}/{quote(allowed[1].relative_to(root).as_posix())}"
        print(f"serving {url} (Ctrl-C stops)", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            print("stopped serving")
