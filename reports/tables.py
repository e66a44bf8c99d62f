"""Paper-style tables from per_case rows: Table 1 (methods x datasets) and Table 2 (weight-shape ablation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from c123_pipeline.reports import published as pub

DASH = "–"
"""What a missing value prints as (never 0)."""

DECIMALS = 3
REFERENCE_NOTE = ("Reported rows: paper Table 1. The paper does not publish its CLIP model, number of views or "
                  "resolution; reproduced rows are checked against the closest public protocol "
                  "(Magic123: ViT-bigG-14, 100 views) at 512 px.")
RANKING_NOTE = ("Bold: the best reported row and, separately, the best of two or more reproduced rows; rows with "
                "random weights are never bold.")
RANDOM_MARK = "†"
RANDOM_NOTE = ("random weights: plumbing check only (the tiny preset's random priors or a random LPIPS backbone); "
               "these numbers say nothing about the method and are never ranked.")
GROUND_TRUTH_NOTE = ("Synthetic scenes with known geometry (and GSO objects): novel-view PSNR and LPIPS against the "
                     "true renders of the orbit views, squared Chamfer distance between the exported mesh and the "
                     "true surface; the SyncDreamer columns under --protocol syncdreamer (c123.metrics).")


@dataclass
class Cell:
    """One table cell: its text, whether it is the best in its comparison, and a footnote mark."""

    text: str = DASH
    bold: bool = False
    mark: str = ""


@dataclass
class Column:
    """A column: its group (dataset or weight shape) and its name (metric)."""

    group: str
    name: str


@dataclass
class Row:
    """A method (or category) row; `tag` is 'reported' or 'reproduced' in Table 1."""

    label: str
    tag: str
    cells: list[Cell]
    marks: list[str] = field(default_factory=list)


@dataclass
class Table:
    """A renderable table; footnotes are (mark, text) pairs, notes are unmarked lines under it."""

    title: str
    head: tuple[str, str]
    columns: list[Column]
    rows: list[Row]
    footnotes: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt(value: float, std: float = math.nan) -> str:
    """'0.770', '0.770 ± 0.012', or the dash for NaN."""
    if value is None or pd.isna(value):
        return DASH
    return f"{value:.{DECIMALS}f}" + ("" if pd.isna(std) else f" ± {std:.{DECIMALS}f}")


def _bold_best(candidates: list[tuple[Cell, float]], metric: str, at_least: int = 1) -> None:
    """Bold every cell whose rounded value is the best of the candidates (ties all bold), if enough have values."""
    values = [(c, round(v, DECIMALS)) for c, v in candidates if not pd.isna(v)]
    if len(values) < at_least:
        return
    best = (max if pub.HIGHER_IS_BETTER[metric] else min)(v for _, v in values)
    for cell, v in values:
        cell.bold = v == best


def _ok_values(group: pd.DataFrame, metric: str) -> pd.Series:
    """The metric over succeeded cases; NaN (metric failed) is left out of the mean, never read as 0."""
    return group.loc[group["status"] == "ok", metric].astype("float64").dropna()


def _ok_count(group: pd.DataFrame) -> str:
    """'n ok / n cases' (failed cases count in the denominator), or the dash when there are no cases."""
    return f"{int((group['status'] == 'ok').sum())} / {len(group)}" if len(group) else DASH


def _protocol_deviation(group: pd.DataFrame) -> str:
    """What in these rows' protocol differs from the reference protocol; '' when nothing does."""
    ref = pub.REFERENCE_PROTOCOL

    def seen(col: str) -> list[str]:
        return sorted({str(v) for v in group[col].dropna()}) if col in group else []

    parts = []
    protocols = [p for p in seen("protocol") if p != ref.name]
    if protocols:
        parts.append(f"metric protocol {', '.join(protocols)} (reference {ref.name})")
    clip = [m for m in seen("clip_model") if not pub.same_clip_model(m)]
    if clip:
        parts.append(f"CLIP model {', '.join(clip)} (reference ViT-bigG-14)")
    views = [v for v in seen("num_views") if v != str(ref.num_views)]
    if views:
        parts.append(f"{', '.join(views)} views (reference {ref.num_views})")
    res = [v for v in seen("resolution") if v != str(pub.REFERENCE_RESOLUTION)]
    if res:
        parts.append(f"resolution {', '.join(res)} px (reference {pub.REFERENCE_RESOLUTION})")
    nets = [v for v in seen("lpips_net") if v != ref.lpips_net]
    if nets:
        parts.append(f"LPIPS net {', '.join(nets)} (reference {ref.lpips_net})")
    return "; ".join(parts)


