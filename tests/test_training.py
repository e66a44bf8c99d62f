"""The training loop's state: the parameter EMA, Adan as main.py builds it, and checkpoints that resume only
the same work (identity, corrupt files set aside, a full disk reported as such)."""

from __future__ import annotations

import copy
import errno
import math

import numpy as np
import pytest
import torch

from c123 import config as C
from c123.checkpoint import CheckpointIdentity, find_resumable, input_digest, save_checkpoint
from c123.dmtet import DMTet
from c123.ema import ParameterEMA, ema_decay
from c123.errors import C123Error
from c123.nerf import NeRFField
from c123.training import RunState, make_optimizer


# ---- EMA (torch_ema as the official Trainer uses it) --------------------------------------------------
def test_ema_decay_warms_up_as_torch_ema():
    assert ema_decay(0.95, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.95, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.95, 200) == 0.95


def test_ema_update_is_shadow_minus_one_minus_decay_times_difference():
    module = torch.nn.Linear(3, 2)
    ema = ParameterEMA(module, 0.95)
    start = [p.detach().clone() for p in module.parameters()]
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    ema.update(module)
    d = 2 / 11
    for shadow, s0, p in zip(ema.shadow, start, module.parameters()):
        assert torch.allclose(shadow, s0 - (1 - d) * (s0 - p))


def tiny_models():
    cfg = C.tiny()
    return torch.nn.ModuleDict({"field": NeRFField(cfg.nerf), "dmtet": DMTet(cfg.dmtet)})


def test_the_averaged_model_never_changes_non_floating_state():
    live = tiny_models()
    ema = ParameterEMA(live, 0.95)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        ema.update(live)
    averaged = copy.deepcopy(live)
    ema.copy_to(averaged)
    tensors = lambda m: {**dict(m.named_buffers()), **{k: v for k, v in vars_tensors(m)}}  # noqa: E731
    live_t, avg_t = tensors(live), tensors(averaged)
    non_float = [k for k, v in live_t.items() if not v.is_floating_point()]
    assert non_float, "the models hold integer data (tet indices, level offsets) that must be checked"
    for name in non_float:
        assert torch.equal(live_t[name], avg_t[name]), name
    changed = [not torch.equal(a, b) for a, b in zip(live.parameters(), averaged.parameters())]
    assert all(changed)  # the parameters are averaged, not copied


def vars_tensors(module):
    """Tensors held as plain attributes of submodules (not registered as buffers)."""
    for name, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if torch.is_tensor(value):
                yield f"{name}.{attr}", value


# ---- Adan (main.py: eps 1e-8, weight_decay 2e-5, max_grad_norm 5.0, no_prox=False) -------------------
def official_adan(params, grads_per_step, lr, betas=(0.98, 0.92, 0.99), eps=1e-8, wd=2e-5, max_norm=5.0):
    """An independent re-implementation of the official optimizer.py Adan step (single-tensor path)."""
    b1, b2, b3 = betas
    state = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p), n=torch.zeros_like(p), neg=None) for p in params]
    for k, grads in enumerate(grads_per_step, start=1):
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        clip = min(max_norm / (norm + eps), 1.0)
        for p, g, s in zip(params, grads, state):
            g = g * clip
            if s["neg"] is None:
                s["neg"] = -g
            diff = s["neg"] + g
            s["m"] = s["m"] * b1 + (1 - b1) * g
            s["v"] = s["v"] * b2 + (1 - b2) * diff
            nt = diff * b2 + g
            s["n"] = s["n"] * b3 + (1 - b3) * nt * nt
            denom = (s["n"].sqrt() / math.sqrt(1 - b3 ** k)) + eps
            p -= lr / (1 - b1 ** k) * s["m"] / denom + lr * b2 / (1 - b2 ** k) * s["v"] / denom
            p /= 1 + lr * wd
            s["neg"] = -g
    return params


