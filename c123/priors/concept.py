"""Concept injection (paper appendix A.2, optional): textual inversion of a new token on Stable Diffusion.

Before Stable Diffusion is first used, one new token is learned from the reference view so that SD's prompt
can name this very object: "a photo of <c123-token>, <prompt>". The optimisation follows diffusers'
examples/textual_inversion/textual_inversion.py with its defaults (ConceptConfig): only the token's
embedding is trained (AdamW, lr 1e-4, betas 0.9/0.999, weight decay 1e-2, eps 1e-8, constant rate), each
step a batch of the image, randomly flipped (p 0.5), behind a random "object" template of the example
("a photo of a {}", ...), encoded by the VAE (a posterior sample), noised at t ~ U{0..999}; the loss is the
MSE of the UNet's prediction to the noise (or to v for v-prediction models). The token starts from the
initializer word's embedding (several tokens: their mean, where the example refuses).

Deviations, each for a reason: the image is the reference composited on white at SD's input size (the
example reads an RGB file and drops alpha); the two flipped posteriors are encoded once rather than every
step (the same distribution); the random draws come from a generator of their own (seed 0), so learning
the concept leaves the run's random stream untouched and a cached concept gives the same run as a fresh one.

The learned vector is saved as diffusers does (`learned_embeds.safetensors`, {token: [1, dim]}, loadable
with `pipe.load_textual_inversion`) in cache_root()/concepts/KEY, keyed by the reference pixels, the SD
model, the settings and this code; a rerun loads it instead of learning again.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from c123.config import ConceptConfig
from c123.images import on_white

TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
"""The example's `imagenet_templates_small` (learnable_property 'object')."""
PROMPT = "a photo of {token}, {prompt}"
"""Stable Diffusion's prompt with the concept (the view suffix follows: ', front view')."""
FILE = "learned_embeds.safetensors"
SEED = 0
FLIP_P = 0.5
ADAMW = dict(betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)


@dataclass
class Concept:
    """A learned token (result.json `concept`)."""

    token: str
    vector: torch.Tensor = field(repr=False)
    """float32 [dim], the token's input embedding."""
    folder: str
    """Cache folder holding learned_embeds.safetensors and concept.json."""
    cached: bool
    """True when loaded from the cache (nothing was learned this run)."""
    record: dict = field(default_factory=dict)
    """Settings and the learning curve's ends (initial/final loss), from concept.json."""

    def prompt(self, text: str) -> str:
        return PROMPT.format(token=self.token, prompt=text.strip())

    def summary(self) -> dict:
        return {"token": self.token, "folder": self.folder, "cached": self.cached, **self.record}


