"""How many bytes a case holds on its device: a live-tensor tracker, the priors' weight bytes from their real
architectures, and the budget of a whole case from measured per-sample figures (docs/METHOD.md section 7).

The figures are *live tensor bytes* (the sum of the sizes of the tensor storages alive at a time), not a
process's RSS: they do not depend on the allocator, and they are what `torch.cuda.max_memory_allocated` counts
on a GPU (up to its 512-byte rounding). `LiveBytes` measures them on any device, also under
`torch._subclasses.FakeTensorMode`, where no memory is allocated at all: that is how the real priors' SDS steps
are measured at their real sizes on a machine that could not hold them (benchmarks/bench_memory.py).

The budget of a case (`case_budget`) is weights + training state + the peak of a step, where a NeRF step's bytes
follow the law `bytes = fixed + per_sample * rays * samples_per_ray`, fitted and checked at three small sizes
by benchmarks/bench_memory.py (the constants below are its output; tests/test_memory.py re-measures one size).
"""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from c123.errors import C123Error

GB = 1e9


class LiveBytes(TorchDispatchMode):
    """`with LiveBytes() as m: ...` then m.peak: the most bytes of tensor storage alive at once among the
    storages the ops inside the block created (tensors that existed before are not counted: add them apart);
    m.current: those alive now. Backward passes run inside the block are counted too."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._alive: set[int] = set()

    def reset_peak(self) -> None:
        self.peak = self.current

    def _free(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.current -= nbytes

    def track(self, t: torch.Tensor) -> None:
        """Count t's storage until it is freed (once, however many tensors view it)."""
        storage = t.untyped_storage()
        key = storage._cdata  # one StorageImpl per key while it lives
        if key in self._alive:
            return
        nbytes = storage.nbytes()
        self._alive.add(key)
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key, nbytes)  # the Python storage lives as long as its data

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if torch.is_tensor(t):
                self.track(t)
        return out


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages among `tensors` (an iterable; nested lists/dicts are walked)."""
    seen, total = set(), 0
    for t in tree_leaves(list(tensors)):
        if torch.is_tensor(t):
            storage = t.untyped_storage()
            if storage._cdata not in seen:
                seen.add(storage._cdata)
                total += storage.nbytes()
    return total


def training_state_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                         extra=()) -> int:
    """Parameters and the optimiser's state (plus `extra` tensors: EMA copies, grids); not the gradients, which
    a step allocates anew (zero_grad(set_to_none=True)) and a step's peak counts."""
    tensors = list(module.parameters()) + list(extra)
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return tensor_bytes(tensors)


# ---- the priors' real architectures --------------------------------------------------------------------------
# Configs of the models the `paper` preset loads (the config.json of each Hub folder, abridged to what sets the
# sizes): Zero-1-to-3 XL = the SD 1.x UNet with 8 input channels and 768-wide cross-attention (stable-dreamfusion
# pretrained/zero123/sd-objaverse-finetune-c_concat-256.yaml: in_channels 8, context_dim 768, model_channels 320,
# channel_mult 1,2,4,4, num_heads 8), its CLIP ViT-L/14 image encoder and the 772 -> 768 camera projection
# (zero123_utils.py CLIPCameraProjection); Stable Diffusion 2.1 base (UNet with linear projections and head dims
# 5/10/20/20 on 1024-wide OpenCLIP-H text features, 23 text layers); the detector's CLIP ViT-B/16.
_SD_BLOCKS = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                  down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                  up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
ARCHITECTURES: dict[str, dict[str, tuple[str, dict]]] = {
    "zero123": {
        "unet": ("diffusers.UNet2DConditionModel", dict(_SD_BLOCKS, in_channels=8, out_channels=4, sample_size=32,
                                                         cross_attention_dim=768, attention_head_dim=8)),
        "vae": ("diffusers.AutoencoderKL", _VAE),
        "image_encoder": ("transformers.CLIPVisionModelWithProjection",
                          dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                               patch_size=14, image_size=224, projection_dim=768)),
        "clip_camera_projection": ("c123.priors.zero123.CLIPCameraProjection", dict(embedding_dim=768)),
    },
    "stable_diffusion": {
        "unet": ("diffusers.UNet2DConditionModel", dict(_SD_BLOCKS, in_channels=4, out_channels=4, sample_size=64,
                                                         cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                                                         use_linear_projection=True)),
        "vae": ("diffusers.AutoencoderKL", _VAE),
        "text_encoder": ("transformers.CLIPTextModel",
                         dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                              max_position_embeddings=77, vocab_size=49408, projection_dim=512, hidden_act="gelu")),
    },
    "clip": {
        "model": ("transformers.CLIPModel",
                  dict(text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                                        num_hidden_layers=12),
                       vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                          num_hidden_layers=12, patch_size=16, image_size=224),
                       projection_dim=512)),
    },
}


