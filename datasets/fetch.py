"""`c123 fetch NAME --root DIR`: download RealFusion15, C10 or GSO from their upstream repositories into DIR/NAME.

Images come from Consistent123 (`data/realfusion15/`, `data/C10/` at commit 6df4059e) and, for RealFusion15's
original photos and masks, from RealFusion (`examples/natural-images/` at commit 3ec69d05). Neither repository
publishes a prompt table, so prompts.tsv is written from the copy below (the authors' RealFusion15 prompts;
C10 prompts written for this project). The result has the layout `load_dataset` reads.

GSO (SyncDreamer's evaluation set): the one object SyncDreamer publishes in its repository (`eval_examples/`
at commit cc373c8e: the chicken's mesh and 16 renders with depth) in the `gso` layout (datasets/layouts.py
read_gso). The 30-object set is on SyncDreamer's OneDrive (README "Evaluation", GSO_ONEDRIVE), which no script
can read: lay it out as BASE/gso/<case>/model.obj + gt/NNN.png + gt/NNN-depth.png on a mirror and pass
`--base-url BASE --cases NAME ...` (rotations from c123.metrics.SD_ROTATIONS, elevation 30).
"""

from __future__ import annotations

import csv
import io
import urllib.error
import urllib.request
from pathlib import Path

from c123.atomic import write_atomic
from c123.cli import OneLineParser
from c123.errors import DatasetError

CONSISTENT123 = "https://raw.githubusercontent.com/lyk412/Consistent123/6df4059e/data"
REALFUSION = "https://raw.githubusercontent.com/lukemelas/realfusion/3ec69d05/examples/natural-images"

PROMPTS = {
    "realfusion15": """\
consistent123_name	realfusion_folder	magic123_folder	realfusion_textual_inversion_token	consistent123_prompt
banana	banana_1	banana	_banana_1_	a half-peeled yellow banana
bird	bird_2	blue_bird	_bird_2_	a small blue-brown bird with a pointed mouth
cactus	cactus_1	cactus	_cactus_1_	a green cactus in a brown pot
cake	cake_2	barbie_cake	_cake_2_	a Barbie doll in a pink dress
cat_statue	cat_statue	cat_statue	_cat_statue_	a cat statue in colorful suit
cheery	cherry_1	two_cherries	_cherry_1_	a red cheery
colorful_teapot	colorful_teapot	colorful_teapot	_colorful_teapot_	a colorful teapot
donut	donut_1	two_donuts	_donut_1_	two pink doughnuts next to each other
dragon_statue1	dragon_statue_1	metal_dragon_statue	_dragon_statue_1_	a silver dragon statue with long horns and large wings
dragon_statue2	dragon_statue_2	stone_dragon_statue	_dragon_statue_2_	a silver dragon statue with short horns and small wings
fish_real_nemo	fish_real_nemo	fish_real_nemo	_fish_real_nemo_	a clownfish
horse_watercolor_2	horse_watercolor_2	watercolor_horse	_horse_watercolor_2_	a watercolor of a brown horse
microphone	microphone_1	microphone	_microphone_1_	a black microphone
sparrow	bird_sparrow	bird_sparrow	_bird_sparrow_	a grey sparrow
teddy_bear	teddy_bear_1	teddy_bear	_teddy_bear_1_	a brown teddy_bear bear sitting on a ground
""",
    "c10": """\
case	category	prompt
07	fruit	a bunch of yellow bananas
12	ball	a brown American football with white laces
23	furniture	a light wooden cabinet with potted plants on top
29	vehicle	a blue and white sport motorcycle
34	scene	a beige two-story villa with columns
43	biont	a grey elephant raising its trunk
58	food	french fries in a red carton
SpongeBob	cartoon	a yellow cartoon sponge character waving its arms
avatar	statue	a bust of a blue-skinned alien with pointed ears
yellow_shoe	costume	a yellow high-top sneaker with red laces
""",
}
SYNCDREAMER = "https://raw.githubusercontent.com/liuyuan-pal/SyncDreamer/cc373c8ed0ef134149c5019e2384d2264649d0a6"
GSO_ONEDRIVE = ("https://connecthkuhk-my.sharepoint.com/:f:/g/personal/yuanly_connect_hku_hk/"
                "EjYHbCBnV-VPjBqNHdNulIABq9sYAEpSz4NPLDI72a85vw")
GSO_ELEVATION = 30.0
"""Elevation (degrees) of SyncDreamer's GSO input views (camera-16's view 000)."""


def gso_table(cases: list[str]) -> str:
    """gso_cases.tsv for these GSO object names (SyncDreamer's rotations; elevation 30)."""
    from c123.metrics import SD_ROTATIONS

    rows = [f"{c}\t{GSO_ELEVATION:g}\t{SD_ROTATIONS.get(c, 0.0):g}\ta {c.replace('_', ' ')}" for c in cases]
    return "case\televation\trotation\tprompt\n" + "".join(r + "\n" for r in rows)