def test_adan_is_built_as_main_py_builds_it_and_clips_the_global_norm_at_5():
    cfg = C.paper()
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.adan_eps, cfg.train.weight_decay,
            cfg.train.max_grad_norm) == ("adan", 5e-3, 1e-8, 2e-5, 5.0)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(6, generator=gen), torch.randn(3, 2, generator=gen)]
    # a global gradient norm near 195, as one reference step of the paper-size field has: the clip acts
    grads = [[torch.randn(p.shape, generator=gen) * 60 for p in params] for _ in range(3)]
    expected = official_adan([p.clone() for p in params], grads, lr=cfg.train.lr)
    mine = [torch.nn.Parameter(p.clone()) for p in params]
    opt = make_optimizer([{"params": mine, "lr": cfg.train.lr}], cfg)
    for step_grads in grads:
        for p, g in zip(mine, step_grads):
            p.grad = g.clone()
        opt.step()
    for a, b in zip(mine, expected):
        assert torch.allclose(a.detach(), b, atol=1e-6, rtol=1e-5)


# ---- checkpoints ---------------------------------------------------------------------------------------
RGBA = np.zeros((8, 8, 4), np.uint8)
DEPTH = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)


def identity(rgba=RGBA, depth=DEPTH, prompt="a cactus", config="cfg1", version="v1"):
    return CheckpointIdentity(input_digest(rgba, depth, prompt), config, version)


def write(tmp_path, ident, stage="nerf", step=7):
    state = RunState(stage=stage, step=step)
    save_checkpoint(tmp_path / f"{stage}.pt", ident, {"state": state.to_dict(), "stage": {"w": torch.ones(2)}})


def test_the_same_input_and_config_resume(tmp_path):
    write(tmp_path, identity())
    resume = find_resumable(tmp_path, identity(), "cpu")
    assert resume.payload["state"]["step"] == 7 and resume.notices == [] and resume.from_version is None


@pytest.mark.parametrize("other", [
    dict(rgba=np.full((8, 8, 4), 3, np.uint8)), dict(depth=None), dict(depth=DEPTH * 0.5),
    dict(prompt="a banana"), dict(config="cfg2")])
def test_another_image_depth_prompt_or_config_is_refused_with_a_notice(tmp_path, other):
    write(tmp_path, identity())
    resume = find_resumable(tmp_path, identity(**other), "cpu")
    assert resume.payload is None
    assert len(resume.notices) == 1 and "ignoring" in resume.notices[0] and "starting fresh" in resume.notices[0]
    assert ("another config" if "config" in other else "another input") in resume.notices[0]


def test_another_code_version_resumes_and_says_so(tmp_path):
    write(tmp_path, identity(version="v1"))
    resume = find_resumable(tmp_path, identity(version="v2"), "cpu")
    assert resume.payload is not None and resume.from_version == "v1"
    assert "v1" in resume.notices[0] and "v2" in resume.notices[0]


def test_the_furthest_stage_wins_and_a_corrupt_one_is_set_aside(tmp_path):
    write(tmp_path, identity(), "nerf", 7)
    (tmp_path / "dmtet.pt").write_bytes(b"PK\x03\x04 truncated zip")
    resume = find_resumable(tmp_path, identity(), "cpu")
    assert resume.payload["state"]["stage"] == "nerf"
    assert (tmp_path / "dmtet.pt.corrupt").is_file() and not (tmp_path / "dmtet.pt").exists()
    assert "dmtet.pt is unreadable" in resume.notices[0] and "set aside" in resume.notices[0]
    write(tmp_path, identity(), "dmtet", 9)
    assert find_resumable(tmp_path, identity(), "cpu").payload["state"]["step"] == 9


def test_a_checkpoint_of_an_old_format_is_set_aside_not_trusted(tmp_path):
    torch.save({"config_hash": "x", "step": 3}, tmp_path / "nerf.pt")
    resume = find_resumable(tmp_path, identity(), "cpu")
    assert resume.payload is None and (tmp_path / "nerf.pt.corrupt").is_file()