def _class(path: str):
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def build_architecture(prior: str, part: str):
    """The real architecture of `prior`'s `part` with random weights (on the current default device: build it
    under `torch.device('meta')` to allocate nothing, or under FakeTensorMode to run it without memory)."""
    cls_path, config = ARCHITECTURES[prior][part]
    cls = _class(cls_path)
    if cls_path.startswith("transformers."):
        config_cls = getattr(importlib_transformers(), cls.config_class.__name__)
        return cls(config_cls(**config))
    return cls(**config)


def importlib_transformers():
    import transformers

    return transformers


@functools.lru_cache(maxsize=None)
def parameter_count(prior: str, part: str) -> int:
    """Parameters of a prior's part, from its architecture built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = build_architecture(prior, part)
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def weight_dtypes(precision: str, device_type: str) -> dict[str, torch.dtype]:
    """Weight dtype of each prior as c123.priors loads it (weights.runtime_dtypes): with precision 'fp16' on CUDA,
    Stable Diffusion and the detector's CLIP in float16 and Zero-1-to-3 in float32 under fp16 autocast (the
    official keeps it fp32); float32 everywhere else."""
    half = precision == "fp16" and device_type == "cuda"
    return {"zero123": torch.float32, "stable_diffusion": torch.float16 if half else torch.float32,
            "clip": torch.float16 if half else torch.float32}


def prior_weight_bytes(precision: str = "fp16", device_type: str = "cuda") -> dict[str, dict[str, int]]:
    """{prior: {part: bytes}} of the real priors' weights at `precision` on `device_type`."""
    dtypes = weight_dtypes(precision, device_type)
    return {prior: {part: parameter_count(prior, part) * dtypes[prior].itemsize for part in parts}
            for prior, parts in ARCHITECTURES.items()}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def sds_step_peak(precision: str = "fp16", device_type: str = "cuda", render_size: int = 128,
                  zero123_size: int = 256, sd_size: int = 512, parts=None) -> dict[str, int]:
    """Peak live bytes of one SDS step of the real priors on one render [1,3,render_size^2] (float32, with its
    graph), beyond their weights: Zero-1-to-3 then Stable Diffusion as c123.priors run them (resize, VAE encode
    with its graph, the posterior sample, the UNet on [uncond; cond] without a graph, the SDS loss), then the
    backward to the render. Run under FakeTensorMode: the architectures' real sizes, no memory allocated.
    `parts` (default both): which priors. Returns {'zero123': peak of its call, 'stable_diffusion': peak of its
    call with Zero-1-to-3's graph still held, 'step': peak of the whole step with the backward}."""
    import torch.nn.functional as F
    from torch._subclasses.fake_tensor import FakeTensorMode

    parts = parts or ("zero123", "stable_diffusion")
    dtypes = weight_dtypes(precision, device_type)
    autocast_on = precision == "fp16" and device_type == "cuda"
    out = {}
    with FakeTensorMode():
        models = {}
        for prior in parts:
            with default_dtype(dtypes[prior]):
                models[prior] = {p: build_architecture(prior, p).eval().requires_grad_(False) for p in ("unet", "vae")}
        render = torch.rand(1, 3, render_size, render_size, requires_grad=True)
        with LiveBytes() as live:
            loss = render.new_zeros(())
            for prior in parts:
                unet, vae = models[prior]["unet"], models[prior]["vae"]
                size, channels = (zero123_size, 768) if prior == "zero123" else (sd_size, 1024)
                tokens = 1 if prior == "zero123" else 77
                # Zero-1-to-3 runs under fp16 autocast with fp32 weights; SD casts its input to its weights' dtype
                cast = torch.autocast("cpu", dtype=torch.float16) if autocast_on else contextlib.nullcontext()
                with cast:
                    image = F.interpolate(render, (size, size), mode="bilinear", align_corners=False)
                    dist = vae.encode(image.to(vae.dtype) * 2 - 1).latent_dist
                    latents = (dist.mean + dist.std * torch.randn_like(dist.mean)).float() * 0.18215
                    with torch.no_grad():
                        noisy = latents.detach()
                        x_in = torch.cat([noisy, noisy])
                        if prior == "zero123":
                            x_in = torch.cat([x_in, torch.zeros_like(x_in)], 1)
                        context = torch.zeros(2, tokens, channels, dtype=unet.dtype)
                        pred = unet(x_in.to(unet.dtype), torch.tensor([500, 500]), encoder_hidden_states=context).sample
                        grad = pred.float().chunk(2)[0] - noisy
                loss = loss + 0.5 * ((latents - (latents - grad).detach()) ** 2).sum()
                out[prior] = live.peak
            loss.backward()
            out["step"] = live.peak
    return out


