"""Config values are checked when a config is built: types from the dataclass annotations, the choices and ranges
declared at each field (its Literal type, its metadata), devices that exist; each bad value is one line naming the field and a working value, before anything runs."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
from PIL import Image

from c123.cli import main
from c123.config import Bounds, ReconstructConfig, apply_overrides, tiny
from c123.config_checks import (ConfigError, allowed_texts, check_allowed, check_device_exists, check_section,
                                check_types, validate)

BAD = {
    # the attack list: each ended in a traceback deep in the run, or ran with nonsense
    "train.ref_every=0": "train.ref_every=0 must be >= 1",                         # ZeroDivisionError
    "schedule.check_interval=0": "schedule.check_interval=0 must be >= 1",         # ZeroDivisionError
    "train.nerf_size=0": "train.nerf_size=0 must be >= 1",                         # IndexError
    "camera.radius_range=[3.0]": "camera.radius_range=[3.0] must be a list of 2",  # TypeError in the sampler
    "camera.polar_range=[1,2,3]": "camera.polar_range=[1, 2, 3] must be a list of 2",
    "train.lr=-0.001": "train.lr=-0.001 must be > 0",
    "seed=-1": "seed=-1 must be in [0, 4294967295]",
    f"seed={2**40}": f"seed={2**40} must be in [0, 4294967295]",
    "train.nerf_iters=-5": "train.nerf_iters=-5 must be >= 1",
    "train.dmtet_iters=-5": "train.dmtet_iters=-5 must be >= 0",                    # DMTet at steps -5..-2
    "train.nerf_iters=true": "train.nerf_iters=true must be an integer",            # taken as 1
    "train.lr=NaN": "train.lr=NaN must be a finite number",
    "loss.rgb=Infinity": "loss.rgb=Infinity must be a finite number",
    "prior.t_range_nerf=[0.6,0.2]": "prior.t_range_nerf=[0.6, 0.2] must be [low, high] with low <= high",
    "schedule.check_start=60": "schedule.check_start=60 must not exceed schedule.check_end=50",
    "train.optimizer=sgd": "train.optimizer=\"sgd\" must be one of adan, adam",
    "preprocess.border_ratio=1": "preprocess.border_ratio=1.0 must be in [0, 1)",  # the object would vanish
    "concept.token=<a b>": "concept.token=\"<a b>\" must be one word without spaces",
    "nerf.interpolation=cubic": "nerf.interpolation=\"cubic\" must be one of smoothstep, linear",
    "prior.render_latents=mode": "prior.render_latents=\"mode\" must be one of sample, mean",
    "schedule.variant=2d-only": "schedule.variant=\"2d-only\" must be one of consistent123, 3d-only",
    "prior.oracle_scene=moon": "prior.oracle_scene=\"moon\" must be null, 'case' or a synthetic scene (",
    "train.ref_mask_threshold=1": "train.ref_mask_threshold=1.0 must be null or in [0, 1)",
    "camera.fovy=180": "camera.fovy=180.0 must be in (0, 180) degrees",
    "nerf.base_resolution=4096": "nerf.base_resolution=4096 must not exceed nerf.finest_resolution=128",
}


@pytest.mark.parametrize("override", list(BAD))
def test_each_bad_value_is_one_line_naming_the_field_and_a_fix(override):
    cfg = apply_overrides(tiny("/nowhere"), [override])
    with pytest.raises(ConfigError) as err:
        validate(cfg, check_device=False)
    message = str(err.value)
    assert message.startswith(f"config {BAD[override]}"), message
    assert "\n" not in message and "e.g. --set " in message


def test_a_number_for_a_flag_is_refused_where_overrides_are_applied():
    from c123.errors import C123Error

    with pytest.raises(C123Error, match=r"^override 'train.export_mesh' expects bool, got 1$"):
        apply_overrides(tiny("/nowhere"), ["train.export_mesh=1"])
    cfg = tiny("/nowhere")
    cfg.train.export_mesh = 1  # set in code: the check from the annotation catches it
    with pytest.raises(ConfigError, match=r"^config train.export_mesh=1 must be true or false"):
        validate(cfg, check_device=False)


def test_presets_pass_and_the_error_offers_the_default_value():
    for cfg in (ReconstructConfig(), tiny("/nowhere")):
        assert validate(cfg, check_device=False) is cfg
    with pytest.raises(ConfigError, match=r"e\.g\. --set train\.ref_every=4$"):
        validate(apply_overrides(tiny("/nowhere"), ["train.ref_every=0"]), check_device=False)


def test_every_declared_rule_is_understood_and_names_existing_fields():
    """A field's `allowed` metadata always yields a sentence, its computed choices import, and `not_above`
    names a sibling field (an AttributeError when one was renamed)."""
    cfg = ReconstructConfig()
    texts = allowed_texts(cfg)
    for top in dataclasses.fields(cfg):
        section = getattr(cfg, top.name)
        own = ([(f"{top.name}.{f.name}", f) for f in dataclasses.fields(section)]
               if dataclasses.is_dataclass(section) else [(top.name, top)])
        for path, f in own:
            assert ("allowed" in f.metadata) <= (path in texts), path
            if "not_above" in f.metadata:
                getattr(section, f.metadata["not_above"])
    assert texts["train.optimizer"] == "must be one of adan, adam"  # from the Literal type
    assert texts["train.nerf_iters"] == "must be >= 1"  # from the metadata
    assert "prior.model_cache" not in texts  # any text or null


def test_a_prior_section_alone_is_checked_as_in_a_whole_config():
    from c123.config import PriorConfig

    check_section(PriorConfig(), "prior")
    with pytest.raises(ConfigError, match=r'^config prior.precision="bf16" must be one of fp16, fp32: e\.g\. --set '
                                          r'prior.precision="fp16"$'):
        check_section(PriorConfig(precision="bf16"), "prior")


def test_devices_must_exist():
    check_device_exists("auto", 0)
    check_device_exists("cpu", 0)
    check_device_exists("cuda:1", 2)
    with pytest.raises(ConfigError, match=r"train.device='cuda' but this machine has no CUDA GPU: use --set "
                                          r"train.device=auto"):
        check_device_exists("cuda", 0)
    with pytest.raises(ConfigError, match="has 1 CUDA device"):
        check_device_exists("cuda:1", 1)
    with pytest.raises(ConfigError, match="is not a device name"):
        check_device_exists("gpu0", 1)


@dataclasses.dataclass
class Section:
    knob: int = 3
    """An integer knob."""
    pair: tuple[float, float] = dataclasses.field(default=(0.0, 1.0), metadata={"allowed": Bounds(0, 1)})
    """A pair."""
    mode: Literal["on", "off"] = "on"
    """A choice."""


@dataclasses.dataclass
class Config:
    section: Section = dataclasses.field(default_factory=Section)
    """A section."""


def test_a_field_added_later_is_type_checked_from_its_annotation():
    """Other code adds config fields; their types are checked without a rule written for them."""
    check_types(Config())
    with pytest.raises(ConfigError, match=r"^config section.knob=true must be an integer"):
        check_types(Config(Section(knob=True)))
    with pytest.raises(ConfigError, match=r"section.pair=\[1.0, \"x\"\] must be a list of 2: \[a finite number, "):
        check_types(Config(Section(pair=(1.0, "x"))))


def test_a_field_added_later_is_range_checked_from_its_declaration():
    """A new field's Literal values and metadata range are checked with no rule written elsewhere."""
    check_allowed(Config())
    with pytest.raises(ConfigError, match=r"^config section.mode=3 must be text"):
        check_types(Config(Section(mode=3)))
    with pytest.raises(ConfigError, match=r'^config section.mode="auto" must be one of on, off'):
        check_allowed(Config(Section(mode="auto")))
    with pytest.raises(ConfigError, match=r"^config section.pair=\[0.5, 2.0\] must be \[low, high\] with low <= "
                                          r"high within \[0, 1\]"):
        check_allowed(Config(Section(pair=(0.5, 2.0))))


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "in" / "dot_rgba.png"
    path.parent.mkdir()
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    img.paste((200, 50, 50, 255), (8, 8, 24, 24))
    img.save(path)
    return path


@pytest.mark.parametrize("args,expected", [
    (["--set", "train.ref_every=0"], "config train.ref_every=0 must be >= 1"),
    (["--set", "train.device=cuda"], "config train.device='cuda' but this machine has no CUDA GPU"),
    (["--seed", "-1"], "config seed=-1 must be in [0, 4294967295]"),
    (["--seed", "2**40"], "c123 reconstruct: argument --seed: invalid int value: '2**40'"),
])
def test_reconstruct_refuses_bad_values_before_anything_runs(tmp_path, image, capsys, args, expected):
    import torch

    if "cuda" in expected and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    code = main(["reconstruct", str(image), "--prompt", "a dot", "--preset", "tiny", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith(f"error: {expected}"), err
    assert not out.exists() and sorted(p.name for p in image.parent.iterdir()) == ["dot_rgba.png"]
