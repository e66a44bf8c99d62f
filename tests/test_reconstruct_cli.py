"""`c123 reconstruct` as a user runs it: the tiny preset end to end, resume after a kill, bad input, and run
folders at URLs (S3 on a moto server on 127.0.0.1; unknown and in-memory schemes refused)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from data_support import synthetic_input
from mesh_checks import mesh_defects
from storage_support import s3, s3_server

MICRO = ["--preset", "tiny", "--set", "train.nerf_iters=9", "train.dmtet_iters=3", "train.eval_views=4",
         "train.video_frames=4", "train.checkpoint_every=0", "schedule.check_start=3", "schedule.check_end=9",
         "schedule.check_interval=3", "schedule.rate_window=2"]
"""The tiny preset cut to 12 steps (tests/test_run_outputs.py's micro run)."""


def c123(*args, env=None, **kw) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "c123.cli", *map(str, args)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def run_c123(*args, env=None, timeout=600, cwd=None) -> tuple[int, str]:
    proc = c123(*args, env=env, cwd=cwd)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, toy_input):
    """The tiny preset on a rendered input (the toy scene), killed once mid-NeRF-stage and then rerun to the end."""
    root = tmp_path_factory.mktemp("tiny")
    env = {"C123_TINY_MODELS": str(root / "models")}
    out = root / "out"
    args = ["reconstruct", toy_input.rgba, "--depth", toy_input.depth, "--prompt", toy_input.prompt,
            "--preset", "tiny", "--seed", "3", "--out", out, "--set", "train.checkpoint_every=10"]
    first = c123(*args, env=env, start_new_session=True)
    ckpt = out / "checkpoints" / "nerf.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    started = time.perf_counter()
    code, log = run_c123(*args, env=env)
    assert code == 0, log
    return out, log, time.perf_counter() - started


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_run):
    out, log, _ = tiny_run
    result = json.loads((out / "result.json").read_text())
    assert "resumed from step" in log
    assert result["resumed_from"] is not None and result["resumed_from"] >= 10
    # the killed attempt drew the 3D prior's views before its first step: the resumed run keeps them
    assert result["prior_views"]["reused"] is True and result["outputs"]["prior_views"] == "prior_views"
    assert all((out / v["file"]).is_file() for v in result["prior_views"]["views"])
    # the TensorBoard curves of both attempts join into one: what the killed attempt logged after its checkpoint
    # is purged, so every step appears once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("weights/w2D")]
    assert steps == result["weights"]["iterations"] and len(list((out / "tb").iterdir())) == 2
    assert [e.step for e in events.Scalars("detector/S")] == result["detector"]["iterations"]


def test_a_rerun_with_another_image_in_the_same_folder_starts_fresh_with_a_notice(tiny_run, tmp_path):
    out, _, _ = tiny_run
    reused = tmp_path / "reused"
    shutil.copytree(out, reused)
    before = (reused / "views" / "view_002.png").read_bytes()
    env = {"C123_TINY_MODELS": str(out.parent / "models")}
    mug = synthetic_input(tmp_path, "mug")
    code, log = run_c123("reconstruct", mug.rgba, "--prompt", mug.prompt,
                         "--preset", "tiny", "--seed", "3", "--out", reused, "--set", "train.checkpoint_every=10",
                         env=env)
    assert code == 0, log
    assert "ignoring" in log and "another input" in log and "resumed from" not in log, log
    result = json.loads((reused / "result.json").read_text())
    assert result["resumed_from"] is None and result["case"] == "mug"  # case ids drop the _rgba suffix
    assert any("another input" in n for n in result["notices"])
    assert (reused / "views" / "view_002.png").read_bytes() != before
    assert result["prior_views"]["reused"] is False  # another input: the prior's views are drawn again
    record = json.loads((reused / "prior_views" / "prior_views.json").read_text())
    assert record["drawn_for"]["input_digest"] == result["input_digest"] and record["record"] == result["prior_views"]


def test_tiny_preset_runs_the_full_two_stage_method(tiny_run):
    out, _, seconds = tiny_run
    result = json.loads((out / "result.json").read_text())
    cfg = result["config"]
    print(f"tiny run (resumed part) took {seconds:.0f} s; switch at {result['switch_iteration']}")
    ids = result["model_ids"]
    assert {"zero123", "stable_diffusion", "clip"} <= set(ids) and "fp16_ema" in ids["zero123_variant"]
    detector = result["detector"]
    assert len(detector["S"]) >= cfg["schedule"]["rate_window"] + 1
    assert cfg["schedule"]["check_start"] <= result["switch_iteration"] <= cfg["schedule"]["check_end"]
    w2d = result["weights"]["w2d"]
    assert w2d[0] == 0.0 and 0.5 < w2d[-1] < 0.64  # exponential dynamic prior, r -> 1 at the end
    assert result["seed"] == 3 and result["code_version"] and result["config_hash"]
    assert set(result["stage_seconds"]) == {"nerf", "dmtet", "export"}
    views = sorted((out / "views").glob("view_*.png"))
    assert len(views) == cfg["train"]["eval_views"]
    assert np.asarray(Image.open(views[0])).shape == (64, 64, 4)
    for name in ("reference.png", "views/ref_render.png", "video/rgb.mp4", "video/rgb.gif", "video/normal.mp4",
                 "mesh/mesh.obj", "mesh/mesh.mtl", "mesh/mesh.png"):
        assert (out / name).stat().st_size > 0, name
    glb = trimesh.load(out / "mesh" / "mesh.glb", force="mesh")
    assert len(glb.faces) > 0 and glb.visual.material is not None