def dataset_order(datasets) -> list[str]:
    """The paper's datasets first, in its order, then any others alphabetically."""
    present = set(datasets)
    return [d for d in pub.DATASETS if d in present] + sorted(present - set(pub.DATASETS))


def random_weights(group: pd.DataFrame) -> bool:
    """Whether rows were measured with random weights: the tiny preset's random priors, or a random LPIPS
    backbone ('alex-random'). Their numbers check the plumbing, not the method."""
    tiny = (group["preset"].astype(str) == "tiny").any()
    lpips_random = "lpips_net" in group and group["lpips_net"].astype(str).str.endswith("-random").any()
    return bool(tiny or lpips_random)


def _measured_rows(cases: pd.DataFrame, datasets: list[str], metrics: tuple[str, ...] | list[str],
                   notes: dict[str, str] | None) -> list[tuple[Row, dict, bool]]:
    """(row, {(dataset, metric): mean}, random weights) per method label: mean ± std over succeeded cases and
    'ok / cases' per dataset; `notes` collects protocol deviations as footnote marks (None: not marked)."""
    out = []
    for label, group in cases.groupby("label", sort=False):
        cells, vals = [], {}
        for d in datasets:
            sub = group[group["dataset"] == d]
            for m in metrics:
                ok = _ok_values(sub, m)
                mean = ok.mean() if len(ok) else math.nan
                cells.append(Cell(fmt(mean, ok.std(ddof=1) if len(ok) > 1 else math.nan)))
                vals[(d, m)] = mean
            cells.append(Cell(_ok_count(sub)))
        deviation = _protocol_deviation(group) if notes is not None else ""
        marks = [notes.setdefault(deviation, chr(ord("a") + len(notes)))] if deviation else []
        random = random_weights(group)
        out.append((Row(str(label), "reproduced", cells, marks + ([RANDOM_MARK] if random else [])), vals, random))
    return out


def _bold_ranked(ranked: list[tuple[Row, dict]], datasets: list[str], metrics, at_least: int) -> None:
    """Bold the best of `ranked` per dataset and metric (cells laid out as metrics + 'ok / cases' per dataset)."""
    width = len(metrics) + 1
    for j, d in enumerate(datasets):
        for k, m in enumerate(metrics):
            _bold_best([(row.cells[width * j + k], vals[(d, m)]) for row, vals in ranked], m, at_least)


def table1(cases: pd.DataFrame) -> Table:
    """Table 1: published baselines ('reported') and our runs ('reproduced'), per dataset mean ± std. Each kind
    is ranked on its own (a reproduced number is never 'best' against a published one); rows measured with
    random weights are never ranked and carry the RANDOM_MARK footnote."""
    datasets = dataset_order(cases["dataset"].unique()) if len(cases) else list(pub.DATASETS)
    columns = [Column(pub.DATASETS.get(d, d), name) for d in datasets
               for name in [*(pub.METRIC_LABELS[m] for m in pub.METRICS), "ok / cases"]]
    reported = []  # (row, {(dataset, metric): number behind the cell})
    for method in pub.METHODS:
        cells, vals = [], {}
        for d in datasets:
            published = pub.TABLE1.get(d, {}).get(method)
            for i, m in enumerate(pub.METRICS):
                v = published[i] if published else math.nan
                discounted = (method, m) in pub.DISCOUNTED
                cells.append(Cell(fmt(v), mark="*" if discounted and published else ""))
                vals[(d, m)] = math.nan if discounted else v
            cells.append(Cell())
        if any(c.text != DASH for c in cells):
            reported.append((Row(method, "reported", cells), vals))
    notes: dict[str, str] = {}
    reproduced = _measured_rows(cases, datasets, pub.METRICS, notes)
    _bold_ranked(reported, datasets, pub.METRICS, at_least=1)
    _bold_ranked([(row, vals) for row, vals, random in reproduced if not random], datasets, pub.METRICS,
                 at_least=2)  # a lone run is not "best"
    rows = [row for row, _ in reported] + [row for row, _, _ in reproduced]
    footnotes = [(mark, f"Protocol differs: {text}.") for text, mark in notes.items()]
    if any(c.mark == "*" for r in rows for c in r.cells):
        footnotes.append(("*", next(iter(pub.DISCOUNTED.values()))))
    if any(random for _, _, random in reproduced):
        footnotes.append((RANDOM_MARK, RANDOM_NOTE))
    return Table("Table 1: single-image reconstruction, mean ± std over succeeded cases", ("Method", "Source"),
                 columns, rows, footnotes, [REFERENCE_NOTE, RANKING_NOTE])


