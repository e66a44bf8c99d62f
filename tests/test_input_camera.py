"""The input camera: a per-case elevation (polar = 90 - elevation) from `c123 reconstruct --elevation/--azimuth`,
a dataset table's `elevation` column or the benchmark's `elevation` parameter; every camera the method derives
starts from it as the official code's do from --default_polar; the oracle answers from the camera its image was
really rendered from; the synthetic-elevated dataset; what result.json, per_case and the report record."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from c123 import config as C
from c123.cameras import orbit, orbit_cameras, reference_camera, sample_novel_cameras, view_ranges
from c123.errors import C123Error, DatasetError
from c123.priors.oracle import OraclePrior
from c123.priors.zero123 import camera_vector
from c123.synthetic import get_scene


# ---- parsing the elevation ------------------------------------------------------------------------------
@pytest.mark.parametrize("given,value", [("30", 30.0), (" -15.5 ", -15.5), (0, 0.0), ("", None), (None, None)])
def test_elevation_value_reads_degrees_and_a_blank_means_the_default(given, value):
    assert C.elevation_value(given, "where", "fix") == value


@pytest.mark.parametrize("given", ["90", "-90", "120", "nan", "inf", "thirty", True])
def test_elevation_value_refuses_what_is_not_degrees_strictly_inside_the_hemispheres(given):
    with pytest.raises(C123Error) as err:
        C.elevation_value(given, "table.tsv line 3", "fix the cell")
    text = str(err.value)
    assert text.startswith("table.tsv line 3: elevation") and text.endswith(": fix the cell") and "\n" not in text
    assert "strictly between -90 and 90" in text


def test_elevation_value_reads_estimate_as_the_request_to_estimate():
    assert C.elevation_value(" Estimate ", "--elevation", "pass degrees") == C.ELEVATION_ESTIMATE == "estimate"


# ---- c123 reconstruct --elevation / --azimuth ----------------------------------------------------------------
def _reconstruct_config(*flags: str) -> C.ReconstructConfig:
    from c123.cli import build_parser, resolve_args_config, take_positional

    args = build_parser().parse_args(["reconstruct", "in.png", "--preset", "verify", *flags])
    take_positional(args, "image", required=True)
    return resolve_args_config(args, check_device=False)


def test_reconstruct_elevation_and_azimuth_flags_set_the_reference_camera():
    cfg = _reconstruct_config("--elevation", "30", "--azimuth", "-45")
    assert (cfg.camera.ref_polar, cfg.camera.ref_azimuth) == (60.0, -45.0)
    assert reference_camera(cfg.camera).position[0, 1] == pytest.approx(3.2 * math.sin(math.radians(30)))
    plain = _reconstruct_config()
    assert (plain.camera.ref_polar, plain.camera.ref_azimuth) == (90.0, 0.0)  # the preset's, elevation 0


def test_reconstruct_header_line_names_the_input_camera(tmp_path, capsys, toy_input):
    from c123.cli import main

    # the header is printed before the priors load: a missing model ends the run right after it
    code = main(["reconstruct", str(toy_input.rgba), "--prompt", "x", "--preset", "paper", "--out",
                 str(tmp_path / "o"), "--elevation", "22.5", "--azimuth", "-30", "--set",
                 "prior.zero123_model=/nonexistent/zero123", "preprocess.depth_model="])
    header = capsys.readouterr().out.splitlines()[0]
    assert code == 2 and ", seed 0, input camera elevation 22.5, azimuth -30, config " in header, header


def test_paper_preset_keeps_the_official_fixed_elevation_0_and_fast_and_verify_estimate():
    for name in C.PRESETS:
        cfg = C.preset(name)
        assert (cfg.camera.ref_polar, cfg.camera.ref_azimuth) == (90.0, 0.0), name
        assert cfg.prior.oracle_elevation is None and cfg.prior.oracle_azimuth is None, name
        assert cfg.camera.estimate_elevation == (name in ("fast", "verify")), name


def test_reconstruct_elevation_estimate_asks_for_the_estimate_and_degrees_turn_it_off():
    assert _reconstruct_config("--elevation", "estimate").camera.estimate_elevation  # verify estimates anyway
    paper = _reconstruct_config("--preset", "paper", "--elevation", "estimate")
    assert paper.camera.estimate_elevation and paper.camera.ref_polar == 90.0
    given = _reconstruct_config("--elevation", "30")
    assert not given.camera.estimate_elevation and given.camera.ref_polar == 60.0


@pytest.mark.parametrize("flags,message", [
    (("--elevation", "guess"), "--elevation: elevation \"guess\" is not a number of degrees strictly between"),
    (("--elevation", "95"), "--elevation: elevation \"95\" is not a number of degrees strictly between -90 and 90"),
    (("--elevation", "30", "--set", "camera.ref_polar=80"), "--elevation and --set camera.ref_polar=80 both set "
                                                            "camera.ref_polar"),
    (("--azimuth", "left"), "argument --azimuth: 'left' is not a number of degrees"),
])
def test_reconstruct_refuses_a_bad_input_camera_in_one_line_before_any_work(tmp_path, capsys, flags, message):
    from c123.cli import main

    out = tmp_path / "out"
    code = main(["reconstruct", str(tmp_path / "missing.png"), "--preset", "verify", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and not out.exists()


# ---- every camera the method derives starts from the reference polar (stable-dreamfusion, Consistent123) ----
def test_progressive_ranges_widen_from_the_reference_polar_to_the_absolute_full_range():
    # nerf/utils.py train_step: theta_range = default_polar * (1 - r) + full_theta_range * r; the full range stays
    # the absolute --theta_range (45, 105) whatever --default_polar is
    cam = C.CameraConfig(ref_polar=60.0)
    assert view_ranges(cam, 0.0)["polar"] == (60.0, 60.0)
    assert view_ranges(cam, 0.5)["polar"] == pytest.approx((52.5, 82.5))
    assert view_ranges(cam, 1.0)["polar"] == (45.0, 105.0)
    early = sample_novel_cameras(cam, 2000, 0.2, torch.Generator().manual_seed(0))
    assert 57.0 <= float(early.polar.min()) and float(early.polar.max()) <= 69.0  # 20% of 45..105 around 60


def test_priors_relative_vectors_are_measured_from_the_assumed_reference():
    ref = reference_camera(C.CameraConfig(ref_polar=60.0, ref_azimuth=30.0))
    cams = orbit_cameras(torch.tensor([60.0, 80.0]), torch.tensor([30.0, 120.0]), 3.2, 20.0)
    vec = camera_vector(cams, ref)
    assert torch.allclose(vec[0], torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-6)  # the reference itself
    assert torch.allclose(vec[1], torch.tensor([math.radians(20.0), 1.0, 0.0, 0.0]), atol=1e-6)


def test_detector_turntable_and_strip_circle_at_the_reference_polar():
    # the official validation and test loaders circle at --default_polar (nerf/provider.py 'circle pose')
    from c123.reconstruct import turntable_cameras
    from c123.priors.loading import Priors
    from c123.stages import DetectorScore

    for polar in (90.0, 60.0):
        cfg = C.tiny("unused")
        cfg.camera.ref_polar = polar
        detector = DetectorScore(Priors(), "a toy", cfg, "cpu")
        assert torch.equal(detector.cams.polar, torch.full((cfg.schedule.num_views,), polar))
        assert torch.equal(detector.cams.azimuth, orbit(cfg.schedule.num_views).azimuth)  # from 0, as the official
        assert torch.equal(turntable_cameras(cfg).polar, torch.full((cfg.train.video_frames,), polar))
    cfg = C.tiny("unused")
    # at the default polar the detector's views are exactly the ones they were (elevation 0)
    assert torch.equal(DetectorScore(Priors(), "a toy", cfg, "cpu").cams.c2w,
                       orbit(cfg.schedule.num_views, radius=3.2, fovy=20.0).c2w)


# ---- the oracle answers from the true camera ---------------------------------------------------------------
def _oracle_target(oracle: OraclePrior, assumed: C.CameraConfig, cams, size=24) -> torch.Tensor:
    oracle.set_reference(torch.zeros(1, 3, 8, 8), reference_camera(assumed))
    return oracle.target(cams, size, size)


def test_oracle_with_the_true_camera_equal_to_the_assumed_one_answers_to_the_bit_as_before():
    scene = get_scene("toy")
    cams = sample_novel_cameras(C.CameraConfig(), 3, 1.0, torch.Generator().manual_seed(1))
    for polar, elevation in ((90.0, 0.0), (60.0, 30.0)):
        assumed = C.CameraConfig(ref_polar=polar)
        before = _oracle_target(OraclePrior(scene), assumed, cams)
        told = _oracle_target(OraclePrior(scene, true_elevation=elevation, true_azimuth=0.0), assumed, cams)
        assert torch.equal(before, told)


def test_oracle_decodes_the_camera_vector_from_the_camera_the_image_was_really_taken_from():
    """The image was rendered from elevation 30; the method assumes 0. Asked for the assumed reference (vector 0)
    the oracle shows the image itself, and asked 20 degrees lower it shows the view 20 degrees below the truth:
    what Zero-1-to-3, seeing only the image, would answer."""
    scene = get_scene("toy")
    oracle = OraclePrior(scene, true_elevation=30.0)
    assumed = C.CameraConfig()
    cams = orbit_cameras(torch.tensor([90.0, 110.0]), torch.tensor([0.0, 45.0]), 3.2, 20.0)
    got = _oracle_target(oracle, assumed, cams)
    truth = scene.render(orbit_cameras(torch.tensor([60.0, 80.0]), torch.tensor([0.0, 45.0]), 3.2, 20.0), 24, 24,
                         supersample=1)["rgba"]
    expected = (truth[..., :3] * truth[..., 3:] + 1 - truth[..., 3:]).permute(0, 3, 1, 2)
    assert torch.allclose(got, expected, atol=1e-5)
    assumed_truth = _oracle_target(OraclePrior(scene), assumed, cams)
    assert (got - assumed_truth).abs().mean() > 0.02  # a different answer than the assumed camera's


def test_oracle_takes_its_true_camera_from_the_config():
    from c123.priors.loading import chosen

    cfg = C.verify("unused")
    cfg.prior.oracle_scene, cfg.prior.oracle_elevation, cfg.prior.oracle_azimuth = "toy", 15.0, -10.0
    oracle, ids = chosen("zero123", cfg).load(cfg, "cpu")
    assert (oracle.true_elevation, oracle.true_azimuth, ids["zero123"]) == (15.0, -10.0, "oracle:toy")


@pytest.mark.parametrize("key,value", [("prior.oracle_elevation", 90.0), ("camera.ref_polar", 0.0),
                                       ("camera.ref_polar", 180.0), ("camera.ref_azimuth", 400.0)])
def test_config_checks_refuse_an_input_camera_off_the_sphere(key, value):
    from c123.config_checks import ConfigError, validate

    cfg = C.apply_overrides(C.verify("unused"), {key: value})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg, check_device=False)


def test_result_records_the_assumed_and_the_oracles_true_camera():
    from c123.reconstruct import input_camera

    cfg = C.paper()
    cfg.camera.ref_polar, cfg.camera.ref_azimuth = 75.0, 10.0
    assert input_camera(cfg) == {"elevation": 15.0, "azimuth": 10.0, "true_elevation": None, "true_azimuth": None,
                                 "estimate": None}
    cfg = C.verify("unused")
    cfg.prior.oracle_scene, cfg.prior.oracle_elevation = "toy", 30.0
    assert input_camera(cfg) == {"elevation": 0.0, "azimuth": 0.0, "true_elevation": 30.0, "true_azimuth": 0.0,
                                 "estimate": None}


# ---- datasets -----------------------------------------------------------------------------------------------
def _flat(root: Path, table: str, ids=("apple", "pear")) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for case in ids:
        Image.new("RGBA", (8, 8), (200, 0, 0, 255)).save(root / f"{case}_rgba.png")
    (root / "prompts.tsv").write_text(table)
    return root


def test_flat_table_elevation_column_is_optional_and_a_blank_cell_is_the_default(tmp_path):
    from c123_pipeline.datasets.layouts import detect

    root = _flat(tmp_path / "d", "case\tcategory\tprompt\televation\n"
                                 "apple\tfruit\tan apple\t30\npear\tfruit\ta pear\t\n")
    assert [(c.id, c.ref_elevation, c.true_elevation) for c in detect(root)] == [("apple", 30.0, None),
                                                                                 ("pear", None, None)]
    plain = _flat(tmp_path / "e", "case\tcategory\tprompt\napple\tfruit\tan apple\npear\tfruit\ta pear\n")
    assert [c.ref_elevation for c in detect(plain)] == [None, None]


def test_a_table_cell_estimate_asks_for_the_estimate(tmp_path):
    from c123_pipeline.datasets.layouts import detect

    root = _flat(tmp_path / "d", "case\tcategory\tprompt\televation\napple\tfruit\tan apple\testimate\n", ids=["apple"])
    assert [c.ref_elevation for c in detect(root)] == ["estimate"]


@pytest.mark.parametrize("cell,message", [
    ("high", "line 2: elevation \"high\" is not a number of degrees strictly between -90 and 90"),
])
def test_a_bad_elevation_cell_is_one_line_naming_the_file_line_and_fix(tmp_path, cell, message):
    from c123_pipeline.datasets.layouts import detect

    root = _flat(tmp_path / "d", f"case\tcategory\tprompt\televation\napple\tfruit\tan apple\t{cell}\n", ids=["apple"])
    with pytest.raises(DatasetError) as err:
        detect(root)
    assert str(err.value).startswith(f"{root / 'prompts.tsv'} {message}") and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory):
    """`synthetic` and an elevated variant at 0 and 30 degrees, rendered at 32 px into a fresh cache."""
    from c123_pipeline.datasets.layouts import read_synthetic

    cache = tmp_path_factory.mktemp("cache")
    return read_synthetic(cache, size=32), read_synthetic(cache, size=32, elevations=(0.0, 30.0))


def test_synthetic_elevated_renders_each_scene_at_each_elevation_with_its_true_elevation(small_synthetic):
    from c123.synthetic import SCENES
    from c123_pipeline.datasets.layouts import SYNTHETIC_TABLE

    plain, elevated = small_synthetic
    # synthetic-elevated keeps its truth for the oracle and the report: a run assumes what its preset or the flow
    # says (verify: the estimate); synthetic gives its (official and true) 0
    assert [(c.id, c.scene, c.ref_elevation, c.true_elevation) for c in elevated] == [
        (f"{s}@{e}", s, None, float(e)) for s in SCENES for e in (0, 30)]
    assert [(c.id, c.ref_elevation, c.true_elevation) for c in plain] == [(s, 0.0, 0.0) for s in SCENES]
    table = (elevated[0].rgba_path.parent / SYNTHETIC_TABLE).read_text().splitlines()
    assert table[0] == "case\tscene\televation\tprompt" and table[2].startswith("toy@30\ttoy\t30\t")
    # elevation 0 is the synthetic dataset's reference to the byte; 30 looks down on the object
    assert elevated[0].rgba_path.read_bytes() == plain[0].rgba_path.read_bytes()
    from PIL import Image

    level, high = (np.asarray(Image.open(c.rgba_path)) for c in elevated[:2])
    assert not np.array_equal(level, high)
    expected = get_scene("toy").render(reference_camera(C.CameraConfig(ref_polar=60.0)), 32, 32)["rgba"][0]
    assert np.abs(high.astype(float) / 255 - expected.numpy()).max() <= 0.5 / 255 + 1e-6


def test_synthetic_folder_table_errors_name_the_line_and_the_fix(small_synthetic, tmp_path):
    import shutil

    from c123_pipeline.datasets.layouts import SYNTHETIC_TABLE, detect

    _, elevated = small_synthetic
    root = tmp_path / "copy"
    shutil.copytree(elevated[0].rgba_path.parent, root)
    assert [c.id for c in detect(root)] == [c.id for c in elevated]  # a copy of the folder is a dataset folder
    table = root / SYNTHETIC_TABLE
    lines = table.read_text().splitlines()
    for bad, message in ((lines[1].replace("\t0\t", "\t\t"), "line 2: the elevation is blank: write the degrees"),
                         (lines[1].replace("\ttoy\t", "\tmoon\t"), "line 2: scene 'moon' is not a synthetic scene")):
        table.write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n")
        with pytest.raises(DatasetError, match=f"^{table} {message}"):
            detect(root)


def test_case_ids_may_carry_an_at_sign_but_stay_plain_names():
    from c123_pipeline.datasets.case import check_case_id

    assert check_case_id("toy@30", "t") == "toy@30"
    for bad in ("@toy", "toy@30/x", "a@..b"):
        with pytest.raises(DatasetError, match="is not a plain name"):
            check_case_id(bad, "t")


# ---- the flow: which elevation a case runs with, and what its row records ---------------------------------
def _case(elevation=None, true=None, scene="toy"):
    from c123_pipeline.datasets.case import Case

    return Case(id="toy@30", rgba_path=Path("x.png"), scene=scene, ref_elevation=elevation, true_elevation=true)


def test_case_config_assumes_the_parameter_then_the_table_and_the_oracle_keeps_the_truth():
    from c123_pipeline.flows.spec import case_config, elevation_source

    verify = C.verify("unused")
    case = _case(30.0, 30.0)
    given = case_config(verify, case)
    assert (given.camera.ref_polar, given.prior.oracle_elevation, given.prior.oracle_scene) == (60.0, 30.0, "toy")
    wrong = case_config(verify, case, elevation=0.0)
    assert (wrong.camera.ref_polar, wrong.prior.oracle_elevation) == (90.0, 30.0)
    assert (elevation_source(case), elevation_source(case, 0.0)) == ("table", "parameter")
    assert verify.camera.ref_polar == 90.0 and verify.prior.oracle_elevation is None  # the run's config untouched
    paper = C.paper()
    photo = _case(scene=None)
    assert case_config(paper, photo) is paper and elevation_source(photo) == "config"
    assert case_config(paper, photo, elevation=15.0).camera.ref_polar == 75.0
    assert case_config(paper, _case(20.0, scene=None)).camera.ref_polar == 70.0


def test_case_config_estimates_or_assumes_the_truth_when_the_flow_says_so():
    from c123_pipeline.flows.spec import case_config, elevation_source

    verify, paper = C.verify("unused"), C.paper()
    elevated = _case(None, 30.0)  # synthetic-elevated: the truth, nothing given
    assert case_config(verify, elevated).camera.estimate_elevation and elevation_source(
        elevated, None, case_config(verify, elevated)) == "estimate"
    truth = case_config(paper, elevated, elevation="true")
    assert (truth.camera.ref_polar, truth.camera.estimate_elevation, elevation_source(elevated, "true", truth)) == (
        60.0, False, "parameter")
    assert case_config(paper, elevated, elevation=" True ").camera.ref_polar == 60.0  # a deployment's text
    assert case_config(paper, elevated, elevation="30").camera.ref_polar == 60.0
    assert case_config(paper, elevated, elevation="Estimate").camera.estimate_elevation
    asked = case_config(paper, _case("estimate", scene=None))
    assert asked.camera.estimate_elevation and asked.camera.ref_polar == 90.0
    assert not case_config(verify, _case(0.0, 0.0)).camera.estimate_elevation  # given (synthetic): no estimate
    with pytest.raises(C123Error, match="does not know the elevation its input was taken from"):
        case_config(paper, _case(scene=None), elevation="true")


def test_flow_parameter_elevation_is_checked_before_anything_runs():
    from c123_pipeline.flows.spec import BenchmarkSpec

    BenchmarkSpec(dataset="synthetic", elevation=30.0).check()
    with pytest.raises(C123Error, match=r"^parameter elevation=95\.0: elevation 95\.0 is not a number of degrees "):
        BenchmarkSpec(dataset="synthetic", elevation=95.0).check()


def test_deployments_take_elevation_as_a_number_or_null():
    from prefect.utilities.callables import parameter_schema

    from c123_pipeline.flows.benchmark import benchmark

    schema = parameter_schema(benchmark.fn).properties["elevation"]
    assert schema["anyOf"] == [{"type": "number"}, {"type": "string"}, {"type": "null"}] and schema["default"] is None


def test_evaluate_command_refuses_an_elevation_that_is_no_degrees_estimate_or_true_in_one_line(capsys, tmp_path):
    from c123_pipeline.cli import main

    code = main(["evaluate", "synthetic", "--preset", "verify", "--elevation", "sideways", "--out",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'estimate', 'true'" in err and not (tmp_path / "run").exists()


def test_unseen_views_are_those_the_true_camera_never_saw():
    from c123_pipeline.tasks.metrics import _unseen

    views = [{"azimuth": 45.0 * i, "polar": 90.0} for i in range(8)]
    assumed = {"config": {"camera": {"ref_polar": 90.0, "ref_azimuth": 90.0}}}
    # runs without input_camera: relative to the config's (assumed) reference at azimuth 90
    assert _unseen(views, assumed) == [True, False, False, False, True, True, True, True]
    truth = {**assumed, "input_camera": {"true_elevation": 0.0, "true_azimuth": 0.0}}
    assert _unseen(views, truth) == [False, False, True, True, True, True, True, False]


# ---- the report ---------------------------------------------------------------------------------------------
def _camera_rows(tmp_path) -> pd.DataFrame:
    from fixtures_runs import case_row, write_per_case

    from c123_pipeline.reports.runs import all_cases, load_runs

    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = []
    for run, assumed, source, unseen in (("given", 30.0, "table", 24.0), ("wrong", 0.0, "parameter", 18.0)):
        rows.append(case_row(run, "toy@30", "synthetic", dataset="synthetic-elevated", preset="verify",
                             variant="3d-only") | {"elevation": assumed, "elevation_source": source,
                                                   "true_elevation": 30.0, "unseen_psnr": unseen})
        (tmp_path / run).mkdir()
        write_per_case(tmp_path / run / "per_case.parquet", rows[-1:])
    return all_cases(load_runs([tmp_path / "given", tmp_path / "wrong"]))


def test_report_tables_show_assumed_and_true_elevation_per_case(tmp_path):
    from c123_pipeline.reports import tables

    table = tables.camera_table(_camera_rows(tmp_path))
    md = tables.to_markdown(table)
    assert "| synthetic-elevated/toy@30 · 3d-only · exp · verify · given | 30° | table | 30° | 24.000 |" in md
    assert "| synthetic-elevated/toy@30 · 3d-only · exp · verify · wrong | 0° | parameter | 30° | 18.000 |" in md
    assert [t.title for t in tables.build_tables(_camera_rows(tmp_path / "again"))].count(table.title) == 1


def test_report_leaves_out_the_camera_table_where_every_elevation_is_0_or_unknown(tmp_path):
    from fixtures_runs import case_row

    from c123_pipeline.reports import tables

    old = pd.DataFrame([case_row("r", "07", "fruit")]).assign(label="x")
    assert tables.camera_table(old) is None  # runs before the columns
    level = old.assign(elevation=0.0, elevation_source="config", true_elevation=0.0)
    assert tables.camera_table(level) is None
    assert all(t.title.split(":")[0] != "Input camera" for t in tables.build_tables(level))


def test_report_page_names_each_cases_input_camera(tmp_path):
    from c123_pipeline.reports.html import camera_note

    rows = _camera_rows(tmp_path)
    notes = [camera_note(r) for r in rows.itertuples()]
    assert notes == ["elevation 30° (table), true 30°", "elevation 0° (parameter), true 30°"]
    assert camera_note(rows.assign(elevation=0.0, true_elevation=0.0).iloc[0]) == ""
    assert camera_note(rows.drop(columns=["elevation"]).iloc[0]) == ""


# ---- the estimate in a run ----------------------------------------------------------------------------------
def test_a_run_that_estimates_records_the_estimate_and_training_starts_from_it(tmp_path, toy_input):
    """`reconstruct --elevation estimate` with the real (tiny, random) Zero-1-to-3: its views follow no camera, so
    the estimate falls back to 0 with a warning that the run records; with the oracle answering from a camera 30
    degrees up, the estimate is recorded with its confidence and written into the run's config."""
    from c123.cli import main
    from c123_pipeline.datasets.layouts import render_reference

    quick = ["train.nerf_iters=2", "train.dmtet_iters=0", "log.prior_views=false", "train.eval_views=1",
             "train.video_frames=1", "train.export_mesh=false"]
    out = tmp_path / "random"
    assert main(["reconstruct", str(toy_input.rgba), "--depth", str(toy_input.depth), "--prompt", "a toy",
                 "--preset", "tiny", "--variant", "3d-only", "--elevation", "estimate", "--out", str(out),
                 "--set", *quick]) == 0
    camera = json.loads((out / "result.json").read_text())["input_camera"]
    assert camera["elevation"] == 0.0 and camera["estimate"]["fell_back"] and camera["estimate"]["warning"]
    assert camera["estimate"]["fovy"] == 49.1  # Zero-1-to-3's own views
    assert camera["estimate"]["warning"] in json.loads((out / "result.json").read_text())["warnings"]

    rgba, depth = tmp_path / "toy30_rgba.png", tmp_path / "toy30_depth.png"
    render_reference("toy", 128, rgba, depth, 30.0)
    out = tmp_path / "oracle"
    assert main(["reconstruct", str(rgba), "--depth", str(depth), "--prompt", "a toy", "--preset", "tiny",
                 "--variant", "3d-only", "--elevation", "estimate", "--out", str(out), "--set", *quick,
                 "prior.oracle_scene=toy", "prior.oracle_elevation=30"]) == 0
    result = json.loads((out / "result.json").read_text())
    estimate = result["input_camera"]["estimate"]
    assert abs(estimate["elevation"] - 30.0) <= 5.0 and not estimate["fell_back"] and estimate["confidence"] >= 0.5
    assert result["input_camera"]["elevation"] == estimate["elevation"]
    assert result["config"]["camera"]["ref_polar"] == 90.0 - estimate["elevation"]  # what training started from
    assert f"ref_polar: {90.0 - estimate['elevation']}" in (out / "config.yaml").read_text()
