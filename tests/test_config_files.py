"""Configs as files and the command line around them: `c123 config show/list`, `--config FILE.yaml` under
`--set`, `--set` before or after the image, field docstrings as help, `--version`, run folders that never
clobber, case ids without `_rgba`. Nothing here trains (the reconstruct runs stop at the missing weights)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from c123.cli import build_parser, main, resolve_args_config
from c123.config import preset
from c123.config_files import ConfigFileError, field_docs, read_config_file, resolve_config, to_yaml
from c123.errors import C123Error
from c123.outputs import case_name, new_run_dir, plain_case_id
HEADER = re.compile(r"^c123 \S+: (\S+), preset (\w+), variant (\S+), seed (\d+), input camera elevation \S+, "
                    r"azimuth \S+, config ([0-9a-f]{16}) -> (.+)$")


@pytest.fixture()
def image(toy_input):
    return toy_input.rgba


def _reconstruct_header(capsys, *args) -> tuple[int, re.Match | None, str]:
    """Run `c123 reconstruct ARGS` in this process; (exit status, the header line's match, stderr)."""
    code = main(["reconstruct", *map(str, args)])
    captured = capsys.readouterr()
    first = (captured.out.splitlines() or [""])[0]
    return code, HEADER.match(first), captured.err.strip()


# ---- YAML round trip ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["paper", "fast", "tiny"])
def test_a_shown_preset_reads_back_to_the_same_config(tmp_path, name, capsys):
    assert main(["config", "show", name]) == 0
    text = capsys.readouterr().out
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    back = resolve_config(config_file=path)
    assert back.to_dict() == preset(name).to_dict() and back.hash() == preset(name).hash()
    assert f"config hash {preset(name).hash()}" in text.splitlines()[0]
    # every field is there, under its docstring as a comment
    docs = field_docs()
    assert "# NeRF-stage iterations (--iters of the first run)." in text
    assert len(re.findall(r"^\s*[a-z_0-9]+: \S", text, re.M)) == len(docs)


def test_reconstruct_with_the_shown_paper_config_resolves_to_the_paper_hash(tmp_path, toy_input):
    """`c123 config show paper > p.yaml; c123 reconstruct --config p.yaml ...` is `--preset paper`: the
    same config hash in the header both print before stopping at the (absent) paper weights."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    c123 = [sys.executable, "-m", "c123.cli"]
    shown = subprocess.run([*c123, "config", "show", "paper"], env=env, capture_output=True, text=True, check=True)
    (tmp_path / "p.yaml").write_text(shown.stdout)
    headers = []
    for choice in (["--config", tmp_path / "p.yaml"], ["--preset", "paper"]):
        run = subprocess.run([*c123, "reconstruct", toy_input.rgba, "--prompt", "a toy", "--depth", toy_input.depth,
                              *choice, "--out", tmp_path / "o"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and run.stderr.strip().count("\n") == 0, run.stderr
        assert "bennyguo/zero123-xl-diffusers" in run.stderr  # it got as far as loading the priors
        headers.append(HEADER.match(run.stdout.splitlines()[0]))
    assert headers[0].group(5) == headers[1].group(5) == preset("paper").hash()
    assert not (tmp_path / "o").exists()


def test_set_goes_on_top_of_the_file_and_the_file_on_top_of_its_preset(tmp_path):
    path = tmp_path / "part.yaml"
    path.write_text("preset: tiny\ntrain:\n  nerf_iters: 7\n  lr: 1e-3\nseed: 4\n")
    cfg = resolve_config(config_file=path, overrides=["train.nerf_iters=9"])
    assert (cfg.preset, cfg.seed, cfg.train.nerf_iters, cfg.train.lr) == ("tiny", 4, 9, 1e-3)
    assert cfg.nerf.num_levels == preset("tiny").nerf.num_levels  # the rest is the file's preset
    assert resolve_config(config_file=path, seed=5).seed == 5


@pytest.mark.parametrize("text,message", [
    ("train:\n  nerf_iters: [1\n", r"^config file \S+part.yaml line 3 is not valid YAML"),
    ("train:\n  nerf_iter: 3\n", r"unknown config key 'train.nerf_iter': did you mean train.nerf_iters\?"),
    ("train: 3\n", r"'train' is a section, so its value must be a mapping"),
    ("- 1\n- 2\n", r"holds a list, not a mapping of fields"),
    ("preset: huge\n", r"unknown preset 'huge': use one of paper, fast, tiny"),
])
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "part.yaml"
    path.write_text(text)
    with pytest.raises(C123Error, match=message) as err:
        resolve_config(config_file=path)
    assert "\n" not in str(err.value) and "part.yaml" in str(err.value)


def test_a_file_and_a_preset_flag_that_disagree_are_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("preset: tiny\n")
    with pytest.raises(ConfigFileError, match="starts from preset 'tiny' but --preset says 'paper'"):
        resolve_config("paper", config_file=path)
    with pytest.raises(ConfigFileError, match="cannot be read"):
        read_config_file(tmp_path / "missing.yaml")


def test_a_value_of_the_wrong_type_in_a_file_is_caught_by_the_config_checks(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  ref_mask_threshold: null\n")
    assert resolve_config(config_file=path).train.ref_mask_threshold is None  # null is a value of this field
    path.write_text("train:\n  ref_mask_threshold: null\n  ref_every: true\n")
    with pytest.raises(C123Error, match=r"config train.ref_every=true must be an integer"):
        resolve_config(config_file=path)  # the one resolver checks every value it returns


def test_one_resolver_takes_a_variant_with_its_weight_shape_for_the_cli_and_the_benchmark():
    from c123.config_files import parse_variant

    assert parse_variant("consistent123") == ("consistent123", None)
    assert parse_variant("consistent123:linear") == parse_variant("consistent123@linear") == ("consistent123", "linear")
    cfg = resolve_config("tiny", "consistent123:log", 2, ["train.nerf_iters=9"])
    assert (cfg.schedule.variant, cfg.schedule.weight_shape, cfg.seed, cfg.train.nerf_iters) == (
        "consistent123", "log", 2, 9)
    assert resolve_config("tiny", "3d-only").schedule.weight_shape == "exp"
    for bad, message in [(("tiny", "nope"), "unknown variant 'nope': use one of consistent123, "),
                         (("tiny", "consistent123:cubic"), "unknown weight shape 'cubic' in variant "
                                                           "'consistent123:cubic': use one of exp, "),
                         (("huge",), "unknown preset 'huge'"),
                         (("tiny", None, -1), "config seed=-1 must be in [0, 4294967295]")]:
        with pytest.raises(C123Error) as err:
            resolve_config(*bad)
        assert str(err.value).startswith(message), err.value


def test_logging_fields_do_not_change_the_config_hash():
    cfg = preset("paper")
    quiet = resolve_config("paper", overrides=["log.tensorboard=false", "log.strip_every=0"])
    assert quiet.hash() == cfg.hash() and quiet.to_dict() != cfg.to_dict()


# ---- the command line -------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["set-first", "image-first", "split"])
def test_set_before_or_after_the_image_both_work(tmp_path, image, capsys, order):
    # no depth map and no depth model: the run goes straight to the (absent) priors
    overrides = ["train.nerf_iters=10", "prior.zero123_model=/nonexistent/zero123", "preprocess.depth_model="]
    common = ["--prompt", "a dot", "--preset", "paper", "--out", tmp_path / "o"]
    args = {"set-first": ["--set", *overrides, image, *common],
            "image-first": [image, *common, "--set", *overrides],
            "split": ["--set", overrides[0], image, "--set", *overrides[1:], *common]}[order]
    code, header, err = _reconstruct_header(capsys, *args)
    expected = resolve_config("paper", overrides=overrides).hash()
    assert code == 2 and header is not None and header.group(5) == expected, (header, err)
    assert header.group(1) == "toy" and "/nonexistent/zero123" in err and err.count("\n") == 0


def test_a_bad_override_next_to_the_image_is_one_line(tmp_path, image, capsys):
    code, _, err = _reconstruct_header(capsys, "--set", "train.ref_every=0", image, "--prompt", "x", "--out",
                                       tmp_path / "o")
    assert code == 2 and err == "error: config train.ref_every=0 must be >= 1: e.g. --set train.ref_every=4"
    code, _, err = _reconstruct_header(capsys, image, "stray", "--prompt", "x", "--set", "train.lr=1")
    assert code == 2 and err.count("\n") == 0 and "stray" in err
    code, _, err = _reconstruct_header(capsys, "--set", "train.lr=1", "--prompt", "x")
    assert code == 2 and "the image is missing" in err


def test_log_none_turns_the_events_off_in_the_resolved_config(image, capsys):
    assert main(["config", "show", "tiny", "--set", "log.tensorboard=false"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["log"]["tensorboard"] is False
    parsed = build_parser().parse_args(["reconstruct", str(image), "--log", "none", "--preset", "tiny"])
    assert resolve_args_config(parsed).log.tensorboard is False


def test_field_docstrings_are_the_help_and_version_is_printed():
    help_text = subprocess.run([sys.executable, "-m", "c123.cli", "reconstruct", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "train.nerf_iters = 5000\n      NeRF-stage iterations (--iters of the first run)." in help_text
    assert "log.tensorboard = true" in help_text and "--config FILE.yaml" in help_text
    version = subprocess.run([sys.executable, "-m", "c123.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and re.fullmatch(r"c123 0\.\d+\.\d+\S*\n", version.stdout), version.stdout


def test_config_list_names_every_preset_with_its_hash(capsys):
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["paper", "fast", "tiny", "verify"]
    assert all(f"config {preset(line.split()[0]).hash()}" in line for line in lines)


# ---- output folders and case ids --------------------------------------------------------------------------
def test_new_run_folders_never_reuse_a_folder(tmp_path):
    first, second = new_run_dir(tmp_path / "cactus", now=0), new_run_dir(tmp_path / "cactus", now=0)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == first.name + "-2" and re.fullmatch(r"\d{8}-\d{6}", first.name)


def test_case_ids_drop_the_rgba_suffix():
    assert case_name("data/cactus_rgba.png") == "cactus" and case_name("photo.jpg") == "photo"
    assert case_name("_rgba.png") == "_rgba" and plain_case_id("07") == "07" and plain_case_id("a.b_rgba") == "a.b"
