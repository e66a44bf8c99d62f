"""A plain photo as input: background removal, depth and caption estimated (and cached), `c123 preprocess`
files passed back to `c123 reconstruct`, the bad photos each refused in one line, and concept injection
(textual inversion) on the tiny Stable Diffusion. Every model is a tiny random one in the real layout,
loaded through the real `from_pretrained` path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from c123.config import tiny
from c123.errors import InputError
from c123.preprocess import load_input, prepare_input
from data_support import DATA, needs_dataset

C10 = DATA / "c10"
PHOTO = C10 / "12.jpg"  # 1024 x 577, the smallest JPEG of C10
needs_c10 = needs_dataset("c10", files=("c10/12.jpg",))
SHORT = ["train.nerf_iters=8", "train.dmtet_iters=4", "schedule.check_start=2", "schedule.check_end=6",
         "schedule.check_interval=2", "train.checkpoint_every=4", "train.eval_views=4", "train.video_frames=4",
         "train.eval_size=32", "train.texture_size=64"]
"""The tiny preset cut to a dozen iterations: every stage and output still runs."""


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A private C123_CACHE, so nothing is reused from another test or run."""
    monkeypatch.setenv("C123_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run_c123(*args, env: dict) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "c123.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def forbid_models(monkeypatch) -> None:
    """Make every preprocessing model and the concept's learning raise if called."""
    from c123.priors import background, caption, concept, depth

    def called(*args, **kwargs):
        raise AssertionError("a model ran although its result was cached")
    for module, name in ((caption, "caption_image"), (background, "remove_background"), (depth, "estimate_depth"),
                         (concept, "learn")):
        monkeypatch.setattr(module, name, called)


# ---- the plain photo, end to end --------------------------------------------------------------------
@needs_c10
def test_reconstruct_a_plain_jpeg_with_nothing_else_gives_a_mesh_and_records_the_preprocessing(tiny_models, tmp_path):
    assert Image.open(PHOTO).mode == "RGB"  # no alpha channel: nothing but the photo is given
    out = tmp_path / "out"
    env = {"C123_TINY_MODELS": str(tiny_models), "C123_CACHE": str(tmp_path / "cache")}
    code, log = run_c123("reconstruct", PHOTO, "--preset", "tiny", "--concept", "--out", out, "--set", *SHORT, env=env)
    assert code == 0, log
    for step in ("captioning it with", "removing the background with", "estimating it with"):
        assert f"preprocess: 12.jpg" in log and step in log, log
    mesh = trimesh.load(out / "mesh" / "mesh.obj", force="mesh")
    assert len(mesh.faces) > 0

    result = json.loads((out / "result.json").read_text())
    pre = result["preprocessing"]
    assert pre["image"] == str(PHOTO) and pre["cached"] is False
    assert [(e["part"], e["model"]) for e in pre["estimates"]] == [
        ("prompt", f"{tiny_models}/blip2"), ("alpha", f"{tiny_models}/clipseg"), ("depth", f"{tiny_models}/dpt")]
    caption = (Path(pre["folder"]) / "caption.txt").read_text().strip()
    assert caption and result["prompt"] == caption and pre["estimates"][0]["result"] == f"caption: {caption}"
    # the concept token is learned before Stable Diffusion is first used, and SD's prompt names it
    assert result["concept"]["token"] == "<c123-token>" and result["concept"]["cached"] is False
    assert result["sd_prompt"] == f"a photo of <c123-token>, {caption}"
    # the reference the run used is the preprocessed cut-out (alpha from the background remover)
    reference = np.asarray(Image.open(out / "reference.png"))
    assert 0 < (reference[..., 3] > 127).mean() < 1


@needs_c10
def test_preprocess_writes_files_that_reload_as_the_same_reconstruction_input(tiny_models, tmp_path, cache):
    out = tmp_path / "pre"
    code, log = run_c123("preprocess", PHOTO, "--preset", "tiny", "--out", out,
                         env={"C123_TINY_MODELS": str(tiny_models), "C123_CACHE": str(cache)})
    assert code == 0, log
    assert sorted(p.name for p in out.iterdir()) == ["12_depth.png", "12_rgba.png", "caption.txt", "preprocess.json"]
    command = f'c123 reconstruct {out}/12_rgba.png --depth {out}/12_depth.png --prompt "$(cat {out}/caption.txt)"'
    assert command in log
    assert Image.open(out / "12_rgba.png").mode == "RGBA" and Image.open(out / "12_depth.png").mode.startswith("I")

    # what a user passes back is a valid input, and the very input the photo path reconstructs
    caption = (out / "caption.txt").read_text().strip()
    given = load_input(out / "12_rgba.png", depth=out / "12_depth.png", prompt=caption)
    from c123.reconstruct import check_prompt
    check_prompt(given, tiny(str(tiny_models)))
    photo = prepare_input(PHOTO, cfg=tiny(str(tiny_models)))
    assert photo.prompt == given.prompt
    assert np.array_equal(photo.rgba, given.rgba) and np.allclose(photo.depth, given.depth, atol=1e-6)
    inside = given.rgba[..., 3] > 127
    # normalised to 0..1 on the object before recentring resampled it: the ends stay close to 0 and 1
    assert given.depth[inside].min() < 0.02 and given.depth[inside].max() > 0.98
    assert (given.depth[~inside] == 0).all()


@needs_c10
def test_cached_preprocessing_runs_no_model_the_second_time(tiny_models, cache, monkeypatch):
    cfg = tiny(str(tiny_models))
    first = prepare_input(PHOTO, cfg=cfg, case_id="ball")
    assert first.preprocessing.cached is False and (cache / "preprocess" / first.preprocessing.key).is_dir()
    forbid_models(monkeypatch)
    lines = []
    again = prepare_input(PHOTO, cfg=cfg, case_id="ball", announce=lines.append)
    assert again.preprocessing.cached is True and again.preprocessing.key == first.preprocessing.key
    assert lines == [f"12.jpg: reusing its preprocessing from {cache / 'preprocess' / first.preprocessing.key} "
                     "(no model runs)"]
    assert np.array_equal(again.rgba, first.rgba) and np.array_equal(again.depth, first.depth)
    assert again.prompt == first.prompt and again.case_id == "ball"
    # another model is another preprocessing: it is not served from this cache
    cfg.preprocess.mask_threshold = 0.6
    with pytest.raises(AssertionError, match="a model ran"):
        prepare_input(PHOTO, cfg=cfg)


def test_a_complete_input_runs_no_model(tiny_models, tmp_path, cache, monkeypatch):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (200, 50, 50, 255)
    Image.fromarray(rgba).save(tmp_path / "x_rgba.png")
    Image.fromarray(np.where(rgba[..., 3] > 0, np.arange(16)[None, :] * 10, 0).astype(np.uint8)).save(tmp_path / "d.png")
    forbid_models(monkeypatch)
    inp = prepare_input(tmp_path / "x_rgba.png", depth=tmp_path / "d.png", prompt="a red square",
                        cfg=tiny(str(tiny_models)))
    assert inp.preprocessing is None and not cache.exists()
    # a 3d-only run needs no prompt, so none is captioned; depth off: no depth model runs either
    cfg = tiny(str(tiny_models))
    cfg.preprocess.depth_model = ""
    assert prepare_input(tmp_path / "x_rgba.png", cfg=cfg, need_prompt=False).preprocessing is None


# ---- bad photos: one line, naming the file and what to pass instead --------------------------------
def _segmenter_that_keeps(share: float, tiny_models: Path, dest: Path) -> str:
    """The tiny CLIPSeg with its last layer set to say 'object' everywhere (1) or nowhere (0)."""
    from transformers import CLIPSegForImageSegmentation

    model = CLIPSegForImageSegmentation.from_pretrained(tiny_models / "clipseg")
    with torch.no_grad():
        model.decoder.transposed_convolution.weight.zero_()
        model.decoder.transposed_convolution.bias.fill_(20.0 if share else -20.0)
    model.save_pretrained(dest)
    for f in (tiny_models / "clipseg").iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            (dest / f.name).write_bytes(f.read_bytes())
    return str(dest)


@pytest.mark.parametrize("share, found", [(0, "found no object"), (1, "kept the whole frame (100% of it)")])
def test_a_cut_out_with_no_object_or_the_whole_frame_is_one_line_asking_for_a_mask(tiny_models, tmp_path, cache, share,
                                                                                     found):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (90, 120, 200)).save(photo)
    cfg = tiny(str(tiny_models))
    cfg.preprocess.background_model = _segmenter_that_keeps(share, tiny_models, tmp_path / "seg")
    with pytest.raises(InputError) as err:
        prepare_input(photo, prompt="a vase", cfg=cfg)
    assert str(err.value) == (f"{photo}: background removal with {cfg.preprocess.background_model} {found}: pass "
                              "--mask MASK.png (white on the object) or an RGBA image with the background transparent")
    assert not any((cache / "preprocess").iterdir())  # nothing half-made is left to be reused


