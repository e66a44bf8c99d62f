"""One static HTML page (opens from disk, no external resources, relative links): tables, plots, case x method grid."""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from c123.prior_views import read_prior_views
from c123.viewer import TURNTABLE_SCRIPT, href, prior_views_caption, turntable_html
from c123_pipeline.reports import published as pub
from c123_pipeline.reports.plots import code_changes
from c123_pipeline.reports.regression import Verdict
from c123_pipeline.reports.runs import TRUTH_DIR, Run, all_cases
from c123_pipeline.reports.verify import GROUND_TRUTH_LABELS
from c123_pipeline.reports.tables import Table, elevation_text

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .45rem;vertical-align:top}
td.num{text-align:right;white-space:nowrap}
.foot{font-size:.8rem;color:#555;margin:.1rem 0}
figure{display:inline-block;margin:.5rem}
figure img{max-width:100%;border:1px solid #ddd}
.grid img.ref{width:128px;background:#fff}
.grid video,.grid img.gif{width:160px;display:block}
.views img{width:48px;margin:1px;background:#fff}
.views-label{font-size:.75rem;color:#555;margin-top:.2rem}
.pairs figure{margin:.2rem;text-align:center}
.pairs img{width:96px;display:block;background:#fff}
.pairs figcaption{font-size:.75rem;color:#555}
.failed{color:#b00}
.ok{color:#070}
"""



def table_html(table: Table) -> str:
    """A Table as HTML, groups (datasets / shapes) as spanning headers."""
    lead = 1 + bool(table.head[1])
    groups: list[list] = []
    for c in table.columns:
        if groups and groups[-1][0] == c.group:
            groups[-1][1] += 1
        else:
            groups.append([c.group, 1])
    heads = [f'<th colspan="{lead}"></th>'] + [f'<th colspan="{n}">{escape(g)}</th>' for g, n in groups]
    names = [escape(table.head[0]), *([escape(table.head[1])] if lead == 2 else []),
             *(escape(c.name) for c in table.columns)]
    out = [f"<table><caption>{escape(table.title)}</caption>", "<thead><tr>" + "".join(heads) + "</tr>",
           "<tr>" + "".join(f"<th>{n}</th>" for n in names) + "</tr></thead><tbody>"]
    for row in table.rows:
        label = escape(row.label) + "".join(f"<sup>{escape(m)}</sup>" for m in row.marks)
        cells = [f"<td>{label}</td>", *([f"<td>{escape(row.tag)}</td>"] if lead == 2 else [])]
        for c in row.cells:
            text = escape(c.text) + (f"<sup>{escape(c.mark)}</sup>" if c.mark else "")
            cells.append(f'<td class="num">{"<strong>" + text + "</strong>" if c.bold else text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="foot"><sup>{escape(m)}</sup> {escape(t)}</p>' for m, t in table.footnotes]
    out += [f'<p class="foot">{escape(n)}</p>' for n in table.notes]
    return "\n".join(out)


def prior_views_html(folder: Path, result: dict | None, out_dir: Path) -> str:
    """The 3D prior's own views of a case (prior_views/, drawn before training: also there when the case failed
    later), labelled, each titled with its azimuth; or why they were not drawn; '' when the folder has neither."""
    prior = read_prior_views(folder, result) if isinstance(folder, Path) else None
    if not isinstance(prior, dict):
        return ""
    if prior.get("skipped"):
        return (f'<div class="views-label prior-skipped">3D prior\'s views: not drawn '
                f'({escape(str(prior["skipped"]))})</div>')
    thumbs = []
    for v in prior.get("views") or []:
        if not isinstance(v, dict) or not isinstance(v.get("file"), str) or not (folder / v["file"]).is_file():
            continue
        label = f"{float(v['azimuth']):g}°" if isinstance(v.get("azimuth"), (int, float)) else Path(v["file"]).stem
        thumbs.append(f'<img src="{href(folder / v["file"], out_dir)}" alt="{escape(f"3D prior {label}")}" '
                      f'title="{escape(f"3D prior at azimuth {label}")}">')
    if not thumbs:
        return ""
    return (f'<div class="views-label" title="{escape(prior_views_caption(prior))}">3D prior, before training '
            f'(prior_views/)</div><div class="views prior-views">{"".join(thumbs)}</div>')


def _case_cell(run: Run, row, out_dir: Path) -> str:
    """Turntable video (gif fallback), orbit thumbnails and the 3D prior's views of one case, or why it failed
    (with the prior's views when it drew them before failing)."""
    if row.status != "ok":
        prior = prior_views_html(run.case_dir(row.case_dir), None, out_dir) if isinstance(row.case_dir, str) else ""
        return (f'<td class="failed">failed: {escape("" if pd.isna(row.error) else str(row.error)[:200])}'
                f"{prior}</td>")
    folder = run.case_dir(row.case_dir)
    result = run.result(row.case_dir) or {}
    outputs = result.get("outputs", {})
    parts = [turntable_html(folder / outputs.get("video_rgb", "video/rgb.mp4"),
                            folder / outputs.get("gif_rgb", "video/rgb.gif"), out_dir, f"turntable {row.case}")]
    views = [folder / v["file"] for v in result.get("views", [])] or sorted(folder.glob("views/view_*.png"))
    thumbs = "".join(f'<img src="{href(v, out_dir)}" alt="{escape(v.stem)}">'
                     for v in views if v.is_file())
    if thumbs:
        parts.append(f'<div class="views-label">orbit views (views/)</div>'
                     f'<div class="views recon-views">{thumbs}</div>')
    parts.append(prior_views_html(folder, result, out_dir))
    metrics = " · ".join(f"{pub.METRIC_LABELS[m].rstrip(' ↑↓')} {getattr(row, m):.3f}" for m in pub.METRICS
                         if not pd.isna(getattr(row, m)))
    events = folder / outputs.get("events", "tb")
    tb = f' · <a href="{href(events, out_dir)}/">TensorBoard</a>' if events.is_dir() else ""
    camera = camera_note(row)
    parts.append(f'<div class="foot">seed {row.seed}{" · " + escape(camera) if camera else ""}'
                 f'{" · " + metrics if metrics else ""}{tb}</div>')
    return "<td>" + "".join(parts) + "</td>"


def camera_note(row) -> str:
    """'elevation 30° (table), true 30°': the input camera of a per_case row, or '' when it is the default
    elevation 0 and not known to be otherwise (or the run predates the columns)."""
    assumed = getattr(row, "elevation", float("nan"))
    true = getattr(row, "true_elevation", float("nan"))
    if pd.isna(assumed) or (assumed == 0 and (pd.isna(true) or true == 0)):
        return ""
    source = getattr(row, "elevation_source", None)
    text = f"elevation {elevation_text(assumed)}" + ("" if source is None or pd.isna(source) else f" ({source})")
    return text + ("" if pd.isna(true) else f", true {elevation_text(true)}")


def grid_html(runs: list[Run], out_dir: Path) -> str:
    """Per dataset: rows = cases (reference image first), columns = methods; each shows its lowest succeeded seed."""
    cases = all_cases(runs)
    by_id = {r.run_id: r for r in runs}
    out = []
    for dataset, ds in cases.groupby("dataset", sort=True):
        labels = list(dict.fromkeys(ds["label"]))
        out += [f"<h3>{escape(str(dataset))}</h3>", '<table class="grid"><thead><tr><th>case</th><th>reference</th>'
                + "".join(f"<th>{escape(lab)}</th>" for lab in labels) + "</tr></thead><tbody>"]
        for case, group in ds.groupby("case", sort=True):
            order = group.assign(failed=group["status"] != "ok").sort_values(["failed", "seed"])
            first = {r.label: r for r in order.drop_duplicates("label").itertuples()}
            refs = [by_id[r.run_id].case_dir(r.case_dir) / "reference.png"
                    for r in first.values() if isinstance(r.case_dir, str)]
            ref = next((f'<img class="ref" src="{href(p, out_dir)}" alt="reference {escape(str(case))}">'
                        for p in refs if p.is_file()), "")
            category = group["category"].dropna()
            name = escape(str(case)) + (f"<br><small>{escape(str(category.iloc[0]))}</small>" if len(category) else "")
            cells = [_case_cell(by_id[first[lab].run_id], first[lab], out_dir) if lab in first else "<td>–</td>"
                     for lab in labels]
            out.append(f"<tr><td>{name}</td><td>{ref}</td>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
    return "\n".join(out)


def _events_hint(run: Run) -> str:
    """How to open the run's TensorBoard events (every case folder's tb/), when it has any."""
    if not any(run.path.glob("cases/**/tb")):
        return ""
    return f"; loss curves: <code>tensorboard --logdir {escape(str(run.path / 'cases'))}</code>"
def truth_html(runs: list[Run], out_dir: Path) -> str:
    """Per synthetic case and method (lowest succeeded seed): each true view above the reconstructed one
    from the same camera, and the metrics against the known object; empty when no case has true views."""
    out = []
    cases = all_cases(runs)
    ok = cases[cases["status"] == "ok"].sort_values(["dataset", "case", "label", "seed"])
    for row in ok.drop_duplicates(["dataset", "case", "label"]).itertuples():
        run = next(r for r in runs if r.run_id == row.run_id)
        folder = run.case_dir(row.case_dir)
        views = (run.result(row.case_dir) or {}).get("views", [])
        pairs = [(v, folder / TRUTH_DIR / Path(v["file"]).name, folder / v["file"]) for v in views]
        pairs = [(v, t, r) for v, t, r in pairs if t.is_file() and r.is_file()]
        if not pairs:
            continue
        figures = "".join(
            f'<figure class="pair" data-azimuth="{v["azimuth"]:g}">'
            f'<img class="truth" src="{href(t, out_dir)}" alt="true view {v["azimuth"]:g}°">'
            f'<img class="recon" src="{href(r, out_dir)}" alt="reconstructed view {v["azimuth"]:g}°">'
            f'<figcaption>{v["azimuth"]:g}°</figcaption></figure>' for v, t, r in pairs)
        numbers = " · ".join([*filter(None, [camera_note(row)]),
                              *(f"{label} {getattr(row, m):.4g}" for m, label in GROUND_TRUTH_LABELS.items()
                                if not pd.isna(getattr(row, m, float("nan"))))])
        out.append(f'<div class="case-truth" data-case="{escape(str(row.case))}"><h3>{escape(str(row.case))} '
                   f"<small>{escape(row.label)} · seed {row.seed}</small></h3>"
                   f'<p class="foot">top: the true view; below: the reconstruction, same camera (azimuth from the '
                   f'reference view). {escape(numbers)}</p><div class="pairs">{figures}</div></div>')
    if not out:
        return ""
    return '<section id="truth"><h2>Against the true object</h2>' + "\n".join(out) + "</section>"


def verdict_html(verdict: Verdict) -> str:
    """The regression headline and its findings."""
    cls, head = ("failed", "REGRESSED") if verdict.regressed else ("ok", "no regression")
    rows = "".join(
        f"<tr><td>{escape(f.kind)}</td><td>{escape(f.dataset)}</td><td>{escape(f.variant)} · {escape(f.weight_shape)}"
        f"</td><td>{escape(f.detail) if f.kind == 'drift' else escape(f.case)}{'' if f.seed is None else f' s{f.seed}'}"
        f"</td><td>{escape(f.metric)}</td>"
        f'<td class="num">{"–" if pd.isna(f.baseline) else f"{f.baseline:.4f}"}</td>'
        f'<td class="num">{"–" if pd.isna(f.current) else f"{f.current:.4f}"}</td>'
        f'<td class="{"failed" if f.regressed else "ok"}">{"regressed" if f.regressed else "ok"}</td></tr>'
        for f in verdict.findings)
    against = [f"baseline {escape(verdict.baseline_run_id)}"] if verdict.baseline_run_id else []
    against += [f"the {escape(verdict.reference)} (drift)"] if verdict.reference else []
    return (f'<p class="{cls}"><strong>{head}</strong>: run {escape(verdict.run_id)} against '
            f"{' and '.join(against)}</p><table><thead><tr><th>kind</th><th>dataset</th><th>method</th>"
            f"<th>case / reference</th><th>metric</th><th>baseline</th><th>current</th><th>verdict</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def history_html(history: pd.DataFrame | None) -> str:
    """What the nightly trend covers: how many runs, from when to when, and where the code version changed."""
    if history is None or history["run_id"].nunique() < 2:
        return ""
    per_run = history.sort_values("run_time", kind="stable").drop_duplicates("run_id")
    changes = "".join(f"<li>{escape(pd.Timestamp(w).strftime('%Y-%m-%d %H:%M'))}: code {escape(v)}</li>"
                      for w, v in code_changes(history))
    return (f'<p class="foot" id="history">Nightly trend over {len(per_run)} runs, '
            f"{escape(pd.Timestamp(per_run['run_time'].iloc[0]).strftime('%Y-%m-%d'))} to "
            f"{escape(pd.Timestamp(per_run['run_time'].iloc[-1]).strftime('%Y-%m-%d'))}"
            + (f"; code version changed at:</p><ul class=\"foot\">{changes}</ul>" if changes else ".</p>"))


def render_page(runs: list[Run], tables: list[Table], plots: dict[str, Path], out_dir: Path,
                verdict: Verdict | None = None, history: pd.DataFrame | None = None) -> str:
    """The whole page as a string; every link is relative to out_dir."""
    out_dir = Path(out_dir).resolve()
    summary = "".join(
        f"<li><code>{escape(r.run_id)}</code>: {escape(', '.join(sorted(r.per_case['dataset'].astype(str).unique())))}"
        f", {len(r.per_case)} case runs, {int((r.per_case['status'] == 'ok').sum())} ok, "
        f"created {escape(r.created_at.isoformat())}, code {escape(str(r.info.get('code_version', '–')))}"
        f"{_events_hint(r)}</li>"
        for r in runs)
    figures = "".join(f'<figure><img src="{href(p, out_dir)}" alt="{escape(name)}">'
                      f"<figcaption>{escape(name)}</figcaption></figure>" for name, p in plots.items())
    body = [f"<h1>c123 benchmark report</h1><ul>{summary}</ul>"]
    if verdict is not None:
        body.append(f'<section id="verdict"><h2>Regression</h2>{verdict_html(verdict)}</section>')
    body += ['<section id="tables"><h2>Tables</h2>' + "".join(table_html(t) for t in tables) + "</section>",
             f'<section id="plots"><h2>Plots</h2>{history_html(history)}{figures}</section>', truth_html(runs, out_dir),
             f'<section id="cases"><h2>Cases</h2>{grid_html(runs, out_dir)}</section>']
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>c123 report</title><style>{STYLE}</style><script>{TURNTABLE_SCRIPT}</script></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
