"""Dataset layouts and registry on the real RealFusion15 / C10 folders, errors, and fetch from a local mirror."""

import filecmp
import functools
import http.server
import threading

import numpy as np
import pytest
from PIL import Image

from c123.errors import DatasetError
from c123_pipeline.datasets.fetch import fetch, files, main as fetch_main
from c123_pipeline.datasets.registry import filter_cases, load_dataset
from data_support import DATA as SHARED, needs_dataset

needs_data = needs_dataset("c10")
C10_CATEGORIES = {"ball", "biont", "furniture", "cartoon", "fruit", "statue", "food", "vehicle", "costume",
                  "scene"}


@needs_data
def test_realfusion15_loads_15_cases_with_prompts():
    ds = load_dataset("realfusion15")
    assert ds.name == "realfusion15" and len(ds) == 15
    prompts = {c.id: c.prompt for c in ds.cases}
    assert prompts["banana"] == "a half-peeled yellow banana"
    assert prompts["cheery"] == "a red cheery"                     # typo kept as published
    assert all(c.depth_path and c.depth_path.is_file() and c.category is None for c in ds.cases)
    inp = ds.cases[0].load()
    assert inp.rgba.shape == (512, 512, 4) and inp.depth.shape == (512, 512)
    assert (inp.rgba == np.asarray(Image.open(ds.cases[0].rgba_path))).all()   # the authors' input as is


@needs_data
def test_c10_loads_10_cases_with_categories():
    ds = load_dataset("c10", data_root=SHARED)
    assert len(ds) == 10 and {c.category for c in ds.cases} == C10_CATEGORIES
    case = next(c for c in ds.cases if c.id == "07")
    assert case.prompt == "a bunch of yellow bananas" and case.category == "fruit"
    assert case.load().rgba.shape == (256, 256, 4)
    assert case.load(size=128).depth.shape == (128, 128)


@needs_data
def test_realfusion_original_layout_is_recentred_on_load():
    ds = load_dataset("realfusion15-original")
    assert len(ds) == 15 and {c.id for c in ds.cases} == {c.id for c in load_dataset("realfusion15").cases}
    sparrow = next(c for c in ds.cases if c.id == "sparrow")
    assert sparrow.recenter and sparrow.mask_path.name == "mask.png" and sparrow.prompt == "a grey sparrow"


@needs_data
def test_filter_cases():
    ds = load_dataset("c10")
    assert [c.id for c in filter_cases(ds, "avatar, 1*").cases] == ["12", "avatar"]
    assert filter_cases(ds, None) is ds
    with pytest.raises(DatasetError, match="no case of 'c10' matches nope"):
        filter_cases(ds, ["nope"])