def ground_truth_table(cases: pd.DataFrame) -> Table | None:
    """Metrics against known ground truth (novel-view PSNR/LPIPS, Chamfer, ...) per method and dataset, for
    the datasets that have them (the synthetic one); None when no row has any."""
    metrics = [m for m in pub.GROUND_TRUTH_METRICS if m in cases and cases[m].notna().any()]
    if not metrics:
        return None
    has = cases[metrics].notna().any(axis=1)
    datasets = dataset_order(cases.loc[has, "dataset"].unique())
    subset = cases[cases["dataset"].isin(datasets)]
    columns = [Column(pub.DATASETS.get(d, d), name) for d in datasets
               for name in [*(pub.metric_label(m) for m in metrics), "ok / cases"]]
    measured = _measured_rows(subset, datasets, metrics, notes=None)
    _bold_ranked([(row, vals) for row, vals, random in measured if not random], datasets, metrics, at_least=2)
    footnotes = [(RANDOM_MARK, RANDOM_NOTE)] if any(random for _, _, random in measured) else []
    reported = [_reported_gso_row(columns, datasets, metrics, method, values)
                for method, values in pub.GSO_REPORTED.items()] if "gso" in datasets else []
    notes = [GROUND_TRUTH_NOTE, *([pub.GSO_REPORTED_NOTE] if "gso" in datasets else [])]
    return Table("Ground truth: reconstructions against the true views and surface, mean ± std over succeeded "
                 "cases", ("Method", "Source"), columns, [*reported, *(row for row, _, _ in measured)], footnotes,
                 notes)


def _reported_gso_row(columns: list[Column], datasets: list[str], metrics: list[str], method: str,
                      values: dict) -> Row:
    """A published GSO row (reports.published.GSO_REPORTED) laid out as the measured rows; ranked apart."""
    cells = []
    for d in datasets:
        cells += [Cell(fmt(values.get(m, math.nan)) if d == "gso" else DASH) for m in metrics] + [Cell(DASH)]
    return Row(method, "reported", cells)


def table2(cases: pd.DataFrame) -> list[Table]:
    """Table 2 per run and preset: C10 categories x weight shapes (consistent123), ours and the paper's averages."""
    c10 = cases[(cases["dataset"] == "c10") & (cases["variant"] == "consistent123")] if len(cases) else cases
    tables, several = [], c10["run_id"].nunique() > 1
    for (run_id, preset), group in c10.groupby(["run_id", "preset"], sort=False):
        group = group.assign(category=group["category"].fillna("unknown").astype(str))
        random = random_weights(group)
        extra = sorted(set(group["category"]) - set(pub.C10_CATEGORIES))
        columns = [Column(shape, name) for shape in pub.WEIGHT_SHAPES
                   for name in [*(pub.METRIC_LABELS[m] for m in pub.METRICS), "ok / cases"]]
        rows, means = [], {m: {s: [] for s in pub.WEIGHT_SHAPES} for m in pub.METRICS}
        for category in [*pub.C10_CATEGORIES, *extra]:
            cells, candidates = [], {m: [] for m in pub.METRICS}
            for shape in pub.WEIGHT_SHAPES:
                sub = group[(group["category"] == category) & (group["weight_shape"] == shape)]
                for m in pub.METRICS:
                    ok = _ok_values(sub, m)
                    mean = ok.mean() if len(ok) else math.nan
                    cells.append(Cell(fmt(mean)))
                    candidates[m].append((cells[-1], mean))
                    means[m][shape].append(mean)
                cells.append(Cell(_ok_count(sub)))
            for m in pub.METRICS:
                if not random:
                    _bold_best(candidates[m], m, at_least=2)  # a lone shape is not "best"
            rows.append(Row(category, "", cells))
        # Our average, like the paper's, is over categories (a category with several seeds counts once).
        avg = []
        for shape in pub.WEIGHT_SHAPES:
            sub = group[group["weight_shape"] == shape]
            avg += [Cell(fmt(pd.Series(means[m][shape], dtype="float64").mean())) for m in pub.METRICS]
            avg.append(Cell(_ok_count(sub)))
        paper = [Cell(f"{pub.TABLE2_AVERAGES[s][i]:.2f}" if i is not None else DASH)
                 for s in pub.WEIGHT_SHAPES for i in [0, 1, 2, None]]
        rows += [Row("average (reproduced)", "", avg, [RANDOM_MARK] if random else []),
                 Row("average (reported)", "", paper)]
        title = f"Table 2: C10 per category, consistent123 weight shapes, preset {preset}"
        tables.append(Table(title + (f", run {run_id}" if several else ""),
                            ("Category", ""), columns, rows,
                            footnotes=[(RANDOM_MARK, RANDOM_NOTE)] if random else [],
                            notes=["Means over succeeded cases; best shape per category in bold."]))
    return tables