_COUNTING_COMPILED: list[LiveBytes] = []


def _counted_empty(*args, **kwargs):
    t = _ORIGINAL_EMPTY(*args, **kwargs)
    for live in _COUNTING_COMPILED:
        live.track(t)
    return t


_ORIGINAL_EMPTY = None


def install_compiled_counter() -> None:
    """Route the buffers torch.compile's CPU code allocates through `counting_compiled` (inductor's wrapper calls
    `_empty_strided_cpu` directly, past the dispatcher, and binds it when its code is generated: install this
    before compiling what must be counted). Measurement only; the function still returns the same buffers."""
    global _ORIGINAL_EMPTY
    import torch._C._dynamo.guards as guards

    if _ORIGINAL_EMPTY is None:
        _ORIGINAL_EMPTY = guards._empty_strided_cpu
        guards._empty_strided_cpu = _counted_empty


@contextlib.contextmanager
def counting_compiled(live: LiveBytes):
    """Also count, in `live`, the buffers compiled CPU code allocates (see install_compiled_counter)."""
    install_compiled_counter()
    _COUNTING_COMPILED.append(live)
    try:
        yield live
    finally:
        _COUNTING_COMPILED.remove(live)


# ---- the budget of a case ------------------------------------------------------------------------------------
PARAMETER_COUNTS = {
    ("zero123", "unet"): 859_532_484, ("zero123", "vae"): 83_653_863, ("zero123", "image_encoder"): 303_966_465,
    ("zero123", "clip_camera_projection"): 593_664, ("stable_diffusion", "unet"): 865_910_724,
    ("stable_diffusion", "vae"): 83_653_863, ("stable_diffusion", "text_encoder"): 340_387_917,
    ("clip", "model"): 149_621_011,
}
"""`parameter_count` of each part (parameters + buffers), kept here because building the architectures even on
the meta device takes minutes on a busy CPU; tests/test_memory.py checks the small ones, bench_memory.py all."""

NERF_LAW: dict[tuple[str, bool, str], tuple[float, float]] = {
    ("mask", False, "reference"): (0.03e6, 63_837.0), ("mask", False, "novel"): (0.03e6, 63_837.0),
    ("mask", True, "reference"): (197.1e6, 85.0), ("mask", True, "novel"): (197.1e6, 85.0),
    ("compact", False, "reference"): (0.03e6, 63_876.0), ("compact", False, "novel"): (0.03e6, 63_876.0),
    ("compact", True, "reference"): (197.1e6, 93.0), ("compact", True, "novel"): (197.1e6, 92.4),
}
"""(occupancy mode, checkpointed, step kind) -> (fixed bytes, bytes per sample point) of the loss and backward
of a NeRF step of the paper field (torch hash-grid backend) with every occupancy cell occupied (the worst case),
priors off: benchmarks/bench_memory.py --part nerf (eager, CPU; mask one graph fitted at 8 and 12 px, within
0.0% at 16 px; checkpointed fitted at 8 and 12 px). Checkpointed: chunks of LAW_CHUNK_RAYS rays (its fixed part
holds one chunk's graph). `compact` with every cell occupied evaluates the same samples plus the compaction's
indices (its own fit: +39 B per sample in one graph, +8 B checkpointed; one graph within 0.0% at 16 px).
Compiled (train.compile=on) the peaks are the same to 0.01 MB (bench_memory.py --part compiled)."""

