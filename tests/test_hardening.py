"""Hostile and unlucky inputs as the user meets them (issue 26): each is one line naming the file and the fix,
exit 2, nothing written outside the run folder, nothing finished lost. Inputs are made here (PIL, tiny
models), so no shared dataset is needed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from c123.cli import main
from c123.errors import InputError, WeightsMissingError

pytestmark = pytest.mark.timeout(900)


def object_png(path: Path, size=(64, 64), alpha: int = 255) -> Path:
    """An RGBA image with an opaque square in the middle (alpha `alpha` on the square, 0 around it)."""
    w, h = size
    pixels = np.zeros((h, w, 4), np.uint8)
    pixels[..., :3] = (200, 80, 40)
    pixels[h // 4: h - h // 4, w // 4: w - w // 4, 3] = alpha
    Image.fromarray(pixels).save(path)
    return path


def refused(capsys, code: int) -> str:
    """The one line a refused command printed (asserting exit 2 and a single line)."""
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture()
def env(tmp_path, monkeypatch, tiny_models):
    """Tiny models, a private cache, and the test folder as working directory (a default output lands there)."""
    monkeypatch.setenv("C123_TINY_MODELS", str(tiny_models))
    monkeypatch.setenv("C123_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- finding 4: configs bounded before parsing and printing -------------------------------------------
def _alias_bomb(path: Path) -> Path:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines.append("train:\n  nerf_iters: *i")  # 9^9 values, as a field's value
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.timeout(120)
def test_config_alias_bomb_huge_file_and_deep_nesting_are_refused_in_one_line(tmp_path, capsys):
    cases = {
        _alias_bomb(tmp_path / "bomb.yaml"): "holds more than 10,000 values (YAML aliases expanded)",
        tmp_path / "big.yaml": "is over 262,144 bytes, more than a config holds",
        tmp_path / "deep.yaml": "is nested too deeply to be a config",
    }
    (tmp_path / "big.yaml").write_text("train:\n  nerf_iters: [" + ", ".join(["1"] * 300_000) + "]\n")
    (tmp_path / "deep.yaml").write_text("train:\n  nerf_iters: " + "[" * 50_000 + "]" * 50_000 + "\n")
    for path, words in cases.items():
        err = refused(capsys, main(["config", "show", "tiny", "--config", str(path)]))
        assert f"config file {path} " in err and words in err, err


def test_a_config_file_that_never_ends_is_read_only_up_to_the_bound(capsys):
    err = refused(capsys, main(["config", "show", "tiny", "--config", "/dev/zero"]))
    assert "/dev/zero is over 262,144 bytes" in err


def test_a_long_list_value_is_printed_bounded_in_the_error(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("train:\n  nerf_iters: [" + ", ".join(["7"] * 5000) + "]\n")
    err = refused(capsys, main(["config", "show", "tiny", "--config", str(path)]))
    assert "train.nerf_iters" in err and len(err) < 400, err


def test_shown_summarises_an_alias_bomb_without_expanding_it():
    from c123.errors import shown

    value = ["lol"] * 9
    for _ in range(9):
        value = [value] * 9  # 9^10 values if printed in full
    text = shown(value)
    assert text.startswith("<a list of 9 items, over") and len(text) < 80
    assert shown([1, 2]) == "[1, 2]" and shown("x" * 500).endswith("(502 characters)")


# ---- finding 5: a damaged preprocessing cache is recomputed, and `c123 preprocess` shares it ------------
def test_a_damaged_preprocessing_cache_is_set_aside_and_recomputed_with_a_notice(env, capsys):
    image = object_png(env / "box.png")
    args = ["preprocess", str(image), "--prompt", "a red box", "--preset", "tiny"]
    assert main([*args, "--out", str(env / "first")]) == 0  # the depth is estimated (tiny DPT) into the cache
    first = capsys.readouterr().out
    assert "estimating it with" in first
    [entry] = [p for p in (env / "cache" / "preprocess").iterdir() if not p.name.startswith(".")]
    depth_bytes = (env / "first" / "box_depth.png").read_bytes()

    record = entry / "preprocess.json"
    record.write_text(record.read_text()[:40])  # truncated, as by a full disk or a killed copy
    assert main([*args, "--out", str(env / "second")]) == 0
    out = capsys.readouterr().out
    assert f"the cached preprocess folder {entry} cannot be read (JSONDecodeError" in out
    assert "set aside as" in out and "recomputing it" in out and (entry.parent / f"{entry.name}.damaged").is_dir()
    assert (env / "second" / "box_depth.png").read_bytes() == depth_bytes  # the same result again

    (entry / "box_rgba.png").unlink()  # a cached cut-out gone: recomputed, not blamed on the user's input
    assert main([*args, "--out", str(env / "third")]) == 0
    out = capsys.readouterr().out
    assert f"the cached preprocess folder {entry} cannot be read (InputError" in out and "recomputing it" in out
    assert (env / "third" / "box_depth.png").read_bytes() == depth_bytes

    # reconstruct's preprocessing of the same input is the one `c123 preprocess` cached: no model runs
    from c123.config import tiny
    from c123.preprocess import prepare_input

    said = []
    inp = prepare_input(image, prompt="a red box", cfg=tiny(), announce=said.append)
    assert inp.preprocessing.cached and said == [f"box.png: reusing its preprocessing from {entry} (no model runs)"]


# ---- finding 6: nothing opaque -----------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0, 100])
def test_an_image_with_nothing_opaque_is_one_line_for_reconstruct_preprocess_and_a_dataset_case(env, capsys, alpha):
    image = object_png(env / "ghost.png", alpha=alpha)
    for command in ("reconstruct", "preprocess"):
        err = refused(capsys, main([command, str(image), "--prompt", "a ghost", "--preset", "tiny",
                                    "--out", str(env / command)]))
        assert f"{image} has an alpha channel with no pixel above 127" in err and "--mask" in err
        assert not (env / command).exists()
    from c123.config import tiny
    from c123_pipeline.datasets.registry import load_dataset

    (env / "data").mkdir()
    object_png(env / "data" / "ghost.png", alpha=alpha)
    (env / "data" / "prompts.tsv").write_text("file\tprompt\nghost.png\ta ghost\n")
    [case] = load_dataset(str(env / "data")).cases
    with pytest.raises(InputError, match="no pixel above 127"):  # what the run records as the case's error
        case.load(tiny())


# ---- finding 7: output folders that cannot be written -------------------------------------------------
def test_an_output_path_that_is_a_file_or_under_a_file_is_one_line_and_nothing_is_written(env, capsys):
    image = object_png(env / "box.png")
    taken = env / "taken"
    taken.write_text("the user's file")
    for out, words in ((taken, "is a file, not a folder"), (taken / "sub", f"{taken} is a file, so no folder")):
        for argv in (["reconstruct", str(image), "--prompt", "a box", "--preset", "tiny", "--out", str(out)],
                     ["preprocess", str(image), "--prompt", "a box", "--preset", "tiny", "--out", str(out)],
                     ["models", "tiny", str(out)]):
            err = refused(capsys, main(argv))
            assert str(out) in err and words in err and "pass a" in err, err
    assert taken.read_text() == "the user's file" and sorted(p.name for p in env.iterdir()) == ["box.png", "taken"]


def test_a_read_only_output_folder_is_one_line(env, capsys, monkeypatch):
    import c123.outputs

    locked = env / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    monkeypatch.setattr(c123.outputs, "_read_only", lambda p: Path(p) == locked)  # as on a read-only mount
    err = refused(capsys, main(["models", "tiny", str(locked / "models")]))
    assert f"{locked} is on a read-only disk: pass a folder you can write to" in err
    assert list(locked.iterdir()) == []


def test_report_and_evaluate_run_folders_that_are_files_are_one_line(tmp_path, capsys):
    from c123_pipeline.cli import main as pipeline_main
    from c123_pipeline.tasks.run_folder import RunLock, check_run_json
    from c123.errors import C123Error
    from fixtures_runs import make_run

    run = make_run(tmp_path, "run", media=False)
    taken = tmp_path / "taken.html"
    taken.write_text("<p>mine</p>")
    err = refused(capsys, pipeline_main(["report", str(run), "--out", str(taken)]))
    assert f"--out {taken} is a file, not a folder" in err and taken.read_text() == "<p>mine</p>"
    for check in (lambda: check_run_json(taken / "run", "c10", "tiny"),  # `c123 evaluate`, before Prefect and Ray
                  lambda: RunLock(taken / "run").acquire()):  # and again when it locks the folder
        with pytest.raises(C123Error, match=re.escape(f"--out {taken}/run: {taken} is a file, so no folder can be")):
            check()


# ---- finding 8: a report's baseline of another dataset --------------------------------------------------
def test_report_refuses_a_baseline_run_of_another_dataset_as_evaluate_does(tmp_path, capsys):
    from c123_pipeline.cli import main as pipeline_main
    from fixtures_runs import make_run

    run = make_run(tmp_path, "c10-run", media=False)
    other = make_run(tmp_path, "rf-run", media=False)
    per_case = pd.read_parquet(other / "per_case.parquet").assign(dataset="realfusion15")
    per_case.to_parquet(other / "per_case.parquet")
    info = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**info, "dataset": "realfusion15"}))
    err = refused(capsys, pipeline_main(["report", str(run), "--baseline", str(other), "--out", str(tmp_path / "r")]))
    assert f"baseline {other} is a run of realfusion15, not c10: pass a run folder of the same dataset" in err
    assert not (tmp_path / "r").exists()


# ---- finding 9: the misleading or missing words ------------------------------------------------------------
@pytest.mark.parametrize("text,words", [
    ("case\tprompt\n", "prompts.tsv has only its header line and so lists no case"),
    ("", "prompts.tsv is empty and so lists no case"),
])
def test_an_empty_or_header_only_prompts_table_says_so(tmp_path, text, words):
    from c123.errors import DatasetError
    from c123_pipeline.datasets.registry import load_dataset

    object_png(tmp_path / "box_rgba.png")
    (tmp_path / "prompts.tsv").write_text(text)
    with pytest.raises(DatasetError, match=words) as caught:
        load_dataset(str(tmp_path))
    assert "matches no dataset layout" not in str(caught.value)


def test_a_latin1_prompts_table_in_a_users_folder_is_asked_to_be_utf8_not_redownloaded(tmp_path):
    from c123.errors import DatasetError
    from c123_pipeline.datasets.registry import load_dataset

    object_png(tmp_path / "box.png")
    (tmp_path / "prompts.tsv").write_bytes("file\tprompt\nbox.png\tun caf\xe9 rouge\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"prompts.tsv is not UTF-8 text \(byte \d+ is b'\\xe9'\): save it as "
                                           r"UTF-8") as caught:
        load_dataset(str(tmp_path))
    assert "re-download the dataset" not in str(caught.value)


def test_a_folder_named_like_an_image_is_called_a_folder(env, capsys):
    (env / "x.png").mkdir()
    err = refused(capsys, main(["reconstruct", str(env / "x.png"), "--prompt", "x", "--preset", "tiny"]))
    assert "x.png is a folder, not an image file" in err and not (env / "outputs").exists()


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (4000, 1)])
def test_images_too_small_to_hold_a_shape_are_refused_with_their_size(env, capsys, size):
    pixels = np.full((size[1], size[0], 4), 255, np.uint8)
    Image.fromarray(pixels).save(env / "dot.png")
    err = refused(capsys, main(["reconstruct", str(env / "dot.png"), "--prompt", "a dot", "--preset", "tiny",
                                "--out", str(env / "out")]))
    assert f"dot.png is {size[0]}x{size[1]} pixels: too small to reconstruct" in err and not (env / "out").exists()


def test_a_prompt_of_200000_characters_is_refused_before_any_model_runs(env, capsys):
    image = object_png(env / "box.png")
    for command in ("reconstruct", "preprocess"):
        err = refused(capsys, main([command, str(image), "--prompt", "a box " * 33_334, "--preset", "tiny"]))
        assert "is 200,004 characters" in err and "at most 1,000 characters" in err
    assert not (env / "cache").exists()


def test_truncated_model_weights_are_the_weights_line_with_the_fix(env, capsys, tiny_models, tmp_path, monkeypatch):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_models, damaged)
    weights = damaged / "dpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    monkeypatch.setenv("C123_TINY_MODELS", str(damaged))
    err = refused(capsys, main(["preprocess", str(object_png(env / "box.png")), "--prompt", "a box", "--preset",
                                "tiny", "--out", str(env / "out")]))
    assert f"the model files in {damaged / 'dpt'} cannot be loaded (SafetensorError" in err
    assert f"remove {damaged / 'dpt'} and rewrite the tiny models with `c123 models tiny {damaged}`" in err


def test_a_hub_snapshot_with_damaged_weights_names_its_download_command(tmp_path, tiny_models):
    import shutil

    from c123.priors.clip import ClipModel

    snapshot = tmp_path / "hub" / "models--openai--clip-vit-base-patch16" / "snapshots" / "abc123"
    shutil.copytree(tiny_models / "clip", snapshot)
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(WeightsMissingError, match=r"re-download it with `hf download openai/clip-vit-base-patch16 "
                                                  r"--force-download`"):
        ClipModel.from_pretrained(str(snapshot), "cpu")


def test_a_dataset_run_with_damaged_weights_stops_at_the_first_case(tmp_path):
    from c123_pipeline.tasks.actors import ActorPool, Job
    from pipeline_faults import ProbeCase
    from pipeline_support import ray_cluster

    ray_cluster()
    jobs = [Job(i, ProbeCase(c), "consistent123", 0, {}, str(tmp_path / c), "k") for i, c in
            enumerate(["a", "b", "c", "d"])]
    with ActorPool(1, resources={"num_cpus": 1, "num_gpus": 0}, work_fn="pipeline_faults:weights_damaged") as pool:
        outcomes = {job.case_id: outcome for job, outcome in pool.run(jobs)}
    assert all(o.status == "failed" for o in outcomes.values()) and len(outcomes) == 4
    tried = [c for c in "abcd" if (tmp_path / c / "tried").exists()]
    assert tried == ["a"], tried  # one case met the damaged weights; the others were not started
    assert outcomes["a"].error.startswith("WeightsMissingError: zero123: the model files")
    assert all(outcomes[c].error == f"not run: {outcomes['a'].error}" for c in "bcd")


def test_a_small_image_a_dropped_depth_map_and_a_cut_prompt_each_get_one_true_warning(env, capsys):
    """One short tiny-preset run: a 24x24 image (warned), a depth map with NaNs (dropped, with one warning, not
    a second "no depth map" one), and a prompt longer than Stable Diffusion's 77 tokens (warned)."""
    image = object_png(env / "small.png", size=(24, 24))
    depth = np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)
    depth[10:14, 10:14] = np.nan
    Image.fromarray(depth, "F").save(env / "depth.tiff")
    prompt = "a small red box with rounded corners " * 12
    short = ["train.nerf_iters=4", "train.dmtet_iters=0", "schedule.check_start=1", "schedule.check_end=3",
             "schedule.check_interval=1", "train.eval_views=2", "train.video_frames=2", "train.eval_size=16",
             "train.export_mesh=false", "log.tensorboard=false"]
    assert main(["reconstruct", str(image), "--depth", str(env / "depth.tiff"), "--prompt", prompt, "--preset",
                 "tiny", "--out", str(env / "run"), "--set", *short]) == 0
    warnings = json.loads((env / "run" / "result.json").read_text())["warnings"]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith(f"{image} is only 24x24 pixels: the reference view is scaled up")
    assert warnings[1].startswith(f"depth map {env / 'depth.tiff'} has NaN or infinite values at ")
    assert warnings[1].endswith("the depth loss is off")
    assert "Stable Diffusion reads 77" in warnings[2] and "shorten the prompt" in warnings[2]
    printed = capsys.readouterr()
    assert "no depth map and no depth model configured" not in printed.out + printed.err


def test_a_damaged_synthetic_render_in_the_cache_is_rendered_again_not_blamed_on_the_user(tmp_path):
    from c123_pipeline.datasets.layouts import read_synthetic

    first = read_synthetic(tmp_path, size=32)[0]
    good = first.rgba_path.read_bytes()
    first.rgba_path.write_bytes(good[:60])  # a render cut short in the cache
    again = read_synthetic(tmp_path, size=32)[0]
    assert again.rgba_path.read_bytes() == good and again.load().rgba.shape == (32, 32, 4)


def test_a_file_where_a_cache_folder_belongs_is_set_aside(tmp_path, monkeypatch):
    from c123.cache import cached_folder

    monkeypatch.setenv("C123_CACHE", str(tmp_path))
    (tmp_path / "kind").mkdir()
    (tmp_path / "kind" / "key").write_text("junk")
    folder, cached = cached_folder("kind", "key", lambda tmp: (tmp / "made").write_text("ok"))
    assert not cached and (folder / "made").read_text() == "ok" and (tmp_path / "kind" / "key.damaged").is_file()