def _md(text: str) -> str:
    """Escape what Markdown would read as emphasis or a column break."""
    return text.replace("|", "\\|").replace("*", "\\*")


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown: the dataset/shape goes into each column header (no spans in Markdown)."""
    show_tag = bool(table.head[1])
    head = [table.head[0], *([table.head[1]] if show_tag else []), *(f"{c.group} {c.name}" for c in table.columns)]
    lines = [f"**{table.title}**", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * (1 + show_tag) + "---:|" * len(table.columns)]
    for row in table.rows:
        label = _md(row.label) + "".join(f" [{m}]" for m in row.marks)
        cells = [(f"**{_md(c.text)}**" if c.bold else _md(c.text)) + _md(c.mark) for c in row.cells]
        lines.append("| " + " | ".join([label, *([row.tag] if show_tag else []), *cells]) + " |")
    lines.append("")
    lines += [f"{_md(m) if m == '*' else '[' + m + ']'} {text}  " for m, text in table.footnotes]
    lines += [f"{note}  " for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--",
        "↑": r"$\uparrow$", "↓": r"$\downarrow$", "·": r"$\cdot$", "†": r"$\dagger$"}


def _tex(text: str) -> str:
    """Escape LaTeX specials and map the Unicode symbols we print to math."""
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs tabular inside a table float, dataset/shape groups as multicolumn headers."""
    show_tag = bool(table.head[1])
    lead = 1 + show_tag
    groups: list[tuple[str, int]] = []
    for c in table.columns:
        if groups and groups[-1][0] == c.group:
            groups[-1] = (c.group, groups[-1][1] + 1)
        else:
            groups.append((c.group, 1))
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{" + "l" * lead + "r" * len(table.columns) + "}", r"\toprule",
             " & " * (lead - 1) + " & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex(g)}}}" for g, n in groups)
             + r" \\"]
    start = lead + 1
    rules = []
    for _, n in groups:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" ".join(rules))
    head = [table.head[0], *([table.head[1]] if show_tag else []), *(c.name for c in table.columns)]
    lines += [" & ".join(_tex(h) for h in head) + r" \\", r"\midrule"]
    for row in table.rows:
        label = _tex(row.label) + "".join(rf"\textsuperscript{{{_tex(m)}}}" for m in row.marks)
        cells = [(rf"\textbf{{{_tex(c.text)}}}" if c.bold else _tex(c.text)) + (r"$^*$" if c.mark == "*" else "")
                 for c in row.cells]
        lines.append(" & ".join([label, *([row.tag] if show_tag else []), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(table.title)}.}}", r"\end{table}"]
    notes = [(rf"\textsuperscript{{{_tex(m)}}}" if m != "*" else "$^*$") + " " + _tex(t) for m, t in table.footnotes]
    notes += [_tex(n) for n in table.notes]
    if notes:
        lines.insert(-1, r"\par\footnotesize " + r" \\ ".join(notes))
    return "\n".join(lines) + "\n"


def seed_spread(cases: pd.DataFrame, metrics) -> pd.DataFrame:
    """Per (method label, dataset, case): for each metric the mean and the standard deviation across seeds of the
    succeeded rows (`<metric>_mean`, `<metric>_seed_std`, NaN with one seed) and the number of seeds `seeds`."""
    ok = cases[cases["status"] == "ok"]
    keys = ["label", "dataset", "case"]
    grouped = ok.groupby(keys, sort=False)
    out = grouped.size().rename("seeds").to_frame()
    for m in metrics:
        values = grouped[m].agg(["mean", lambda s: s.std(ddof=1)])
        out[f"{m}_mean"], out[f"{m}_seed_std"] = values.iloc[:, 0], values.iloc[:, 1]
    return out.reset_index()