def test_the_exported_mesh_has_no_degenerate_faces_and_no_non_manifold_edges(tiny_run):
    # the one mesh check: it reuses this module's tiny reconstruction (tests/test_reconstruct_mesh.py paid for a second)
    out, _, _ = tiny_run
    for name in ("mesh.glb", "mesh.obj"):
        degenerate, non_manifold, faces = mesh_defects(out / "mesh" / name)
        assert faces > 0 and degenerate == 0 and non_manifold == 0, (name, degenerate, non_manifold, faces)


def test_unreadable_image_is_a_one_line_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    code, out = run_c123("reconstruct", bad, "--prompt", "x", "--preset", "tiny", "--out", tmp_path / "o")
    assert code == 2 and out.strip().count("\n") == 0 and "broken.png" in out, out


def test_image_without_alpha_or_mask_and_no_background_remover_is_a_one_line_error(tmp_path):
    # with a background remover (the default) a plain photo is cut out: tests/test_photo.py
    rgb = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(rgb)
    code, out = run_c123("reconstruct", rgb, "--prompt", "x", "--preset", "tiny", "--out", tmp_path / "o",
                         "--set", "preprocess.background_model=")
    assert code == 2 and out.strip().count("\n") == 0 and "photo.jpg" in out and "--mask" in out, out


def test_empty_prompt_is_refused_when_stable_diffusion_is_needed(tmp_path, toy_input):
    # with a caption model (the default) a missing prompt is captioned: tests/test_photo.py
    code, out = run_c123("reconstruct", toy_input.rgba, "--prompt", "  ", "--preset", "tiny",
                         "--out", tmp_path / "o", "--set", "preprocess.caption_model=")
    assert code == 2 and out.strip().count("\n") == 0 and "--prompt" in out, out


def test_missing_weights_name_the_model_and_the_download_command(tmp_path, toy_input):
    started = time.perf_counter()
    code, out = run_c123("reconstruct", toy_input.rgba, "--depth", toy_input.depth, "--prompt", toy_input.prompt,
                         "--preset", "paper", "--out", tmp_path / "o", env={"HF_HOME": str(tmp_path / "hf")})
    header, error = out.strip().splitlines()  # what is about to run, then the one-line error
    assert code == 2 and header.startswith("c123 ") and "preset paper" in header, out
    assert "bennyguo/zero123-xl-diffusers" in error and "hf download" in error, out
    assert time.perf_counter() - started < 60  # no hub retries (the import of torch dominates)


# ---- run folders at URLs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3env(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with the bucket c123-runs: the environment a client needs."""
    with s3_server(tmp_path_factory.mktemp("moto")) as env:
        yield env


def test_reconstruct_to_s3_uploads_the_run_and_makes_no_folder_named_after_the_url(tmp_path, toy_input, s3env):
    models, env = tmp_path / "models", s3env
    url = f"s3://c123-runs/{uuid.uuid4().hex}/toy"  # its local scratch copy is per URL: none left from before
    key = url[len("s3://"):]
    code, log = run_c123("reconstruct", toy_input.rgba, "--depth", toy_input.depth, "--prompt", toy_input.prompt,
                         "--out", url, *MICRO, cwd=tmp_path,
                         env={**env, "C123_TINY_MODELS": str(models)})
    assert code == 0, log
    fs = s3(env)
    stored = sorted(p[len(key) + 1:] for p in fs.find(key))
    result = json.loads(fs.cat_file(f"{key}/result.json"))
    glb = fs.cat_file(f"{key}/mesh/mesh.glb")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("s3")], "a local folder named after the URL"
    assert {"result.json", "config.yaml", "mesh/mesh.glb", "mesh/mesh.obj", "video/rgb.mp4"} <= set(stored), stored
    assert not [p for p in stored if p.startswith("checkpoints/")]  # resume state stays on this machine
    assert result["case"] == "toy" and len(glb) > 0
    assert f"wrote {url}/result.json" in log and f"uploading to {url}" in log, log
    (look,) = [line for line in log.splitlines() if line.startswith("look at it: c123 view ")]
    local = Path(look.split()[5])
    assert look.endswith("(the local copy)") and json.loads((local / "result.json").read_text()) == result


@pytest.mark.parametrize("out, expected", [
    ("foo://x", "error: run folder foo://x: unknown storage scheme 'foo'"),
    ("memory://x/y", "error: run folder memory://x/y: memory:// lives in this process's memory and would vanish"),
    ("s3://no-such-bucket/x", "error: run folder s3://no-such-bucket/x: its bucket does not exist"),
])
def test_a_url_that_cannot_hold_the_run_is_one_line_before_any_compute(tmp_path, toy_input, s3env, out, expected):
    code, log = run_c123("reconstruct", toy_input.rgba, "--depth", toy_input.depth, "--prompt", "x", "--out", out,
                         *MICRO, cwd=tmp_path, env={**s3env, "C123_TINY_MODELS": str(tmp_path / "m")})
    assert code == 2 and log.strip().count("\n") == 0 and log.strip().startswith(expected), log
    assert not list(tmp_path.iterdir())  # no folder 'foo:' or 'memory:', no models made


@pytest.mark.parametrize("command", [["view", "RUN", "--out", "s3://b/page"], ["view", "s3://b/run"],
                                     ["preprocess", "IMAGE", "--out", "s3://b/pre"], ["models", "tiny", "gs://b/m"]])
def test_commands_that_write_local_folders_refuse_a_url_in_one_line(tmp_path, toy_input, capsys, command):
    from c123.cli import main
    from fixtures_runs import write_case

    write_case(tmp_path / "run", case="toy", seed=0, switch=3)
    args = [{"RUN": str(tmp_path / "run"), "IMAGE": str(toy_input.rgba)}.get(a, a) for a in command]
    before = sorted(tmp_path.rglob("*"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "local folders only" in err and "://" in err, err
    assert sorted(tmp_path.rglob("*")) == before