class ConceptEmbedding(nn.Module):
    """A text encoder's token embedding plus one added token whose vector is held apart in float32 (the
    only trainable parameter while the concept is learned)."""

    def __init__(self, base: nn.Embedding, token_id: int, vector: torch.Tensor):
        super().__init__()
        self.base, self.token_id = base, token_id
        self.vector = nn.Parameter(vector.detach().float().clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:  # what get_input_embeddings().weight readers expect (the base table)
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_token = (ids == self.token_id)[..., None]
        out = self.base(torch.where(is_token[..., 0], torch.zeros_like(ids), ids))
        return torch.where(is_token, self.vector.to(out.dtype), out)


def add_token(tokenizer, text_encoder, token: str, vector: torch.Tensor) -> int:
    """Make `token` one token of `tokenizer` whose embedding in `text_encoder` is `vector`; its id. Adding it
    again (another case in the same process) replaces the vector."""
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    current = text_encoder.get_input_embeddings()
    base = current.base if isinstance(current, ConceptEmbedding) else current
    device = base.weight.device
    text_encoder.set_input_embeddings(ConceptEmbedding(base, token_id, vector.to(device)))
    return token_id


def learn_or_load(sd, rgba: np.ndarray, cfg: ConceptConfig, sd_model: str, size: int, device,
                  announce=None) -> Concept:
    """The concept of this reference view: from the cache, else learned on `sd` (a StableDiffusionPrior)
    and cached. Either way the token is added to sd's tokenizer and text encoder."""
    from safetensors.torch import load_file

    from c123.cache import cached_read, digest

    say = announce or (lambda line: None)
    code = inspect.getsource(sys.modules[__name__])
    key = digest(np.ascontiguousarray(rgba).tobytes(), str(rgba.shape), sd_model, json.dumps(asdict(cfg)),
                 str(size), code)

    def read(folder: Path, cached: bool) -> Concept:  # a damaged cached concept is set aside and learned again
        vector = load_file(str(folder / FILE))[cfg.token][0].float()
        record = json.loads((folder / "concept.json").read_text())
        if cached:
            say(f"concept {cfg.token}: reusing the embedding learned before ({folder})")
        return Concept(cfg.token, vector, str(folder), cached, record)

    concept = cached_read("concepts", key, lambda tmp: _learn_into(tmp, sd, rgba, cfg, size, device, say), read, say)
    add_token(sd.tokenizer, sd.text_encoder, cfg.token, concept.vector)
    return concept


def _learn_into(out, sd, rgba, cfg: ConceptConfig, size: int, device, say) -> None:
    from safetensors.torch import save_file

    say(f"concept {cfg.token}: textual inversion on Stable Diffusion, {cfg.steps} steps")
    tic = time.perf_counter()
    vector, losses = learn(sd, rgba, cfg, size, device)
    save_file({cfg.token: vector[None].cpu().contiguous()}, str(out / FILE), metadata={"format": "pt"})
    record = {"initializer": cfg.initializer, "steps": cfg.steps, "learning_rate": cfg.learning_rate,
              "batch_size": cfg.batch_size, "size": size, "loss_first": losses[0], "loss_last": losses[-1],
              "loss_mean_last_10pct": float(np.mean(losses[-max(1, len(losses) // 10):])),
              "seconds": time.perf_counter() - tic}
    (out / "concept.json").write_text(json.dumps(record, indent=2))


def learn(sd, rgba: np.ndarray, cfg: ConceptConfig, size: int, device) -> tuple[torch.Tensor, list[float]]:
    """Textual inversion of cfg.token on `sd`'s frozen UNet, VAE and text encoder: (vector [dim], losses)."""
    from c123.priors import sds
    from c123.priors.weights import autocast

    gen = torch.Generator().manual_seed(SEED)
    start = initial_vector(sd.tokenizer, sd.text_encoder, cfg.initializer)
    token_id = add_token(sd.tokenizer, sd.text_encoder, cfg.token, start)
    embedding = sd.text_encoder.get_input_embeddings()
    embedding.vector.requires_grad_(True)
    optimizer = torch.optim.AdamW([embedding.vector], lr=cfg.learning_rate, **ADAMW)
    prompts = sd.tokenizer([t.format(cfg.token) for t in TEMPLATES], padding="max_length", truncation=True,
                           max_length=sd.tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
    if not (prompts == token_id).any(dim=1).all():
        raise RuntimeError(f"the tokenizer split the concept token {cfg.token!r}")
    with torch.no_grad():  # the posterior of the image and of its mirror image, encoded once
        image = _reference_on_white(rgba, size).to(device)
        posterior = sds.posterior(sd.vae, torch.cat([image, image.flip(-1)]))
        mean, std = posterior.mean.float(), posterior.std.float()
    scale, alphas = sd.vae.config.scaling_factor, sd.alphas_cumprod
    losses = []
    try:
        for _ in range(cfg.steps):
            flip = (torch.rand(cfg.batch_size, generator=gen) < FLIP_P).long().to(device)
            template = torch.randint(len(TEMPLATES), (cfg.batch_size,), generator=gen).to(device)
            latents = (mean[flip] + std[flip] * sds.randn(mean[flip].shape, gen, device)) * scale
            noise = sds.randn(latents.shape, gen, device)
            t = torch.randint(0, sd.num_train_timesteps, (cfg.batch_size,), generator=gen).to(device)
            noisy = sds.add_noise(latents, noise, alphas, t)
            with autocast(sd.use_autocast, device):
                context = sd.text_encoder(prompts[template])[0]
                pred = sd.unet(noisy.to(sd.unet.dtype), t, encoder_hidden_states=context.to(sd.unet.dtype)).sample
            target = noise if sd.prediction_type == "epsilon" else _velocity(latents, noise, alphas, t)
            loss = F.mse_loss(pred.float(), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        embedding.vector.requires_grad_(False)
    return embedding.vector.detach().clone(), losses


def initial_vector(tokenizer, text_encoder, word: str) -> torch.Tensor:
    """The input embedding of `word` (float32 [dim]); a word of several tokens gives their mean."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    table = text_encoder.get_input_embeddings()
    base = table.base if isinstance(table, ConceptEmbedding) else table
    with torch.no_grad():
        return base.weight[torch.tensor(ids, device=base.weight.device)].float().mean(0).cpu()


def _reference_on_white(rgba: np.ndarray, size: int) -> torch.Tensor:
    """[1, 3, size, size] in [0, 1]: the reference over white, bicubic-resized (the example's interpolation)."""
    image = Image.fromarray(on_white(rgba[..., :3], rgba[..., 3])).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).float().div(255).permute(2, 0, 1)[None]


def _velocity(latents, noise, alphas_cumprod, t):
    """v = sqrt(ab) noise - sqrt(1 - ab) x0 (DDPMScheduler.get_velocity)."""
    ab = alphas_cumprod[t].view(-1, 1, 1, 1).to(latents.dtype)
    return ab.sqrt() * noise - (1 - ab).sqrt() * latents