def seed_table(cases: pd.DataFrame) -> Table | None:
    """Per case, mean ± std across seeds of every metric that has values, for runs with two or more seeds of a
    case (None otherwise): how far a reseed moves each number."""
    metrics = [m for m in pub.HIGHER_IS_BETTER if m in cases and cases[m].notna().any()]
    spread = seed_spread(cases, metrics)
    spread = spread[spread["seeds"] >= 2]
    if spread.empty or not metrics:
        return None
    columns = [Column("across seeds", pub.metric_label(m)) for m in metrics] + [Column("", "seeds")]
    rows = [Row(f"{r.label} · {r.dataset}/{r.case}", "reproduced",
                [Cell(fmt(getattr(r, f"{m}_mean"), getattr(r, f"{m}_seed_std"))) for m in metrics]
                + [Cell(str(int(r.seeds)))]) for r in spread.itertuples()]
    return Table("Seeds: per case, mean ± std across seeds (succeeded runs)", ("Method · case", "Source"),
                 columns, rows, [], [SEED_NOTE])


CAMERA_METRICS = ("unseen_psnr", "novel_psnr", "silhouette_iou", "fscore", "psnr")
"""What the input-camera table shows beside each case's elevations: the ground truth's first (the unseen sides
are what a wrong elevation costs), then the reference-view PSNR."""
CAMERA_NOTE = ("Assumed: the input camera's elevation the reconstruction used (camera.ref_polar = 90 - elevation), "
               "from the flow's `elevation` parameter, the dataset table or the config (the preset's 0, the official "
               "fixed elevation); true: the elevation the input was really taken from, where the dataset knows it "
               "(synthetic renders, GSO). The oracle of the verify preset answers from the true camera, as "
               "Zero-1-to-3 answers from the image.")


def elevation_text(value) -> str:
    """'30°', or the dash when unknown."""
    return DASH if value is None or pd.isna(value) else f"{float(value):g}°"


def camera_table(cases: pd.DataFrame) -> Table | None:
    """Per method and case: the input camera's assumed elevation and its source, the true one, and the metrics
    a wrong elevation moves (mean over succeeded seeds); None when every known elevation is 0 (or the runs
    predate the columns), where the table would say nothing."""
    if "elevation" not in cases or not len(cases):
        return None
    true = cases["true_elevation"] if "true_elevation" in cases else pd.Series(math.nan, index=cases.index)
    known = pd.concat([cases["elevation"], true]).astype("float64").dropna()
    if not (known != 0).any():
        return None
    metrics = [m for m in CAMERA_METRICS if m in cases and cases[m].notna().any()]
    source = cases["elevation_source"] if "elevation_source" in cases else pd.Series(None, index=cases.index)
    frame = cases.assign(_true=true.astype("float64"), _source=source.astype("object").fillna(DASH).astype(str),
                         _assumed=cases["elevation"].astype("float64"))
    rows = []  # one case's runs side by side: its elevations' effect reads down the table
    for (dataset, case, label), group in frame.groupby(["dataset", "case", "label"], sort=True):
        first = group.iloc[0]
        cells = [Cell(elevation_text(first["_assumed"])), Cell(first["_source"]), Cell(elevation_text(first["_true"]))]
        for m in metrics:
            ok = _ok_values(group, m)
            cells.append(Cell(fmt(ok.mean() if len(ok) else math.nan, ok.std(ddof=1) if len(ok) > 1 else math.nan)))
        cells.append(Cell(_ok_count(group)))
        rows.append(Row(f"{dataset}/{case} · {label}", "", cells, [RANDOM_MARK] if random_weights(group) else []))
    columns = [Column("elevation", "assumed"), Column("elevation", "source"), Column("elevation", "true"),
               *(Column("metrics", pub.metric_label(m)) for m in metrics), Column("", "ok / cases")]
    footnotes = [(RANDOM_MARK, RANDOM_NOTE)] if any(RANDOM_MARK in r.marks for r in rows) else []
    return Table("Input camera: per case, the elevation assumed and the true one, mean ± std over succeeded seeds",
                 ("Case · method", ""), columns, rows, footnotes, [CAMERA_NOTE])


SEED_NOTE = ("A case's spread across seeds is the noise floor of any comparison of its numbers: the nightly "
             "verdict (reports.regression.seed_tolerance) flags a change only beyond it.")


def build_tables(cases: pd.DataFrame) -> list[Table]:
    """Table 1, the ground-truth table (when some dataset has ground truth), the input-camera table (when some
    case's assumed or true elevation is not 0), the seed table (when a case has several seeds), then one Table 2
    per run and preset that has C10 consistent123 rows."""
    optional = [ground_truth_table(cases), camera_table(cases), seed_table(cases)]
    return [table1(cases), *(t for t in optional if t is not None), *table2(cases)]