def test_a_full_disk_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_full(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return FullDisk(f) if "w" in mode and str(path).endswith(".pt") else f

    monkeypatch.setattr(builtins, "open", open_full)
    with pytest.raises(C123Error) as err:
        save_checkpoint(tmp_path / "nerf.pt", identity(), {"stage": {"w": torch.zeros(100000)}})
    message = str(err.value)
    assert "disk full" in message and str(tmp_path / "nerf.pt") in message and "\n" not in message
    monkeypatch.setattr(builtins, "open", real_open)
    assert not (tmp_path / "nerf.pt").exists() and not list(tmp_path.glob(".nerf.pt.*"))


def test_run_state_round_trips_with_its_rng(tmp_path):
    gen = torch.Generator().manual_seed(3)
    state = RunState.start(C.tiny())
    state.capture_rng(gen)
    expected = torch.rand(4, generator=gen)
    write_state = RunState.from_dict(state.to_dict())
    gen2 = torch.Generator().manual_seed(99)
    write_state.restore_rng(gen2)
    assert torch.equal(torch.rand(4, generator=gen2), expected)


# ---- the loop --------------------------------------------------------------------------------------
def quadratic_stage(cfg, first=1, last=25):
    """A real Stage over a tiny module whose loss pulls its weight towards 3 (no priors needed)."""
    from c123.training import Stage

    module = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(module.weight)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    terms = lambda step, ref, w3d, w2d: {"pull": ((module.weight - 3.0) ** 2).sum()}  # noqa: E731
    return Stage("nerf", first, last, module, opt, terms, ema=ParameterEMA(module, 0.95))


def loop_for(cfg, tmp_path, events):
    from c123.training import Loop

    return Loop(cfg, RunState.start(cfg), torch.Generator().manual_seed(0), tmp_path, identity(), events.append)


def test_the_ema_updates_once_per_epoch_and_at_the_stage_end(tmp_path):
    from c123.training import run_stage

    cfg = C.tiny()
    cfg.schedule.variant = "3d-only"
    cfg.train.ema_every, cfg.train.checkpoint_every = 10, 0
    stage, events = quadratic_stage(cfg), []
    seen = []
    update = stage.ema.update
    stage.ema.update = lambda module: seen.append(len(events) + 1) or update(module)  # before its progress
    run_stage(stage, loop_for(cfg, tmp_path, events))
    assert seen == [10, 20, 25] and stage.ema.num_updates == 3   # steps 10, 20 and the last, 25
    assert (tmp_path / "nerf.pt").is_file() and events[-1].step == 25


def test_a_resumed_stage_continues_after_its_last_step(tmp_path):
    from c123.training import run_stage

    cfg = C.tiny()
    cfg.schedule.variant = "3d-only"
    events = []
    loop = loop_for(cfg, tmp_path, events)
    loop.state.step = 20
    run_stage(quadratic_stage(cfg), loop)
    assert [e.step for e in events] == [21, 22, 23, 24, 25]


def test_dmtet_starts_from_the_averaged_nerf_and_export_reads_the_live_models(tmp_path):
    from PIL import Image

    from c123 import reconstruct as R
    from c123.cameras import reference_camera
    from c123.preprocess import ReconstructionInput
    from c123.training import run_stage

    cfg = C.tiny(str(tmp_path / "models"))
    cfg.schedule.variant = "3d-only"
    cfg.train.nerf_iters, cfg.train.dmtet_iters, cfg.train.ema_every = 12, 2, 5
    cfg.train.export_mesh, cfg.train.video_frames, cfg.train.eval_views = False, 1, 1
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[12:36, 12:36] = (200, 100, 50, 255)
    run = R.prepare_run(ReconstructionInput("square", rgba), cfg, tmp_path / "out")
    nerf = R.build_nerf_stage(run.rgba, run.depth, run.priors, "", cfg, run.gen, run.device)
    run_stage(nerf.stage, run.loop)
    ema = [t.clone() for t in nerf.stage.ema.shadow]
    live = [p.detach().clone() for p in nerf.field.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(ema, live))
    R.hand_over(nerf)
    assert all(torch.equal(a, b) for a, b in zip(nerf.field.parameters(), ema))  # what the tet grid reads
    dmtet, stage = R.build_dmtet_stage(nerf, run.rgba, run.priors, cfg, run.gen, run.device)
    assert stage.module["field"] is nerf.field and stage.module["dmtet"] is dmtet  # trained on together
    run_stage(stage, run.loop)
    outputs, _ = R.export(nerf.field, dmtet, run.inp, cfg, run.out, run.device)
    # the export reads the live models: its reference render is the DMTet stage's own preview
    view = np.asarray(Image.open(run.out / outputs["ref_render"]))[..., :3].astype(np.float32) / 255
    with torch.no_grad():
        preview = stage.preview(reference_camera(cfg.camera), cfg.train.eval_size)[0].numpy()
    assert np.abs(view - preview).max() <= 1 / 255 + 1e-6
