"""Hostile and mistaken input to `c123 evaluate`, as a user types it: each is one line naming the file or
parameter and the fix, refused before anything is computed, and nothing outside the run folder changes
(here: nothing at all changes, since the run is refused before its folder is made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline_support import SESSION  # noqa: F401  (sets the test environment first)

from c123.errors import DatasetError
from c123_pipeline.cli import main
from c123_pipeline.datasets.registry import load_dataset
from fixtures_runs import make_run

HEADER = "case\tcategory\tprompt\n"


def image(path: Path) -> Path:
    img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img.paste((200, 60, 60, 255), (4, 4, 12, 12))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def flat(root: Path, table: str, ids=("apple", "pear"), encoding="utf-8") -> Path:
    """A flat dataset folder: <id>_rgba.png for each id and prompts.tsv with `table` as its text."""
    for case_id in ids:
        image(root / f"{case_id}_rgba.png")
    (root / "prompts.tsv").write_bytes(table.encode(encoding))
    return root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def evaluate(capsys, *args) -> tuple[int, str]:
    code = main(["evaluate", *map(str, args)])
    return code, capsys.readouterr().err.strip()


@pytest.fixture()
def sandbox(tmp_path):
    """tmp_path/data (datasets), tmp_path/escape/evil_rgba.png (a file an attacker points at), tmp_path/out."""
    image(tmp_path / "escape" / "evil_rgba.png")
    return tmp_path


def refused(capsys, sandbox: Path, *args) -> str:
    """Run `c123 evaluate DATASET --preset tiny --out sandbox/run ...`: exit 2, one line, nothing changed."""
    before = tree(sandbox)
    code, err = evaluate(capsys, *args, "--preset", "tiny", "--out", sandbox / "run")
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: "), err
    assert tree(sandbox) == before and not (sandbox / "run").exists()
    assert not (sandbox / "escape" / "evil").exists()
    return err[len("error: "):]


@pytest.mark.parametrize("case_id", ["../escape/evil", "{sandbox}/escape/evil", "sub/evil", "..", ".hidden", "a b",
                                     "x" * 101])
def test_a_case_id_is_a_name_never_a_path(capsys, sandbox, case_id):
    case_id = case_id.format(sandbox=sandbox)
    data = flat(sandbox / "data", f"{HEADER}apple\tfruit\tan apple\n{case_id}\tfruit\tevil\n", ids=["apple"])
    message = refused(capsys, sandbox, data)
    assert message.startswith(f"{data / 'prompts.tsv'} line 3: case id {case_id!r} is not a plain name"), message


def test_a_file_named_outside_the_dataset_folder_is_refused(capsys, sandbox):
    data = sandbox / "data"
    image(data / "apple.png")
    (data / "prompts.csv").write_text("file,prompt\napple.png,an apple\n../escape/evil_rgba.png,evil\n")
    message = refused(capsys, sandbox, data)
    assert message == (f"{data / 'prompts.csv'} line 3: '../escape/evil_rgba.png' leaves the dataset folder {data}: "
                       "name files inside it")


def test_duplicate_ids_short_rows_and_images_without_a_row_name_file_and_line(capsys, sandbox):
    data = flat(sandbox / "data", f"{HEADER}apple\tfruit\tan apple\npear\tfruit\ta pear\napple\tfruit\tagain\n")
    assert refused(capsys, sandbox, data).startswith(
        f"{data / 'prompts.tsv'} line 4: case id 'apple' repeats {data / 'prompts.tsv'} line 2: give each case")
    flat(data, f"{HEADER}apple\tfruit\tan apple\npear\tfruit\n")
    assert refused(capsys, sandbox, data).startswith(
        f"{data / 'prompts.tsv'} line 3 has 2 fields but the header has 3 (case, category, prompt): fix that line")
    flat(data, f"{HEADER}apple\tfruit\tan apple\n", ids=["apple", "pear", "plum"])
    assert refused(capsys, sandbox, data).startswith(
        f"{data / 'prompts.tsv'} has no row for pear_rgba.png, plum_rgba.png: add a row")


def test_quotes_are_plain_characters_and_a_byte_order_mark_is_dropped(sandbox):
    data = flat(sandbox / "data", f"\ufeff{HEADER}apple\tfruit\ta \"big apple\npear\tfruit\ta 'pear\"\n")
    cases = load_dataset(data).cases
    assert [(c.id, c.category, c.prompt) for c in cases] == [("apple", "fruit", 'a "big apple'),
                                                             ("pear", "fruit", "a 'pear\"")]
    utf16 = flat(sandbox / "utf16", f"{HEADER}apple\tfruit\tan apple\n", ids=["apple"], encoding="utf-16")
    with pytest.raises(DatasetError, match=r"prompts.tsv is not UTF-8 text \(byte 0 is b'\\xff'\): save it as UTF-8"):
        load_dataset(utf16)


def test_empty_case_list_and_impossible_parameters(capsys, sandbox):
    data = flat(sandbox / "data", f"{HEADER}apple\tfruit\tan apple\npear\tfruit\ta pear\n")
    assert refused(capsys, sandbox, data, "--cases", "").startswith("--cases (the `cases` parameter) names no case")
    assert refused(capsys, sandbox, data, "--cases", ",").startswith("--cases (the `cases` parameter) names no case")
    assert refused(capsys, sandbox, data, "--actors", "-3") == (
        "c123 evaluate: argument --actors: -3 is below 1 (see c123 evaluate --help)")
    assert refused(capsys, sandbox, data, "--retries", "-1").startswith("c123 evaluate: argument --retries")
    assert refused(capsys, sandbox, data, "--seed", "-1").startswith("config seed=-1 must be in [0, 4294967295]")
    assert refused(capsys, sandbox, data, "--set", "train.ref_every=0").startswith(
        "config train.ref_every=0 must be >= 1: e.g. --set train.ref_every=4")
    assert refused(capsys, sandbox, data, "--threshold", "psnr=nan") == (
        "threshold 'psnr=nan' must be a finite number >= 0 (the allowed worsening): e.g. psnr=0.5")
    assert refused(capsys, sandbox, data, "--protocol", "best").startswith("unknown metric protocol 'best'")
    assert refused(capsys, sandbox, data, "--protocol", "magic123", "--set", "train.eval_views=8") == (
        "metric protocol magic123 scores 100 orbit views but --set train.eval_views=8 asks for 8: drop that "
        "override or use --protocol c123")


def test_a_baseline_that_cannot_be_compared_is_refused_before_any_compute(capsys, sandbox):
    data = flat(sandbox / "data", f"{HEADER}apple\tfruit\tan apple\npear\tfruit\ta pear\n")
    other = make_run(sandbox / "runs", "c10-nightly")  # a finished run of C10, not of this dataset
    assert refused(capsys, sandbox, data, "--baseline", other) == (
        f"baseline {other} is a run of c10, not data: pass a run folder of the same dataset")
    missing = sandbox / "runs" / "nope"
    assert refused(capsys, sandbox, data, "--baseline", missing) == (
        f"no per_case.parquet in {missing}: pass a finished benchmark run folder")
    same = make_run(sandbox / "runs", "data-old", cases={"plum": "fruit"})
    _relabel_dataset(same, "data")  # a run of this dataset, but of other cases
    assert refused(capsys, sandbox, data, "--baseline", same).startswith(
        f"baseline {same} shares no case with this run (apple, pear): pass a run of the same cases")


def test_missing_metric_weights_are_one_line_with_the_download_command(tmp_path):
    """The magic123 protocol's CLIP (ViT-bigG-14) is not on this machine: refused before compute (a fresh
    Hugging Face cache in a subprocess, as a user without the weights has)."""
    import os
    import subprocess
    import sys

    data = flat(tmp_path / "data", f"{HEADER}apple\tfruit\tan apple\n", ids=["apple"])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "c123_pipeline.cli", "evaluate", str(data), "--preset", "tiny",
                           "--protocol", "magic123", "--out", str(tmp_path / "run")], env=env, capture_output=True,
                          text=True, timeout=600)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0, err
    assert err.startswith("error: CLIP-similarity metric (protocol magic123): model "
                          "'laion/CLIP-ViT-bigG-14-laion2B-39B-b160k' is not in the local Hugging Face cache")
    assert "hf download laion/CLIP-ViT-bigG-14-laion2B-39B-b160k" in err and not (tmp_path / "run").exists()


def test_a_run_folder_of_another_dataset_is_refused(capsys, sandbox):
    data = flat(sandbox / "data", f"{HEADER}apple\tfruit\tan apple\n", ids=["apple"])
    (sandbox / "run").mkdir()
    (sandbox / "run" / "run.json").write_text(json.dumps({"run_id": "x", "dataset": "c10", "preset": "tiny"}))
    before = tree(sandbox)
    code, err = evaluate(capsys, data, "--preset", "tiny", "--out", sandbox / "run")
    assert code == 2 and err == (f"error: {sandbox / 'run'} holds a run of dataset 'c10', not 'data': pass another "
                                 "--out folder")
    assert tree(sandbox) == before


def test_a_second_run_on_a_busy_run_folder_is_refused(capsys, sandbox):
    from c123_pipeline.tasks.run_folder import RunLock

    data = flat(sandbox / "data", f"{HEADER}apple\tfruit\tan apple\n", ids=["apple"])
    with RunLock(sandbox / "run"):  # as a run in another process holds it
        code, err = evaluate(capsys, data, "--preset", "tiny", "--out", sandbox / "run")
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"error: {sandbox / 'run'} is in use by another run (pid ") and err.endswith(
        "wait for it to end or pass another --out")
    assert sorted(p.name for p in (sandbox / "run").iterdir()) == [".lock"]


def test_paths_written_must_stay_inside_the_run_folder(tmp_path):
    from c123.errors import C123Error
    from c123_pipeline.tasks.run_folder import inside

    assert inside(tmp_path, "cases/consistent123/07/seed0") == tmp_path.resolve() / "cases/consistent123/07/seed0"
    for bad in ("cases/../../x", "/etc/x", ".."):
        with pytest.raises(C123Error, match="leaves the run folder"):
            inside(tmp_path, bad)


def _relabel_dataset(run: Path, dataset: str) -> None:
    import pandas as pd

    df = pd.read_parquet(run / "per_case.parquet")
    df["dataset"] = dataset
    df.to_parquet(run / "per_case.parquet", index=False)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "dataset": dataset}))
