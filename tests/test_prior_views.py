"""OUT/prior_views/ (c123/prior_views.py): the 3D prior's own views at the boundary detector's azimuths, each from a
generator of its own that the record names; the run's generator and the global streams untouched; reused by a
rerun of the same input and config, redrawn for another; skipped with a reason; shown, labelled and escaped, by
`c123 view` and the report. A fake prior here; the real tiny run is in tests/test_run_outputs.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from c123.config import preset
from c123.prior_views import RECORD_FILE, draw_prior_views, read_prior_views, view_seed
from c123.stages import detector_cameras
from fixtures_runs import make_run, write_case


class FakePrior:
    """A 3D prior whose views are uniform noise from the generator it is handed (and, with `global_draw`, also one
    draw from the global stream, which the drawing must not leak)."""

    model_id = "fake:<prior> & co"

    def __init__(self, size: int = 16, global_draw: bool = False):
        self.size, self.global_draw, self.calls = size, global_draw, []

    def sample(self, cams, *, generator, steps, guidance_scale, eta):
        self.calls.append({"azimuth": cams.azimuth.tolist(), "polar": cams.polar.tolist(), "steps": steps,
                           "guidance_scale": guidance_scale, "eta": eta})
        if self.global_draw:
            torch.rand(3)
        return torch.rand(len(cams), 3, self.size, self.size, generator=generator, device=generator.device)


def tiny_cfg(**log):
    cfg = preset("tiny")
    for key, value in log.items():
        setattr(cfg.log, key, value)
    return cfg


def draw(prior, cfg, out, digest="d1"):
    return draw_prior_views(prior, cfg, out, "cpu", input_digest=digest)


def test_views_are_named_by_azimuth_at_the_detector_cameras_relative_to_the_reference(tmp_path):
    cfg = tiny_cfg()
    cfg.camera.ref_azimuth = 30.0
    prior = FakePrior()
    record = draw(prior, cfg, tmp_path)
    cams = detector_cameras(cfg)
    assert [v["file"] for v in record["views"]] == [f"prior_views/az_{a:03d}.png" for a in range(0, 360, 45)]
    assert [c["azimuth"] for c in prior.calls] == [[a] for a in cams.azimuth.tolist()]
    assert all(c["polar"] == [90.0] for c in prior.calls)
    assert [v["delta_azimuth"] for v in record["views"]] == [-30, 15, 60, 105, 150, -165, -120, -75]
    assert record["sampler"] == {"steps": 4, "guidance_scale": 3.0, "eta": 1.0, "seed": cfg.seed}
    assert all(c["steps"] == 4 and c["guidance_scale"] == 3.0 and c["eta"] == 1.0 for c in prior.calls)
    assert record["model_id"] == FakePrior.model_id and record["size"] == 16 and record["reused"] is False
    for v in record["views"]:
        image = np.asarray(Image.open(tmp_path / v["file"]))
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    saved = json.loads((tmp_path / "prior_views" / RECORD_FILE).read_text())
    assert saved["record"] == record and read_prior_views(tmp_path) == record


def test_each_view_is_reproducible_from_the_seed_the_record_names(tmp_path):
    cfg = tiny_cfg()
    record = draw(FakePrior(), cfg, tmp_path / "a")
    again = draw(FakePrior(), cfg, tmp_path / "b")
    assert [v["seed"] for v in record["views"]] == [view_seed(cfg.seed, i) for i in range(8)]
    assert len({v["seed"] for v in record["views"]} | {cfg.seed}) == 9  # none is the run's own seed
    for v in record["views"]:
        expected = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(v["seed"]))[0]
        expected = (expected.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / v["file"])), expected)
        assert (tmp_path / "a" / v["file"]).read_bytes() == (tmp_path / "b" / v["file"]).read_bytes()
    cfg.seed = 1
    moved = draw(FakePrior(), cfg, tmp_path / "d")
    assert (tmp_path / "a" / "prior_views" / "az_000.png").read_bytes() != \
        (tmp_path / "d" / moved["views"][0]["file"]).read_bytes()


def test_the_run_generator_and_the_global_streams_are_untouched(tmp_path):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    global_state, gen_state = torch.get_rng_state(), gen.get_state()
    draw(FakePrior(global_draw=True), tiny_cfg(), tmp_path)
    assert torch.equal(torch.get_rng_state(), global_state) and torch.equal(gen.get_state(), gen_state)


def test_a_rerun_of_the_same_config_reuses_the_files_and_another_redraws(tmp_path):
    cfg = tiny_cfg()
    first = draw(FakePrior(), cfg, tmp_path)
    stamp = (tmp_path / first["views"][3]["file"]).stat().st_mtime_ns
    prior = FakePrior()
    again = draw(prior, cfg, tmp_path)
    assert not prior.calls and again == {**first, "reused": True}
    assert (tmp_path / first["views"][3]["file"]).stat().st_mtime_ns == stamp
    (tmp_path / first["views"][5]["file"]).unlink()  # a view missing: drawn again
    prior = FakePrior()
    assert draw(prior, cfg, tmp_path)["reused"] is False and len(prior.calls) == 8
    for changed, digest in ((tiny_cfg(prior_view_steps=7), "d1"), (tiny_cfg(), "d2")):  # other steps, other input
        prior = FakePrior()
        assert draw(prior, changed, tmp_path, digest)["reused"] is False and len(prior.calls) == 8
    cfg.schedule.num_views = 4  # fewer views: the others' files go
    record = draw(FakePrior(), cfg, tmp_path)
    assert sorted(p.name for p in (tmp_path / "prior_views").glob("az_*.png")) == [
        "az_000.png", "az_090.png", "az_180.png", "az_270.png"] == [Path(v["file"]).name for v in record["views"]]


def test_views_are_skipped_with_a_reason(tmp_path):
    assert draw(FakePrior(), tiny_cfg(prior_views=False), tmp_path) == {"skipped": "log.prior_views is off"}
    assert draw(None, tiny_cfg(), tmp_path) == {"skipped": "variant consistent123 uses no 3D prior"}

    class GuidesOnly:
        model_id = "stub"

        def loss(self, images, cams, **_):
            return images.sum()

    reason = draw(GuidesOnly(), tiny_cfg(), tmp_path)["skipped"]
    assert reason == "the 3D prior stub draws no views of its own (no sample())"
    assert not (tmp_path / "prior_views").exists()


def test_the_oracle_draws_the_true_views(tmp_path):
    from c123.cameras import reference_camera
    from c123.priors.oracle import OraclePrior
    from c123.synthetic import get_scene

    cfg = tiny_cfg()
    oracle = OraclePrior(get_scene("toy"), size=24)
    oracle.set_reference(None, reference_camera(cfg.camera))
    record = draw(oracle, cfg, tmp_path)
    assert record["model_id"] == "oracle:toy" and record["size"] == 24
    truth = oracle.target(detector_cameras(cfg)[2], 24, 24)[0]
    expected = (truth.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "prior_views" / "az_090.png")), expected)


def test_the_defaults_are_zero123s_sampler_and_the_views_leave_the_config_hash_alone():
    from c123 import prior_views
    from c123.config import ReconstructConfig
    from c123.priors import zero123

    log = ReconstructConfig().log
    assert (log.prior_views, log.prior_view_steps, log.prior_view_guidance) == (True, zero123.SAMPLE_STEPS,
                                                                                  zero123.SAMPLE_GUIDANCE)
    assert prior_views.SAMPLE_ETA == zero123.SAMPLE_ETA
    assert preset("tiny").log.prior_view_steps == 4 and preset("paper").log.prior_view_steps == 50
    assert tiny_cfg(prior_views=False).hash() == tiny_cfg(prior_view_steps=9).hash() == preset("tiny").hash()


# ---- shown by `c123 view` and the report ----------------------------------------------------------------------
def test_the_view_page_shows_the_prior_views_below_the_orbit_views_labelled_and_escaped(tmp_path):
    from c123.viewer import build_view

    run = tmp_path / "run"
    write_case(run / "a", case="07", seed=0, switch=35)
    result = json.loads((run / "a" / "result.json").read_text())
    result["prior_views"]["model_id"] = "<script>alert(1)</script>"
    (run / "a" / "result.json").write_text(json.dumps(result))
    write_case(run / "b", case="12", seed=0, switch=38, prior_views=False)
    result = json.loads((run / "b" / "result.json").read_text())
    result["prior_views"]["skipped"] = "off <b>here</b>"
    (run / "b" / "result.json").write_text(json.dumps(result))
    page = build_view(run)
    html = page.read_text()
    assert html.count("orbit views and what the 3D prior imagines") == 2
    prior_imgs = re.findall(r'<img src="([^"]+)" alt="3D prior ([^"]+)"', html)
    assert [alt for _, alt in prior_imgs] == [f"{a}°" for a in range(0, 360, 45)]
    assert all((page.parent / unquote(src)).is_file() and "prior_views/az_" in src for src, _ in prior_imgs)
    assert html.count('alt="reconstruction ') == 16 and "3D prior, before training" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "not drawn: off &lt;b&gt;here&lt;/b&gt;" in html
    assert "4 DDIM steps, guidance 3.0, eta 1.0, run seed 0" in html


def test_the_report_shows_each_case_prior_views_and_those_of_a_case_that_failed_after_drawing_them(tmp_path):
    from c123.prior_views import PRIOR_VIEWS_DIR
    from c123_pipeline.reports.build import build_report
    from fixtures_runs import write_prior_views

    run = make_run(tmp_path, "nightly-1", failed={"43"})
    write_prior_views(run / "cases" / "consistent123" / "43" / "seed0", case="43", model_id="<i>tiny</i>")
    html = build_report([run], run / "report").index_html.read_text()
    cells = re.findall(r'<div class="views prior-views">(.*?)</div>', html)
    assert len(cells) == 4  # three cases that finished, one that failed after drawing its views
    for cell in cells:
        srcs = re.findall(r'src="([^"]+)"', cell)
        assert len(srcs) == 8 and all(f"{PRIOR_VIEWS_DIR}/az_" in s for s in srcs)
        assert all((run / "report" / unquote(s)).is_file() for s in srcs)
    assert html.count("3D prior, before training") == 4 and html.count("orbit views (views/)") == 3
    assert "<i>tiny</i>" not in html and "&lt;i&gt;tiny&lt;/i&gt;" in html
