"""Readers of the folder layouts the benchmarks come in; each returns a list of `Case`.

- flat:      `<case>_rgba.png` (+ `<case>_depth.png`) and prompts.tsv, as Consistent123 publishes RealFusion15
             (columns consistent123_name, consistent123_prompt) and C10 (columns case, category, prompt)
- original:  RealFusion's release, `<folder>/image.png + mask.png`; prompts from a prompts.tsv beside or above
- images:    any images + prompts.tsv / prompts.csv with column file (optional prompt, category, mask, depth);
             the case id is the file's stem without a trailing `_rgba`
- photos:    a folder of images and no table: each image is a case named by its file

Images without alpha or mask, rows without a prompt and cases without depth are fine: the reconstruction
estimates what is missing (c123.preprocess.prepare_input: cut-out, caption, depth), once per input.
- synthetic: the reference view of each c123.synthetic scene, rendered into a cache folder with its table
             synthetic_cases.tsv (case, scene, elevation, prompt); `synthetic-elevated` renders each scene at
             elevations 0, 15 and 30 (cases `toy@30`); the table gives the true elevation
- gso:       SyncDreamer's GSO evaluation set (read_gso): gso_cases.tsv, <case>/model.obj, <case>/gt/ renders

The input camera: a table may give each case's `elevation` (degrees of the input view, polar = 90 - elevation).
In the flat, original and images layouts the column is optional and a blank cell means the default (0, the
official fixed elevation, or the preset's estimate) and 'estimate' asks for the estimate from the image
(c123/elevation.py); synthetic and GSO tables give the true value (synthetic-elevated keeps it for the oracle and
the report: its runs estimate, or assume what the flow's `elevation` says).

Tables are read as they look: a .tsv is plain tab-separated text (a quote is just a character; a leading
UTF-8 byte-order mark is dropped), every row must have the header's number of fields, and each case id is
a plain name (datasets.case.CASE_ID) that occurs once. Every error names the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from c123.atomic import atomic_path, write_atomic
from c123.cache import cache_root
from c123.config import ELEVATION_ESTIMATE, elevation_value
from c123.errors import DatasetError
from c123.outputs import case_name
from c123_pipeline.datasets.case import Case, check_case_id


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
"""Files of an image folder that must each be named by its prompts table."""


@dataclass
class Row:
    """One data row of a table: its fields by column name, and where it is (for error messages)."""

    fields: dict[str, str]
    where: str
    """'FILE line N'."""

    def get(self, column: str, default: str = "") -> str:
        return self.fields.get(column) or default

    def __getitem__(self, column: str) -> str:
        return self.fields[column]

SYNTHETIC_PROMPTS = {
    "toy": "a small multicoloured toy figure with one raised arm and a pointed nose",
    "blocks": "a wooden slab with a blue tower, a red ball and a green log on it",
    "chair": "a wooden chair with thin legs, a blue backrest and a red writing tablet on its right",
    "mug": "a teal mug with an orange handle and a yellow band, striped inside",
}


ELEVATION_FIX = "write the input view's elevation in degrees (e.g. 30), or leave the cell blank for 0"
"""How to fix a bad `elevation` cell of a table that may leave it blank."""


def row_elevation(row: Row, fix: str = ELEVATION_FIX) -> float | None:
    """The row's `elevation` cell in degrees; None when the table has no such column or leaves it blank."""
    return elevation_value(row.get("elevation"), row.where, fix, DatasetError)


def read_table(path: Path) -> list[Row]:
    """Data rows of a .tsv (plain tab-separated) or .csv file with a header line; blank lines are skipped."""
    lines = _table_lines(path)
    if not lines:
        return []
    (_, header), rows = lines[0], []
    for n, fields in lines[1:]:
        if len(fields) != len(header):
            raise DatasetError(f"{path} line {n} has {len(fields)} fields but the header has {len(header)} "
                               f"({', '.join(header)}): fix that line (fields are separated by "
                               f"{'tabs' if path.suffix == '.tsv' else 'commas'})")
        rows.append(Row(dict(zip(header, fields)), f"{path} line {n}"))
    return rows