LAW_CHUNK_RAYS = 32
"""Rays per chunk of the checkpointed figures of NERF_LAW."""

NERF_OPTIMISER_BYTES = 97.6e6
"""Peak of the NeRF optimiser step beyond the state (Adan's temporaries over the hash table), bench_memory.py."""

NERF_STATE_BYTES_PER_PARAMETER = 24.0
"""Parameters, Adan's four moment buffers and the EMA copy, per parameter of the field (bench_memory.py)."""

SDS_STEP: dict[tuple[str, str], dict[str, int]] = {
    ("fp16", "cuda"): {"zero123": 533_716_372, "stable_diffusion": 2_797_172_884, "step": 2_797_172_884},
}
"""(precision, device type) -> `sds_step_peak` at the paper sizes (128 px render, 256 / 512 px prior inputs)."""

DMTET_LAW: tuple[float, float, float] = (244.7e6, 599.0, 81.0)
"""(fixed bytes, bytes per rendered pixel, bytes per tet) of the DMTet stage's own state (tet grid constants, SDF,
deformation, the Adan state of it and of the field) plus the loss and backward of a step, priors off; its
optimiser step peaks lower (8 MB at the 64 grid). bench_memory.py --part dmtet: fitted at (grid 32, 128 px),
(32, 256), (64, 128), checked at (64, 256) within 0.1%; the paper's (256, 1024 px) gives 1.87 GB."""

CUDA_CONTEXT_BYTES = int(0.6 * GB)
"""What a process's CUDA context and allocator slack hold beyond its tensors (not measured here: no GPU was
lent; the CUDA context is about 0.3-0.6 GB on recent cards). Counted once per case: each case is its own
process."""


def tets_of(resolution: int) -> int:
    """Tets of the A15 grid at `resolution` (about 0.734 r^3: 192,492 at 64 as the official tets/64_tets.npz)."""
    return int(0.7343 * resolution ** 3)