def test_the_cli_refuses_a_photo_whose_cut_out_is_empty_in_one_line(tiny_models, tmp_path, cache, capsys, monkeypatch):
    from c123.cli import main

    monkeypatch.setenv("C123_TINY_MODELS", str(tiny_models))
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (90, 120, 200)).save(photo)
    seg = _segmenter_that_keeps(0, tiny_models, tmp_path / "seg")
    capsys.readouterr()  # what making the test's model printed
    code = main(["reconstruct", str(photo), "--preset", "tiny", "--prompt", "a vase", "--out", str(tmp_path / "o"),
                 "--set", f"preprocess.background_model={seg}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"error: {photo}: background removal with {seg} found no object: pass --mask"), err
    assert not (tmp_path / "o" / "result.json").exists()


def test_an_empty_caption_asks_for_a_prompt(tiny_models, tmp_path, cache):
    from transformers import Blip2ForConditionalGeneration

    mute = Blip2ForConditionalGeneration.from_pretrained(tiny_models / "blip2")
    eos = mute.config.text_config.eos_token_id
    with torch.no_grad():  # the last hidden state is the constant 1 and only </s> has an embedding: it says </s>
        norm = next(m for name, m in mute.named_modules() if name.endswith("decoder.final_layer_norm"))
        norm.weight.zero_(), norm.bias.fill_(1.0)
        table = mute.get_input_embeddings().weight
        table.zero_()
        table[eos] = 1.0
    mute.save_pretrained(tmp_path / "mute")
    for f in (tiny_models / "blip2").iterdir():
        if not (tmp_path / "mute" / f.name).exists():
            (tmp_path / "mute" / f.name).write_bytes(f.read_bytes())
    photo = tmp_path / "photo.png"
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[6:18, 6:18] = 255
    Image.fromarray(rgba).save(photo)
    cfg = tiny(str(tiny_models))
    cfg.preprocess.caption_model = str(tmp_path / "mute")
    with pytest.raises(InputError) as err:
        prepare_input(photo, cfg=cfg)
    assert str(err.value) == (f"{photo}: the caption model {tmp_path / 'mute'} returned an empty caption: pass "
                              "--prompt TEXT describing the object")


def test_a_missing_preprocessing_model_names_it_and_its_download(tmp_path, cache):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(photo)
    from c123.config import paper
    from c123.errors import WeightsMissingError

    cfg = paper()  # the real model ids, which are not downloaded here
    cfg.train.device = "cpu"
    with pytest.raises(WeightsMissingError) as err:
        prepare_input(photo, prompt="a green square", cfg=cfg)
    message = str(err.value)
    assert "\n" not in message and "background removal (CLIPSeg)" in message
    assert "hf download CIDAS/clipseg-rd64-refined" in message
    assert not (cache / "preprocess").exists() or not any((cache / "preprocess").iterdir())


def test_a_missing_model_stops_the_cli_in_one_line_before_any_model_runs(tmp_path, cache, capsys):
    from c123.cli import main

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(photo)
    code = main(["reconstruct", str(photo), "--preset", "paper", "--set", "train.device=cpu",
                 "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.out  # nothing announced: no step started
    assert captured.err.count("\n") == 1 and "hf download Salesforce/blip2-opt-2.7b" in captured.err


def test_photo_without_background_remover_keeps_the_old_one_line_error(tmp_path, tiny_models, cache):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(photo)
    cfg = tiny(str(tiny_models))
    cfg.preprocess.background_model = ""
    with pytest.raises(InputError, match=r"photo.jpg has no alpha channel and no mask was given: pass --mask"):
        prepare_input(photo, prompt="a green square", cfg=cfg)


# ---- concept injection ---------------------------------------------------------------------------
def test_textual_inversion_learns_the_token_puts_it_in_the_sd_prompt_and_a_rerun_loads_it(tiny_models, cache,
                                                                                           monkeypatch):
    from c123.priors import concept as concept_module
    from c123.priors.concept import initial_vector, learn_or_load
    from c123.priors.stable_diffusion import StableDiffusionPrior

    cfg = tiny(str(tiny_models))
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[10:38, 14:34] = (220, 180, 40, 255)

    def fresh_sd():
        return StableDiffusionPrior.from_pretrained(cfg.prior.sd_model, cfg.prior, "cpu")

    sd = fresh_sd()
    start = initial_vector(sd.tokenizer, sd.text_encoder, cfg.concept.initializer)
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)
    learned = learn_or_load(sd, rgba, cfg.concept, cfg.prior.sd_model, cfg.prior.sd_size, "cpu")
    assert torch.equal(torch.rand(3), expected_draw)  # learning drew from its own generator, not the run's
    assert learned.cached is False and learned.record["steps"] == cfg.concept.steps
    assert not torch.allclose(learned.vector, start)  # the embedding moved away from its initializer
    assert np.isfinite([learned.record["loss_first"], learned.record["loss_last"]]).all()

    sd.set_prompt(learned.prompt("a yellow box"))
    assert sd.prompt == "a photo of <c123-token>, a yellow box"
    token_id = sd.tokenizer.convert_tokens_to_ids("<c123-token>")
    ids = sd.tokenizer(sd.prompt).input_ids
    assert ids.count(token_id) == 1  # one token, not split into pieces
    embedded = sd.text_encoder.get_input_embeddings()(torch.tensor([[token_id]]))[0, 0]
    assert torch.equal(embedded, learned.vector)
    # the encoded prompt depends on the learned vector: with the initializer's vector it differs
    with_concept = sd.view_embeds.clone()
    sd.text_encoder.get_input_embeddings().vector.data.copy_(start)
    sd.set_prompt(learned.prompt("a yellow box"))
    assert not torch.allclose(sd.view_embeds, with_concept)

    # a rerun (a new process: a freshly loaded SD) loads the cached vector and learns nothing
    monkeypatch.setattr(concept_module, "learn", lambda *a, **k: pytest.fail("learned again"))
    again = learn_or_load(fresh_sd(), rgba, cfg.concept, cfg.prior.sd_model, cfg.prior.sd_size, "cpu")
    assert again.cached is True and again.folder == learned.folder and torch.equal(again.vector, learned.vector)
    from safetensors.torch import load_file
    saved = load_file(str(Path(learned.folder) / "learned_embeds.safetensors"))  # diffusers' file format
    assert list(saved) == ["<c123-token>"] and saved["<c123-token>"].shape == (1, learned.vector.numel())