def table_columns(path: Path) -> set[str]:
    """The column names of a table's header line (empty for an empty file), whether or not rows follow."""
    lines = _table_lines(path)
    return set(lines[0][1]) if lines else set()


def check_has_rows(path: Path, rows: list[Row], needed: str) -> None:
    """DatasetError when a table that must list the cases lists none (an empty file, or only its header)."""
    if not rows:
        what = "has only its header line" if table_columns(path) else "is empty"
        raise DatasetError(f"{path} {what} and so lists no case: add one line per image ({needed}), separated by "
                           f"{'tabs' if path.suffix == '.tsv' else 'commas'}, under a header line naming them")


def read_case_table(path: Path, needed: str, required: set[str], fix: str) -> list[Row]:
    """The rows of a table that must list the cases (`check_has_rows`) under a header with the `required`
    columns; DatasetError '<path> lacks columns ...: <fix>' otherwise."""
    rows = read_table(path)
    check_has_rows(path, rows, needed)
    missing = required - table_columns(path)
    if missing:
        raise DatasetError(f"{path} lacks columns {', '.join(sorted(missing))}: {fix}")
    return rows


def _table_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped fields) of each non-blank line of a .tsv or .csv file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}): "
                           "save it as UTF-8 (a dataset c123 fetched can be fetched again)") from None
    except OSError as err:
        raise DatasetError(f"{path} cannot be read ({err.strerror or type(err).__name__}): check the file") from None
    if path.suffix == ".tsv":
        lines = [(n, line.split("\t")) for n, line in enumerate(text.splitlines(), 1)]
    else:
        try:
            lines = list(enumerate(csv.reader(text.splitlines(), strict=True), 1))
        except csv.Error as err:
            raise DatasetError(f"{path} is not valid CSV ({err}): fix the file") from err
    return [(n, [f.strip() for f in fields]) for n, fields in lines if any(f.strip() for f in fields)]


def unique_ids(located: list[tuple[Case, str]]) -> list[Case]:
    """The cases of (case, where it was read) pairs, refused when two share an id (they would share one
    case folder and report one result twice)."""
    first: dict[str, str] = {}
    for case, where in located:
        if case.id in first:
            raise DatasetError(f"{where}: case id '{case.id}' repeats {first[case.id]}: give each case its own id")
        first[case.id] = where
    return [case for case, _ in located]


def read_flat(root: Path) -> list[Case]:
    """`<case>_rgba.png`, `<case>_depth.png` and prompts.tsv (RealFusion15 or C10 columns, optionally
    `elevation`); every image has a row and every row an image."""
    table = root / "prompts.tsv"
    rows = read_table(table)
    header = table_columns(table)
    id_col = "consistent123_name" if "consistent123_name" in header else "case"
    prompt_col = "consistent123_prompt" if "consistent123_prompt" in header else "prompt"
    if {id_col, prompt_col} - header:
        raise DatasetError(f"{table} lacks columns {id_col} and {prompt_col} (has {', '.join(sorted(header))}): "
                           "re-download the dataset with `c123 fetch NAME --root DIR`")
    check_has_rows(table, rows, f"{id_col}, {prompt_col}")
    located = []
    for row in rows:
        case_id = check_case_id(row[id_col], row.where)
        rgba, depth = root / f"{case_id}_rgba.png", root / f"{case_id}_depth.png"
        if not rgba.is_file():
            raise DatasetError(f"{row.where} names {rgba.name}, which is not in {root}: re-download the dataset "
                               "with `c123 fetch NAME --root DIR` or remove the row")
        located.append((Case(case_id, rgba, depth if depth.is_file() else None, None, row[prompt_col],
                             row.get("category") or None, ref_elevation=row_elevation(row)), row.where))
    listed = {case.id for case, _ in located}
    unlisted = sorted(p.name for p in root.glob("*_rgba.png") if p.name[:-len("_rgba.png")] not in listed)
    if unlisted:
        raise DatasetError(f"{table} has no row for {', '.join(unlisted)}: add a row (id and prompt) for each "
                           "image, or move the images out of the folder")
    return unique_ids(located)