def test_missing_named_dataset_says_how_to_fetch(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"dataset 'c10' not found.*c123 fetch c10 --root DIR"):
        load_dataset("c10", data_root=tmp_path)
    monkeypatch.setenv("C123_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetError, match="elsewhere/realfusion15"):
        load_dataset("realfusion15")
    with pytest.raises(DatasetError, match="unknown dataset 'nowhere'"):
        load_dataset("nowhere")


def test_malformed_folders(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    with pytest.raises(DatasetError, match="matches no dataset layout"):
        load_dataset(tmp_path / "junk")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "prompts.tsv").write_text("case\tcategory\tprompt\napple\tfruit\ta red apple\npear\tfruit\ta pear\n")
    Image.new("RGBA", (8, 8)).save(flat / "apple_rgba.png")
    with pytest.raises(DatasetError, match=r"prompts.tsv line 3 names pear_rgba.png, which is not in"):
        load_dataset(flat)
    (flat / "prompts.tsv").write_text("case\tcaption\napple\ta red apple\n")
    with pytest.raises(DatasetError, match="lacks columns case and prompt"):
        load_dataset(flat)


def test_plain_image_folder_with_prompts_csv(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 10:20] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "red.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "photo.jpg")
    Image.fromarray(rgba[..., 3]).save(tmp_path / "photo_mask.png")
    (tmp_path / "prompts.csv").write_text("file,prompt,mask\nred.png,a red square,\n"
                                          "photo.jpg,a photo,photo_mask.png\n")
    ds = load_dataset(tmp_path)
    assert [(c.id, c.prompt, c.recenter) for c in ds.cases] == [("red", "a red square", True),
                                                                ("photo", "a photo", True)]
    inp = ds.cases[1].load(size=64)
    assert inp.rgba.shape == (64, 64, 4) and inp.prompt == "a photo"
    Image.fromarray(rgba).save(tmp_path / "forgotten.png")
    with pytest.raises(DatasetError, match=r"prompts.csv does not name forgotten.png: add a row for each image"):
        load_dataset(tmp_path)


def test_an_image_folder_names_cases_without_the_rgba_suffix(tmp_path):
    """`apple_rgba.png` is case `apple`, as `c123 reconstruct apple_rgba.png` names it; two files that would
    give one id are refused."""
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = 255
    Image.fromarray(rgba).save(tmp_path / "apple_rgba.png")
    (tmp_path / "prompts.csv").write_text("file,prompt\napple_rgba.png,an apple\n")
    assert [c.id for c in load_dataset(tmp_path).cases] == ["apple"]
    Image.fromarray(rgba).save(tmp_path / "apple.png")
    (tmp_path / "prompts.csv").write_text("file,prompt\napple_rgba.png,an apple\napple.png,another apple\n")
    with pytest.raises(DatasetError, match=r"line 3: case id 'apple' repeats .*line 2"):
        load_dataset(tmp_path)


def test_synthetic_dataset_carries_ground_truth(tmp_path, monkeypatch):
    from c123.synthetic import SCENES
    from c123_pipeline.datasets import layouts

    small = functools.partial(layouts.read_synthetic, size=32)   # 256 px by default: slow on a busy CPU
    monkeypatch.setattr(layouts, "read_synthetic", small)
    monkeypatch.setenv("C123_CACHE", str(tmp_path))
    ds = load_dataset("synthetic")
    assert ds.name == "synthetic" and [c.scene for c in ds.cases] == list(SCENES)
    assert all(c.prompt and c.rgba_path.is_relative_to(tmp_path) for c in ds.cases)
    inp = ds.cases[0].load()
    mask = inp.rgba[..., 3] > 127
    assert inp.rgba.shape == (32, 32, 4) and 0.05 < mask.mean() < 0.6
    assert (inp.depth[mask] > 0).all() and (inp.depth[~mask] == 0).all()
    stamp = ds.cases[0].rgba_path.stat().st_mtime_ns
    assert load_dataset("synthetic").cases[0].rgba_path.stat().st_mtime_ns == stamp   # cached


@pytest.fixture()
def mirror():
    """The shared datasets served over HTTP on 127.0.0.1, as a stand-in for the upstream repositories."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SHARED))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@needs_data
@pytest.mark.parametrize("name,count", [("c10", 10), ("realfusion15", 15)])
def test_fetch_from_a_mirror_matches_byte_for_byte(tmp_path, mirror, name, count):
    dest = fetch(name, tmp_path, base_url=mirror, timeout=10)
    shared = sorted(p.relative_to(SHARED / name) for p in (SHARED / name).rglob("*") if p.is_file()
                    and p.name != "README.md")
    fetched = sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file())
    assert fetched == shared
    assert all(filecmp.cmp(SHARED / name / rel, dest / rel, shallow=False) for rel in shared)
    ds = load_dataset(dest)
    assert len(ds) == count and [c.prompt for c in ds.cases] == [c.prompt for c in load_dataset(name).cases]


@needs_data
def test_fetch_cli_skips_existing_files_and_reports_failures(tmp_path, mirror, capsys):
    assert fetch_main(["c10", "--root", str(tmp_path), "--base-url", mirror]) == 0
    assert "c10: 10 cases" in capsys.readouterr().out
    # everything is there: a dead mirror is never contacted
    fetch("c10", tmp_path, base_url="http://127.0.0.1:9", timeout=2)
    (tmp_path / "c10" / "07.jpg").unlink()
    with pytest.raises(DatasetError, match=r"download of http://127.0.0.1:9/c10/07.jpg failed"):
        fetch("c10", tmp_path, base_url="http://127.0.0.1:9", timeout=2)
    assert not list((tmp_path / "c10").glob(".*.tmp"))


def test_upstream_urls_point_at_the_pinned_commits():
    urls = dict(files("c10"))
    assert urls["07_rgba.png"].endswith("lyk412/Consistent123/6df4059e/data/C10/07_rgba.png")
    urls = dict(files("realfusion15"))
    assert urls["original/cherry_1/mask.png"].endswith(
        "lukemelas/realfusion/3ec69d05/examples/natural-images/cherry_1/mask.png")
    assert urls["cheery.png"] == urls["original/cherry_1/image.png"]


def test_a_folder_of_plain_photos_is_a_dataset_of_cases_to_preprocess(tmp_path):
    Image.new("RGB", (30, 20), (200, 100, 50)).save(tmp_path / "mug.jpg")
    Image.new("RGB", (30, 20), (20, 100, 50)).save(tmp_path / "lamp.png")
    ds = load_dataset(tmp_path)
    assert [(c.id, c.prompt, c.mask_path, c.depth_path, c.recenter) for c in ds.cases] == [
        ("lamp", "", None, None, True), ("mug", "", None, None, True)]


def test_an_images_table_may_leave_prompts_out(tmp_path):
    Image.new("RGB", (30, 20), (200, 100, 50)).save(tmp_path / "mug.jpg")
    (tmp_path / "prompts.csv").write_text("file,category\nmug.jpg,kitchen\n")
    (case,) = load_dataset(tmp_path).cases
    assert (case.id, case.prompt, case.category) == ("mug", "", "kitchen")