def gso_files(cases: list[str], base_url: str | None) -> list[tuple[str, str]]:
    """(path inside DIR/gso, URL) of each case's mesh and 16 renders with depth."""
    out = []
    for case in cases:
        if base_url:
            src = f"{base_url.rstrip('/')}/gso/{case}"
            mesh, gt = f"{src}/model.obj", f"{src}/gt"
        elif case == "chicken":
            mesh, gt = f"{SYNCDREAMER}/eval_examples/chicken-mesh/meshes/model.obj", f"{SYNCDREAMER}/eval_examples/chicken-gt"
        else:
            raise DatasetError(f"GSO object '{case}' is only on SyncDreamer's OneDrive ({GSO_ONEDRIVE}): mirror it "
                               "as BASE/gso/<case>/model.obj + gt/NNN.png + gt/NNN-depth.png and pass --base-url BASE")
        out.append((f"{case}/model.obj", mesh))
        out += [(f"{case}/gt/{k:03}{s}.png", f"{gt}/{k:03}{s}.png") for k in range(16) for s in ("", "-depth")]
    return out


_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff"}


def files(name: str, base_url: str | None = None) -> list[tuple[str, str]]:
    """(path inside DIR/NAME, URL) of every file of a dataset; base_url mirrors that layout instead."""
    rows = list(csv.DictReader(io.StringIO(PROMPTS[name]), delimiter="\t"))
    out = []
    if name == "realfusion15":
        for row in rows:
            case, folder = row["consistent123_name"], row["realfusion_folder"]
            out += [(f"{case}{s}.png", f"{CONSISTENT123}/realfusion15/{case}{s}.png")
                    for s in ("_rgba", "_depth", "_normal")]
            out += [(f"{case}.png", f"{REALFUSION}/{folder}/image.png")]  # the photo itself, byte for byte
            out += [(f"original/{folder}/{f}", f"{REALFUSION}/{folder}/{f}") for f in ("image.png", "mask.png")]
    else:
        for row in rows:
            case = row["case"]
            out += [(f"{case}{s}", f"{CONSISTENT123}/C10/{case}{s}")
                    for s in (".jpg", "_rgba.png", "_depth.png", "_normal.png")]
    if base_url:
        out = [(rel, f"{base_url.rstrip('/')}/{name}/{rel}") for rel, _ in out]
    return out


def fetch(name: str, root: str | Path, base_url: str | None = None, timeout: float = 60.0,
          gso_cases: list[str] | None = None) -> Path:
    """Download dataset `name` into root/name (files already there are kept); returns that folder."""
    if name not in PROMPTS and name != "gso":
        raise DatasetError(f"cannot fetch '{name}': use one of {', '.join([*PROMPTS, 'gso'])}")
    dest = Path(root).expanduser() / name
    if name == "gso":
        cases = list(gso_cases or ["chicken"])
        for rel, url in gso_files(cases, base_url):
            if not (dest / rel).is_file():
                write_atomic(dest / rel, _download(url, timeout))
        write_atomic(dest / "gso_cases.tsv", gso_table(cases))
        return dest
    for rel, url in files(name, base_url):
        if not (dest / rel).is_file():
            write_atomic(dest / rel, _download(url, timeout))  # an interrupted fetch never leaves half a file
    write_atomic(dest / "prompts.tsv", PROMPTS[name])
    return dest


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise DatasetError(f"download of {url} failed ({reason}): check the connection, or pass --base-url "
                           "of a mirror with the same layout") from err
    magic = _MAGIC.get(Path(url).suffix)
    if magic and not data.startswith(magic):
        raise DatasetError(f"{url} is not an image (a Git LFS pointer or an error page?): pass --base-url of a "
                           "mirror holding the files")
    return data


def main(argv: list[str] | None = None) -> int:
    """`c123 fetch NAME --root DIR [--base-url URL]`."""
    from c123_pipeline.datasets.registry import load_dataset

    parser = OneLineParser(prog="c123 fetch", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted([*PROMPTS, "gso"]))
    parser.add_argument("--root", default="~/.cache/c123/data", help="data root (use it as C123_DATA)")
    parser.add_argument("--base-url", help="mirror laid out as BASE/NAME/<files>")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per file")
    parser.add_argument("--cases", nargs="+", metavar="NAME", help="gso: the objects (default: chicken, the one "
                        "SyncDreamer's repository holds; the others need --base-url)")
    args = parser.parse_args(argv)
    dest = fetch(args.name, args.root, args.base_url, args.timeout, args.cases)
    print(f"{args.name}: {len(load_dataset(dest).cases)} cases in {dest}")
    return 0
