"""What a researcher gets around one run, read back from the files: a stamped output folder, config.yaml that
reruns to the same hash, TensorBoard events (read with tensorboard's own reader) holding every loss term,
the weights, S^k/R^k, the switch, learning rates, gradient norms and validation strips, a progress line with
the final weights, the 3D prior's own views drawn before training (prior_views/, redrawn here from what
result.json records), and `c123 view` pages that load in Chromium with the GLB and the prior's views shown. Two
micro runs of the tiny preset (12 steps), one with the log and the prior views and one with `--log none` and
`log.prior_views=false`: neither changes a number."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from browser import assert_viewer_renders, needs_chromium
from c123.config_files import resolve_config
from c123.viewer import build_view
MICRO = """\
# 9 NeRF + 3 DMTet steps of the tiny preset; the detector scores at 3, 6, 9 and is forced at 9
preset: tiny
train: {nerf_iters: 9, dmtet_iters: 3, eval_views: 4, video_frames: 4, checkpoint_every: 0}
schedule: {check_start: 3, check_end: 9, check_interval: 3, rate_window: 2}
"""


def c123(*args, cwd, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "C123_TINY_MODELS": str(Path(cwd) / "models")}
    return subprocess.run([sys.executable, "-m", "c123.cli", *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_input):
    """(logged run folder, its stdout, quiet run folder): the same micro run with and without the log and the
    prior views, on a rendered input (the toy scene)."""
    root = tmp_path_factory.mktemp("micro")
    (root / "micro.yaml").write_text(MICRO)
    logged = c123("reconstruct", "--config", "micro.yaml", "--set", "log.strip_every=3", toy_input.rgba,
                  "--prompt", toy_input.prompt, cwd=root)
    assert logged.returncode == 0, logged.stdout + logged.stderr
    quiet = c123("reconstruct", toy_input.rgba, "--prompt", toy_input.prompt, "--config", "micro.yaml",
                 "--log", "none", "--set", "log.strip_every=3", "log.prior_views=false", "--out", root / "quiet",
                 cwd=root)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    (folder,) = (root / "outputs" / "toy").iterdir()
    return folder, logged.stdout, root / "quiet"


def _result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_the_default_output_folder_is_a_new_stamp_under_the_case_id(runs):
    folder, stdout, _ = runs
    assert folder.parent.name == "toy" and len(folder.name) == len("20261129-215402")
    assert _result(folder)["case"] == "toy"
    assert f"c123 view {folder.relative_to(folder.parents[2])}" in stdout


def test_the_last_progress_line_shows_the_final_weights_and_s(runs):
    folder, stdout, _ = runs
    result = _result(folder)
    w, det = result["weights"], result["detector"]
    done = next(line for line in stdout.splitlines() if line.strip().startswith("done"))
    assert f"w3D {w['w3d'][-1]:.3f} w2D {w['w2d'][-1]:.3f} S {det['S'][-1]:.4f} switch {result['switch_iteration']}" \
        in done, done
    assert w["w2d"][-1] > 0.3  # the dynamic prior acted after the switch at 9


def test_config_yaml_beside_result_reruns_to_the_same_config(runs):
    folder, _, _ = runs
    result = _result(folder)
    again = resolve_config(config_file=folder / "config.yaml")
    assert again.hash() == result["config_hash"] and result["outputs"]["config"] == "config.yaml"
    assert json.loads(json.dumps(again.to_dict())) == result["config"]


def test_tensorboard_events_hold_every_named_scalar_and_the_validation_strips(runs):
    folder, _, _ = runs
    result, acc = _result(folder), _events(folder)
    scalars, images = set(acc.Tags()["scalars"]), acc.Tags()["images"]
    expected = {f"loss/{term}" for term in result["loss"]} | {
        "loss/total", "weights/w3D", "weights/w2D", "detector/S", "detector/R", "detector/switch", "lr/grid",
        "lr/mlp", "lr/tet", "grad_norm/grid", "grad_norm/mlp", "grad_norm/tet", "grad_norm/total"}
    assert expected <= scalars, expected - scalars
    assert {"sds_3d", "sds_2d", "ref_rgb", "mesh_laplacian"} <= set(result["loss"])

    def series(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    def same(tag, steps, values, rel):
        """The events of `tag` are these values at these steps (events hold float32)."""
        logged = series(tag)
        assert [s for s, _ in logged] == list(steps), tag
        assert [v for _, v in logged] == pytest.approx(list(values), rel=rel, abs=1e-12), tag

    w, det = result["weights"], result["detector"]
    same("weights/w2D", w["iterations"], w["w2d"], 1e-6)
    same("loss/ref_rgb", *zip(*result["loss"]["ref_rgb"]), 1e-5)
    same("detector/S", det["iterations"], det["S"], 1e-6)
    assert [s for s, _ in series("detector/R")] == [i for i, r in zip(det["iterations"], det["R"]) if r is not None]
    assert series("detector/switch") == [(result["switch_iteration"], result["switch_iteration"])]
    cfg = result["config"]
    assert dict(series("lr/grid"))[1] == pytest.approx(cfg["train"]["lr"] * cfg["train"]["grid_lr_scale"])
    norms = dict(series("grad_norm/total"))
    assert len(norms) == 12 and all(np.isfinite(v) and v > 0 for v in norms.values())

    assert images == ["validation/strip"]
    strips = acc.Images("validation/strip")
    assert [s.step for s in strips] == [3, 6, 9, 12]  # every 3 steps, and each stage's end
    views, size = cfg["log"]["strip_views"], cfg["log"]["strip_size"]
    for strip in strips:
        pixels = np.asarray(Image.open(io.BytesIO(strip.encoded_image_string)))
        assert pixels.shape == (size, views * size, 3) and (strip.width, strip.height) == (views * size, size)
        assert pixels.std() > 1.0  # a render of the model, not a blank frame


def test_logging_and_prior_views_change_no_number(runs):
    """The same run without the log and the prior views: no events, no prior_views/, and to the bit the same
    NeRF-stage losses (strips were rendered at 3, 6 and 9, gradient norms read at every step, the prior's views
    drawn before step 1), weights and detector. The DMTet stage is compared to 1e-4: on CPU it differs between
    two identical runs even without the log (a few ulps from step 11 on)."""
    folder, _, quiet = runs
    logged, silent = _result(folder), _result(quiet)
    assert not (quiet / "tb").exists() and "events" not in silent["outputs"] and logged["outputs"]["events"] == "tb"
    assert not (quiet / "prior_views").exists() and "prior_views" not in silent["outputs"]
    assert silent["prior_views"] == {"skipped": "log.prior_views is off"} and len(logged["prior_views"]["views"]) == 8
    assert [v["file"] for v in logged["views"]] == [v["file"] for v in silent["views"]]
    for v in logged["views"]:  # the trained model's renders: identical with OMP_NUM_THREADS=1; one level allowed
        a, b = (np.asarray(Image.open(f / v["file"])).astype(int) for f in (folder, quiet))  # for the DMTet wobble
        assert np.abs(a - b).max() <= 1, v["file"]
    for key in ("config_hash", "weights", "detector", "switch_iteration"):
        assert logged[key] == silent[key], key
    nerf_iters = logged["config"]["train"]["nerf_iters"]
    assert logged["loss"].keys() == silent["loss"].keys()
    for term, pairs in logged["loss"].items():
        other = silent["loss"][term]
        assert [p for p in pairs if p[0] <= nerf_iters] == [p for p in other if p[0] <= nerf_iters], term
        assert np.allclose(np.array(pairs, dtype=float), np.array(other, dtype=float), rtol=1e-4), term


def test_the_prior_views_are_the_detector_azimuths_and_redraw_from_the_record(runs, toy_input, tmp_path):
    """prior_views/az_DDD.png at the detector's 8 azimuths, at the 3D prior's input size, drawn with the tiny
    preset's 4 DDIM steps; the same views again, to the byte, from the run's config.yaml, its input and the
    seeds result.json names (a fresh process, a fresh folder)."""
    import torch

    from c123.preprocess import prepare_input
    from c123.prior_views import draw_prior_views
    from c123.priors.loading import load_priors
    from c123.reconstruct import condition_priors

    folder, _, _ = runs
    result = _result(folder)
    prior = result["prior_views"]
    assert result["outputs"]["prior_views"] == "prior_views"
    assert [v["file"] for v in prior["views"]] == [f"prior_views/az_{a:03d}.png" for a in range(0, 360, 45)]
    assert [v["azimuth"] for v in prior["views"]] == [45.0 * i for i in range(8)]
    assert prior["sampler"] == {"steps": 4, "guidance_scale": 3.0, "eta": 1.0, "seed": result["seed"]}
    assert prior["model_id"] == result["model_ids"]["zero123"] and prior["reused"] is False
    for v in prior["views"]:
        pixels = np.asarray(Image.open(folder / v["file"]))
        assert pixels.shape == (32, 32, 3) and pixels.std() > 1.0

    cfg = resolve_config(config_file=folder / "config.yaml")
    inp = prepare_input(toy_input.rgba, prompt=result["prompt"], cfg=cfg, case_id=result["case"])  # as the CLI
    priors = load_priors(cfg, "cpu")
    rgba = torch.from_numpy(inp.rgba).float().div(255).permute(2, 0, 1)[None]
    condition_priors(priors, rgba, inp.prompt, cfg, "cpu")
    again = draw_prior_views(priors.zero123, cfg, tmp_path, "cpu", input_digest=result["input_digest"])
    assert [(v["file"], v["seed"]) for v in again["views"]] == [(v["file"], v["seed"]) for v in prior["views"]]
    for v in prior["views"]:
        assert (tmp_path / v["file"]).read_bytes() == (folder / v["file"]).read_bytes(), v["file"]


def test_the_view_page_shows_the_facts_of_result_json(runs, tmp_path):
    folder, _, _ = runs
    result = _result(folder)
    page = build_view(folder, tmp_path / "view")
    html = page.read_text()
    w = result["weights"]
    assert f"w3D {w['w3d'][-1]:.3f} · w2D {w['w2d'][-1]:.3f}" in html and f"step {result['switch_iteration']}" in html
    assert f"S^k {result['detector']['S'][-1]:.4f}" in html and result["config_hash"] in html
    assert "tensorboard --logdir" in html and 'data-glb-script="glb/case-0.js"' in html
    assert sorted(p.name for p in (tmp_path / "view" / "plots").iterdir()) == [
        "case-0-detector.png", "case-0-loss.png", "case-0-weights.png"]
    assert "https://" not in html and "http://" not in html


@pytest.mark.browser
@needs_chromium
def test_the_view_page_opened_from_disk_shows_the_glb_in_chromium(runs, tmp_path):
    folder, _, _ = runs
    page = build_view(folder, tmp_path / "view")
    shot = tmp_path / "view.png"
    dom = assert_viewer_renders(page, shot)
    (model,) = dom["models"]
    glb = trimesh.load(folder / "mesh" / "mesh.glb", force="mesh")
    assert model["size"] == pytest.approx(list(glb.extents), rel=1e-4)  # the viewer holds this very mesh
    assert dom["videos"] == 1 and dom["images"] >= 4 + 8 + 3 + 1  # views, prior views, curves, reference
    assert [p["alt"] for p in dom["prior_views"]] == [f"3D prior {a}°" for a in range(0, 360, 45)]
    assert all(p["width"] == 32 for p in dom["prior_views"]), dom["prior_views"]  # loaded: the prior's input size
    assert "orbit views and what the 3D prior imagines" in dom["text"] and "3D prior, before training" in dom["text"]
    print(f"viewer screenshot: {shot}")


@pytest.mark.browser
@needs_chromium
def test_a_served_run_folder_shows_one_entry_per_case(runs, tmp_path):
    folder, _, quiet = runs
    run = tmp_path / "run"
    shutil.copytree(folder, run / "cases" / "a")
    shutil.copytree(quiet, run / "cases" / "b")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "c123.cli", "view", run, "--serve", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = [server.stdout.readline()]
        while lines[-1] and not lines[-1].startswith("serving "):  # past e.g. matplotlib's font-cache notice
            lines.append(server.stdout.readline())
        url = lines[-1].split()[1]
        assert lines[-2].startswith("viewer: ") and url.startswith("http://127.0.0.1:"), lines
        dom = assert_viewer_renders(url, tmp_path / "served.png")
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=30)
    assert server.returncode == 0 and "stopped serving" in rest, rest
    assert len(dom["models"]) == 2 and dom["videos"] == 2
    assert not (run / "view" / "glb").exists()  # served: the page fetches the GLBs themselves
