"""Readers of the folder layouts the benchmarks come in; each returns a list of `Case`.

- flat:      `<case>_rgba.png` (+ `<case>_depth.png`) and prompts.tsv, as Consistent123 publishes RealFusion15
             (columns consistent123_name, consistent123_prompt) and C10 (columns case, category, prompt)
- original:  RealFusion's release, `<folder>/image.png + mask.png`; prompts from a prompts.tsv beside or above
- images:    any images + prompts.tsv / prompts.csv with columns file, prompt (optional category, mask, depth)
- synthetic: the reference view of each c123.synthetic scene, rendered into a cache folder
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import os
from pathlib import Path

import numpy as np
from PIL import Image

from c123.errors import DatasetError
from datasets.case import Case

SYNTHETIC_PROMPTS = {
    "toy": "a small multicoloured toy figure with one raised arm and a pointed nose",
    "blocks": "a wooden slab with a blue tower, a red ball and a green log on it",
}


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a .tsv or .csv file with a header line (blank rows skipped)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path} cannot be read ({type(err).__name__}): re-download the dataset") from err
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in rows if any(row.values())]


def read_flat(root: Path) -> list[Case]:
    """`<case>_rgba.png`, `<case>_depth.png` and prompts.tsv (RealFusion15 or C10 columns)."""
    table = root / "prompts.tsv"
    rows = read_table(table)
    header = set(rows[0]) if rows else set()
    id_col = "consistent123_name" if "consistent123_name" in header else "case"
    prompt_col = "consistent123_prompt" if "consistent123_prompt" in header else "prompt"
    if {id_col, prompt_col} - header:
        raise DatasetError(f"{table} lacks columns {id_col} and {prompt_col} (has {', '.join(sorted(header))}): "
                           "re-download the dataset with `c123 fetch NAME --root DIR`")
    cases, missing = [], []
    for row in rows:
        rgba, depth = root / f"{row[id_col]}_rgba.png", root / f"{row[id_col]}_depth.png"
        if not rgba.is_file():
            missing.append(rgba.name)
            continue
        cases.append(Case(row[id_col], rgba, depth if depth.is_file() else None, None, row[prompt_col],
                          row.get("category") or None))
    if missing:
        raise DatasetError(f"{root} lacks {', '.join(missing)} listed in prompts.tsv: re-download the dataset "
                           "with `c123 fetch NAME --root DIR`")
    return cases


def read_original(root: Path) -> list[Case]:
    """RealFusion's `<folder>/image.png + mask.png`, recentred on load; names/prompts from a prompts.tsv."""
    names = {}
    for table in (root / "prompts.tsv", root.parent / "prompts.tsv"):
        if table.is_file():
            for row in read_table(table):
                key = row.get("realfusion_folder") or row.get("case", "")
                names[key] = (row.get("consistent123_name") or key,
                              row.get("consistent123_prompt") or row.get("prompt", ""))
            break
    cases = []
    for folder in sorted(p for p in root.iterdir() if (p / "image.png").is_file() and (p / "mask.png").is_file()):
        case_id, prompt = names.get(folder.name, (folder.name, ""))
        cases.append(Case(case_id, folder / "image.png", None, folder / "mask.png", prompt, recenter=True))
    return cases


def read_images(root: Path, table: Path) -> list[Case]:
    """Images listed in a prompts table (file, prompt; optional category, mask, depth), recentred on load."""
    rows = read_table(table)
    header = set(rows[0]) if rows else set()
    if {"file", "prompt"} - header:
        raise DatasetError(f"{table} needs columns file and prompt (has {', '.join(sorted(header)) or 'none'})")
    cases, missing = [], []
    for row in rows:
        paths = {k: root / row[k] for k in ("file", "mask", "depth") if row.get(k)}
        missing += [p.name for p in paths.values() if not p.is_file()]
        cases.append(Case(Path(row["file"]).stem, paths["file"], paths.get("depth"), paths.get("mask"),
                          row["prompt"], row.get("category") or None, recenter=True))
    if missing:
        raise DatasetError(f"{root} lacks {', '.join(missing)} listed in {table.name}: fix the table or the "
                           "folder")
    return cases


def read_synthetic(cache_dir: Path | None = None, size: int = 256) -> list[Case]:
    """Every c123.synthetic scene seen from the reference camera: RGBA + 16-bit depth PNGs, cached."""
    import c123.cameras  # imported here: the file layouts need no torch
    import c123.synthetic

    # renders depend on the scene, camera and render code: a change there must not reuse stale ground truth
    source = "".join(inspect.getsource(m) for m in (c123.synthetic, c123.cameras, _render_reference)) + str(size)
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    base = Path(cache_dir or os.environ.get("C123_CACHE", "~/.cache/c123")).expanduser()
    folder = base / "synthetic" / key
    cases = []
    for name in c123.synthetic.SCENES:
        rgba, depth = folder / f"{name}_rgba.png", folder / f"{name}_depth.png"
        if not (rgba.is_file() and depth.is_file()):
            _render_reference(name, size, rgba, depth)
        cases.append(Case(name, rgba, depth, None, SYNTHETIC_PROMPTS.get(name, f"a synthetic {name} object"),
                          "synthetic", scene=name))
    return cases


def _render_reference(name: str, size: int, rgba_path: Path, depth_path: Path) -> None:
    """Render one scene at the default reference camera; depth normalised to 1..65535 where covered, else 0."""
    from c123.cameras import reference_camera
    from c123.config import CameraConfig
    from c123.synthetic import get_scene

    out = get_scene(name).render(reference_camera(CameraConfig()), size, size)
    rgba = (out["rgba"][0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    # depth is defined wherever a pixel is partly covered, which includes every pixel with alpha > 0.5
    depth, covered = out["depth"][0].numpy(), out["rgba"][0, ..., 3].numpy() > 0
    lo, hi = depth[covered].min(), depth[covered].max()
    depth16 = np.where(covered, 1 + (depth - lo) / max(hi - lo, 1e-8) * 65534, 0).round().astype(np.uint16)
    rgba_path.parent.mkdir(parents=True, exist_ok=True)
    # write under a temporary name and rename, so a concurrent reader never sees half a file
    for path, img in ((rgba_path, Image.fromarray(rgba, "RGBA")), (depth_path, Image.fromarray(depth16))):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        img.save(tmp, format="PNG")
        os.replace(tmp, path)


def detect(root: Path) -> list[Case]:
    """The cases of a folder in whichever layout it has; DatasetError naming the layouts when none fits."""
    table = next((t for t in (root / "prompts.tsv", root / "prompts.csv") if t.is_file()), None)
    rows = read_table(table) if table else []
    header = set(rows[0]) if rows else set()
    if "file" in header:
        return read_images(root, table)
    flat = table is not None and table.suffix == ".tsv" and bool(header & {"consistent123_name", "case"})
    if flat and any(root.glob("*_rgba.png")):
        return read_flat(root)
    if root.is_dir() and any((p / "image.png").is_file() for p in root.iterdir()):
        return read_original(root)
    if flat:
        return read_flat(root)  # names the missing files
    raise DatasetError(
        f"{root} matches no dataset layout: expected <case>_rgba.png + prompts.tsv (case, prompt), "
        "<folder>/image.png + mask.png, or images + prompts.tsv/csv (file, prompt); download a benchmark "
        "with `c123 fetch realfusion15 --root DIR`")