def read_original(root: Path) -> list[Case]:
    """RealFusion's `<folder>/image.png + mask.png`, recentred on load; names/prompts (and optional elevations)
    from a prompts.tsv."""
    names = {}
    for table in (root / "prompts.tsv", root.parent / "prompts.tsv"):
        if table.is_file():
            for row in read_table(table):
                key = row.get("realfusion_folder") or row.get("case")
                names[key] = (check_case_id(row.get("consistent123_name") or key, row.where),
                              row.get("consistent123_prompt") or row.get("prompt"), row.where, row_elevation(row))
            break
    located = []
    for folder in sorted(p for p in root.iterdir() if (p / "image.png").is_file() and (p / "mask.png").is_file()):
        case_id, prompt, where, elevation = names.get(folder.name, (folder.name, "", str(folder), None))
        located.append((Case(check_case_id(case_id, where), folder / "image.png", None, folder / "mask.png",
                             prompt, recenter=True, ref_elevation=elevation), where))
    return unique_ids(located)


def read_images(root: Path, table: Path) -> list[Case]:
    """Images listed in a prompts table (file; optional prompt, category, mask, depth, elevation), recentred on
    load."""
    rows = read_table(table)
    header = table_columns(table)
    if "file" not in header:
        raise DatasetError(f"{table} needs a column file (has {', '.join(sorted(header)) or 'none'})")
    check_has_rows(table, rows, "file, and optionally prompt, category, mask, depth, elevation")
    located = []
    for row in rows:
        paths = {k: _inside(root, row[k], row.where) for k in ("file", "mask", "depth") if row.get(k)}
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            raise DatasetError(f"{row.where} names {', '.join(missing)}, which is not in {root}: fix the table or "
                               "the folder")
        case_id = check_case_id(case_name(paths["file"]), row.where)  # 'x_rgba.png' is case x, as in `c123 reconstruct`
        located.append((Case(case_id, paths["file"], paths.get("depth"), paths.get("mask"), row.get("prompt"),
                             row.get("category") or None, recenter=True, ref_elevation=row_elevation(row)),
                        row.where))
    named = {p for case, _ in located for p in (case.rgba_path, case.mask_path, case.depth_path) if p}
    unlisted = sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in named)
    if unlisted:
        raise DatasetError(f"{table} does not name {', '.join(unlisted)}: add a row for each image (or name it as a "
                           "mask or depth), or move it out of the folder")
    return unique_ids(located)


def read_photos(root: Path) -> list[Case]:
    """Every image of a folder without a prompts table, as a case named by its file (cut out, captioned and
    given depth when the run preprocesses it)."""
    photos = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return unique_ids([(Case(check_case_id(p.stem, str(p)), p, recenter=True), str(p)) for p in photos])