@dataclass
class Budget:
    """Peak device bytes of a whole case, by part; `total` includes the CUDA context allowance."""

    preset: str
    parts: dict[str, int] = field(default_factory=dict)
    """weights:<prior>, state:nerf, step:<kind> (the peak of each step kind beyond weights and state)."""

    @property
    def peak_step(self) -> tuple[str, int]:
        steps = {k: v for k, v in self.parts.items() if k.startswith("step:")}
        kind = max(steps, key=steps.get)
        return kind, steps[kind]

    @property
    def total(self) -> int:
        fixed = sum(v for k, v in self.parts.items() if not k.startswith("step:"))
        return fixed + self.peak_step[1] + CUDA_CONTEXT_BYTES

    def cases_on(self, gpu_bytes: float) -> int:
        """How many cases fit a card of `gpu_bytes` side by side (each its own process, weights and all)."""
        return int(gpu_bytes // self.total)

    def line(self) -> str:
        kind, _ = self.peak_step
        fits = "yes" if self.total <= 22 * GB else "no"
        return (f"{self.preset}: needs {self.total / GB:.1f} GB on the GPU (peak at the {kind[5:]} step); fits 24 GB: "
                f"{fits} (target <= 22 GB); fits 40 GB with {self.cases_on(40 * GB)} and 80 GB with "
                f"{self.cases_on(80 * GB)} case(s) per GPU")


def _nerf_parameters(nerf_cfg) -> int:
    """Parameters of the field of `nerf_cfg` (built on CPU: the hash grid's level sizes are computed with tensors)."""
    key = repr(nerf_cfg)
    if key not in _NERF_PARAMETERS:
        from c123.nerf import NeRFField

        _NERF_PARAMETERS[key] = sum(p.numel() for p in NeRFField(nerf_cfg).parameters())
    return _NERF_PARAMETERS[key]


_NERF_PARAMETERS: dict[str, int] = {}


def case_budget(cfg, device_type: str = "cuda") -> Budget:
    """The budget of one case of `cfg` on `device_type` from the measured laws (see the constants above)."""
    from c123.priors.loading import chosen
    from c123.schedules import get_variant
    from c123.volume_render import occupancy_mode_for

    if not NERF_LAW or not SDS_STEP:
        raise C123Error("c123.memory has no measured figures: run benchmarks/bench_memory.py")
    budget = Budget(cfg.preset)
    dtypes = weight_dtypes(cfg.prior.precision, device_type)
    names = {chosen(slot, cfg).name for slot in get_variant(cfg.schedule.variant).priors}  # the priors it loads
    for prior in sorted(names & set(ARCHITECTURES)):
        budget.parts[f"weights:{prior}"] = sum(PARAMETER_COUNTS[(prior, part)] * dtypes[prior].itemsize
                                               for part in ARCHITECTURES[prior])
    budget.parts["state:nerf"] = int(_nerf_parameters(cfg.nerf) * NERF_STATE_BYTES_PER_PARAMETER)
    mode = occupancy_mode_for(cfg.nerf.occupancy_mode, "cuda" if device_type == "cuda" else "cpu",
                              cfg.nerf.grad_chunk_rays)
    per_ray = cfg.nerf.num_samples + cfg.nerf.num_importance
    t = cfg.train
    sds = SDS_STEP[(cfg.prior.precision if device_type == "cuda" else "fp32", device_type)]["step"]
    for kind, size, extra in (("reference", round(t.nerf_size * t.ref_scale), 0), ("novel", t.nerf_size, sds)):
        rays = size * size
        budget.parts[f"step:nerf {kind}"] = max(NERF_OPTIMISER_BYTES, int(nerf_step_bytes(
            mode, kind, rays, per_ray, cfg.nerf.grad_chunk_rays))) + extra
    fixed, per_pixel, per_tet = DMTET_LAW
    budget.parts["step:dmtet novel"] = int(fixed + per_pixel * cfg.dmtet.render_size ** 2
                                           + per_tet * tets_of(cfg.dmtet.tet_resolution)) + sds
    return budget


def nerf_step_bytes(mode: str, kind: str, rays: int, per_ray: int, grad_chunk: int) -> float:
    """Loss + backward bytes of a NeRF step (NERF_LAW) with `rays` rays of `per_ray` samples; grad_chunk > 0:
    checkpointed chunks of that many rays, whose one chunk's graph is the one-graph bytes per sample of the
    chunk's samples beyond what the checkpointed law keeps per sample (its outputs)."""
    fixed, per = NERF_LAW[(mode, False, kind)]
    if grad_chunk <= 0 or grad_chunk >= rays:
        return fixed + per * rays * per_ray
    fixed_c, per_c = NERF_LAW[(mode, True, kind)]
    return fixed_c + per_c * rays * per_ray + max(per - per_c, 0.0) * (grad_chunk - LAW_CHUNK_RAYS) * per_ray


def cases_per_gpu(budget: Budget, requested: int | str, gpu_bytes: float | None) -> int:
    """How many cases to run on each GPU: `requested` ('auto': as many as fit `gpu_bytes`, at least one), refused
    with the figures when they cannot fit; gpu_bytes None (unknown) accepts a number as it is, 'auto' gives 1."""
    if requested == "auto":
        return max(1, budget.cases_on(gpu_bytes)) if gpu_bytes else 1
    n = int(requested)
    if gpu_bytes and n * budget.total > gpu_bytes:
        raise C123Error(f"--cases-per-gpu {n} needs {n} x {budget.total / GB:.1f} GB = {n * budget.total / GB:.1f} GB "
                        f"per GPU, the GPUs have {gpu_bytes / GB:.1f} GB: use --cases-per-gpu "
                        f"{max(1, budget.cases_on(gpu_bytes))} or auto")
    return n


def available_host_bytes() -> int:
    """MemAvailable of /proc/meminfo (what a process may still take without swapping or the OOM killer), else
    the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