def _inside(root: Path, name: str, where: str) -> Path:
    """root / name for a file named in a table; refused unless it stays inside the dataset folder."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetError(f"{where}: '{name}' leaves the dataset folder {root}: name files inside it")
    return path


def read_synthetic(cache_dir: Path | None = None, size: int = 256,
                   elevations: tuple[float, ...] | None = None) -> list[Case]:
    """Every c123.synthetic scene seen from a reference camera, rendered (RGBA + 16-bit depth PNGs) into a
    cache folder with its table SYNTHETIC_TABLE, then read back by `read_synthetic_folder`. elevations None:
    the `synthetic` dataset, each case named by its scene and rendered at elevation 0; a tuple
    (SYNTHETIC_ELEVATIONS): `synthetic-elevated`, each scene at each elevation, cases `<scene>@<elevation>`."""
    import c123.cameras  # imported here: the file layouts need no torch
    import c123.synthetic

    # renders depend on the scene, camera and render code: a change there must not reuse stale ground truth
    source = "".join(inspect.getsource(m) for m in (c123.synthetic, c123.cameras, render_reference)) + str(size)
    key = hashlib.sha256((source + ("" if elevations is None else repr(elevations))).encode()).hexdigest()[:12]
    base = Path(cache_dir).expanduser() if cache_dir else cache_root()
    folder = base / ("synthetic" if elevations is None else "synthetic-elevated") / key
    lines = ["case\tscene\televation\tprompt"]
    for name in c123.synthetic.SCENES:
        for elevation in (0.0,) if elevations is None else elevations:
            case_id = name if elevations is None else f"{name}@{elevation:g}"
            rgba, depth = folder / f"{case_id}_rgba.png", folder / f"{case_id}_depth.png"
            if not (_readable(rgba) and _readable(depth)):  # missing, or damaged in the cache: rendered again
                render_reference(name, size, rgba, depth, elevation)
            prompt = SYNTHETIC_PROMPTS.get(name, f"a synthetic {name} object")
            lines.append(f"{case_id}\t{name}\t{elevation:g}\t{prompt}")
    table = folder / SYNTHETIC_TABLE
    text = "\n".join(lines) + "\n"
    if not table.is_file() or table.read_text(encoding="utf-8") != text:
        write_atomic(table, text)
    # synthetic gives each case its (official, true) elevation 0; synthetic-elevated keeps its truth for the
    # oracle and the report only, so a run assumes what its preset or the flow's `elevation` says (verify: the
    # estimate; `elevation=true`: the truth; `elevation=0`: the official assumption)
    return read_synthetic_folder(folder, give_elevation=elevations is None)


SYNTHETIC_TABLE = "synthetic_cases.tsv"
"""The table of a synthetic folder: case, scene (c123.synthetic.SCENES), elevation (degrees its reference was
rendered from, at azimuth 0: the true input camera), prompt."""
SYNTHETIC_ELEVATIONS = (0.0, 15.0, 30.0)
"""The reference elevations of `synthetic-elevated` (SyncDreamer's GSO renders are at 30)."""


def read_synthetic_folder(root: Path, give_elevation: bool = True) -> list[Case]:
    """A synthetic folder (`read_synthetic` writes them): SYNTHETIC_TABLE and per case `<case>_rgba.png`,
    `<case>_depth.png`; each case's ground truth is its scene, its true elevation the table's; give_elevation:
    the run also assumes it (else the preset's default or the flow's `elevation` decides)."""
    from c123.synthetic import SCENES

    rows = read_case_table(root / SYNTHETIC_TABLE, "case, scene, elevation, prompt", {"case", "scene", "elevation"},
                           "write case, scene, elevation and prompt (or let `c123 evaluate synthetic-elevated` "
                           "render the folder again)")
    located = []
    for row in rows:
        case_id = check_case_id(row["case"], row.where)
        if row["scene"] not in SCENES:
            raise DatasetError(f"{row.where}: scene {row['scene']!r} is not a synthetic scene: use one of "
                               f"{', '.join(SCENES)}")
        fix = "write the degrees its reference was rendered from (the ground truth of a synthetic case)"
        elevation = elevation_value(row["elevation"], row.where, fix, DatasetError)
        if elevation is None or elevation == ELEVATION_ESTIMATE:
            raise DatasetError(f"{row.where}: the elevation is {'blank' if elevation is None else 'not a number'}: "
                               f"{fix}")
        rgba, depth = root / f"{case_id}_rgba.png", root / f"{case_id}_depth.png"
        absent = [p.name for p in (rgba, depth) if not p.is_file()]
        if absent:
            raise DatasetError(f"{row.where} names {', '.join(absent)}, which is not in {root}: render the folder "
                               "again with `c123 evaluate synthetic-elevated` or remove the row")
        located.append((Case(case_id, rgba, depth, None, row.get("prompt"), "synthetic", scene=row["scene"],
                             ref_elevation=elevation if give_elevation else None, true_elevation=elevation),
                         row.where))
    return unique_ids(located)


def _readable(path: Path) -> bool:
    """Whether a cached PNG is there and decodes whole."""
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def render_reference(name: str, size: int, rgba_path: Path, depth_path: Path, elevation: float = 0.0) -> None:
    """Render one scene from the default reference camera raised to `elevation` degrees (azimuth 0, the preset's
    radius and field of view); depth normalised to 1..65535 where covered, else 0."""
    from c123.cameras import reference_camera
    from c123.config import CameraConfig
    from c123.synthetic import get_scene

    out = get_scene(name).render(reference_camera(CameraConfig(ref_polar=90.0 - elevation)), size, size)
    rgba = (out["rgba"][0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    # depth is defined wherever a pixel is partly covered, which includes every pixel with alpha > 0.5
    depth, covered = out["depth"][0].numpy(), out["rgba"][0, ..., 3].numpy() > 0
    lo, hi = depth[covered].min(), depth[covered].max()
    depth16 = np.where(covered, 1 + (depth - lo) / max(hi - lo, 1e-8) * 65534, 0).round().astype(np.uint16)
    for path, img in ((rgba_path, Image.fromarray(rgba, "RGBA")), (depth_path, Image.fromarray(depth16))):
        with atomic_path(path) as tmp:  # a concurrent reader never sees half a file
            img.save(tmp, format="PNG")


GSO_TABLE = "gso_cases.tsv"
"""The table of a GSO-layout folder: case, elevation (degrees of the input view), rotation (degrees about z that
face the mesh to the renders: SyncDreamer's get_gt_rotate_angle), prompt."""
GSO_VIEWS = 16


def read_gso(root: Path) -> list[Case]:
    """SyncDreamer's GSO evaluation layout: per case `<case>/model.obj` (the scanned mesh as published) and
    `<case>/gt/NNN.png` + `NNN-depth.png` (its 16 renders at camera-16's cameras, NNN = 000..015); the input is
    view 000 (azimuth 0, elevation 30), already centred; the table gives each case's elevation and rotation."""
    from c123.metrics import GsoTruth

    rows = read_case_table(root / GSO_TABLE, "case, elevation, rotation, prompt", {"case", "elevation", "rotation"},
                           "re-download the dataset with `c123 fetch gso --root DIR`")
    located = []
    for row in rows:
        case_id = check_case_id(row["case"], row.where)
        folder = root / case_id
        fix = "write the degrees of the input view 000 (30 for SyncDreamer's renders)"
        try:  # the renders' truth: numbers ('estimate' too is refused here)
            elevation, rotation = float(row["elevation"]), float(row["rotation"])
        except ValueError:
            raise DatasetError(f"{row.where}: elevation and rotation must be numbers (degrees), got "
                               f"{row['elevation']!r} and {row['rotation']!r}: fix that line") from None
        elevation = elevation_value(elevation, row.where, fix, DatasetError)
        needed = [folder / "model.obj"] + [folder / "gt" / f"{k:03}{s}.png" for k in range(GSO_VIEWS)
                                           for s in ("", "-depth")]
        absent = [str(p.relative_to(root)) for p in needed if not p.is_file()]
        if absent:
            raise DatasetError(f"{row.where}: {', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''} not in "
                               f"{root}: re-download the dataset with `c123 fetch gso --root DIR`")
        located.append((Case(case_id, folder / "gt" / "000.png", prompt=row.get("prompt"), category="gso",
                             ref_elevation=elevation, true_elevation=elevation,
                             gso=GsoTruth(str(folder / "model.obj"), str(folder / "gt"), rotation)), row.where))
    return unique_ids(located)


def detect(root: Path) -> list[Case]:
    """The cases of a folder in whichever layout it has; DatasetError naming the layouts when none fits."""
    if (root / GSO_TABLE).is_file():
        return read_gso(root)
    if (root / SYNTHETIC_TABLE).is_file():
        return read_synthetic_folder(root)
    table = next((t for t in (root / "prompts.tsv", root / "prompts.csv") if t.is_file()), None)
    header = table_columns(table) if table else set()
    if "file" in header:
        return read_images(root, table)
    flat = table is not None and table.suffix == ".tsv" and bool(header & {"consistent123_name", "case"})
    if flat and any(root.glob("*_rgba.png")):
        return read_flat(root)
    if root.is_dir() and any((p / "image.png").is_file() for p in root.iterdir()):
        return read_original(root)
    if flat:
        return read_flat(root)  # names the missing files
    if table is None and root.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        return read_photos(root)
    if table is not None and not header:  # the layout's table is there but says nothing
        check_has_rows(table, [], "file, prompt")
    raise DatasetError(
        f"{root} matches no dataset layout: expected <case>_rgba.png + prompts.tsv (case, prompt), "
        "<folder>/image.png + mask.png, images + prompts.tsv/csv (file, prompt), or a folder of photos; "
        "download a benchmark with `c123 fetch realfusion15 --root DIR`")
