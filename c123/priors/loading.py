"""The priors behind one interface: what a prior offers (`Guidance`), which priors exist (`REGISTRY`), and the
loaded set a run uses (`Priors`).

A prior fills a slot of `Priors`: `zero123` (the 3D prior: Zero-1-to-3, Stable Zero123 or the oracle), `sd`
(the 2D prior) and `clip` (the boundary detector's model). Which slots a run fills is a property of its variant
(`c123.schedules.Variant.priors`); which registered prior fills a slot is the first entry of `REGISTRY` for
that slot whose `chooses(cfg)` holds. Adding a prior = its module + one `PriorEntry` line here (and its loader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

import torch

from c123.cameras import Cameras
from c123.config import ORACLE_FROM_CASE, ReconstructConfig, zero123_model_id
from c123.errors import C123Error
from c123.schedules import get_variant

if TYPE_CHECKING:
    from c123.priors.clip import ClipModel


@runtime_checkable
class Guidance(Protocol):
    """A prior that guides novel views (score distillation): Zero-1-to-3, Stable Zero123, the oracle, Stable
    Diffusion.

    It is conditioned once per run (`set_reference` for a view-conditioned prior, `set_prompt` for a
    text-conditioned one), then `loss` gives the SDS loss of rendered views.

    A view-conditioned 3D prior also draws its own novel views of the reference object:
    `sample(cams, *, generator, steps=..., guidance_scale=..., eta=...) -> images [B,3,H,W] in [0,1]` (Zero123Prior
    and StableZero123Prior: Zero-1-to-3's DDIM sampler with classifier-free guidance; OraclePrior: the true views on
    white), for uses beyond SDS: each run's prior_views/ (c123/prior_views.py), novel views as extra inputs. It is not a member of this protocol, so a
    prior that only guides (Stable Diffusion, a registered stub) still is a Guidance. Neither is `licence`
    (str | None): a line a run announces once and records in result.json notices (`licence_notices`)."""

    model_id: str
    """What was loaded (a model id or path, or 'oracle:SCENE'): result.json's model_ids."""
    variant_loaded: str
    """Which weight files (fp16/fp32/ema...) were read, or 'none'."""

    def loss(self, images: torch.Tensor, cams: Cameras, *, t_range: tuple[float, float],
             generator: torch.Generator) -> torch.Tensor:
        """The SDS loss of rendered views images [B,3,H,W] in [0,1] seen from `cams`."""


@dataclass
class Priors:
    """The loaded models a run uses; None in a slot the run's variant does not use (loaded once, reused across
    cases: the benchmark's actors keep them)."""

    zero123: Guidance | None = None
    sd: Guidance | None = None
    clip: ClipModel | None = None
    model_ids: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PriorEntry:
    """One prior the loader knows: the slot it fills, when it is the one chosen, and how it loads."""

    name: str
    slot: str
    """A field of `Priors`."""
    load: Callable[[ReconstructConfig, torch.device | str], tuple[object, dict[str, str]]]
    """(the model, its model_ids entries in result.json order)."""
    chooses: Callable[[ReconstructConfig], bool] = lambda cfg: True


# The loaders import their model modules on use: diffusers and transformers load only for the priors a run needs.
def _load_oracle(cfg: ReconstructConfig, device) -> tuple[object, dict[str, str]]:
    from c123.priors.oracle import ORACLE_VIEW_SIZE, OraclePrior
    from c123.synthetic import get_scene

    if cfg.prior.oracle_scene == ORACLE_FROM_CASE:
        raise C123Error("prior.oracle_scene='case' takes the scene from a synthetic benchmark case: run "
                        "`c123 evaluate synthetic --preset verify`, or name the scene of the input, "
                        "e.g. --set prior.oracle_scene=toy")
    prior = OraclePrior(get_scene(cfg.prior.oracle_scene), convention=cfg.prior.zero123_family,
                        size=ORACLE_VIEW_SIZE, true_elevation=cfg.prior.oracle_elevation,
                        true_azimuth=cfg.prior.oracle_azimuth)
    return prior, {"zero123": prior.model_id, "zero123_variant": prior.variant_loaded}


def _load_view_conditioned(prior_cls, what: str, cfg: ReconstructConfig, device) -> tuple[object, dict[str, str]]:
    """A Zero123Prior (or subclass) from the weights of `zero123_model_id(cfg.prior)`."""
    from c123.priors.weights import resolve
    from c123.priors.zero123 import weight_preference

    model_id = zero123_model_id(cfg.prior)
    path = resolve(model_id, what, variants=weight_preference(cfg.prior.zero123_variant),
                   cache_dir=cfg.prior.model_cache)
    prior = prior_cls.from_pretrained(path, cfg.prior, device, model_id=model_id)
    return prior, {"zero123": prior.model_id, "zero123_variant": prior.variant_loaded}


def _load_zero123(cfg: ReconstructConfig, device) -> tuple[object, dict[str, str]]:
    from c123.priors.zero123 import Zero123Prior

    return _load_view_conditioned(Zero123Prior, "Zero-1-to-3 (the 3D prior)", cfg, device)


def _load_stable_zero123(cfg: ReconstructConfig, device) -> tuple[object, dict[str, str]]:
    from c123.priors.stable_zero123 import StableZero123Prior

    return _load_view_conditioned(StableZero123Prior, "Stable Zero123 (the 3D prior)", cfg, device)


def _load_stable_diffusion(cfg: ReconstructConfig, device) -> tuple[object, dict[str, str]]:
    from c123.priors.stable_diffusion import StableDiffusionPrior
    from c123.priors.weights import resolve

    path = resolve(cfg.prior.sd_model, "Stable Diffusion 2.1 base (the 2D prior)", cache_dir=cfg.prior.model_cache)
    prior = StableDiffusionPrior.from_pretrained(path, cfg.prior, device)
    return prior, {"stable_diffusion": cfg.prior.sd_model, "stable_diffusion_variant": prior.variant_loaded}


def _load_clip(cfg: ReconstructConfig, device) -> tuple[object, dict[str, str]]:
    from c123.priors.clip import ClipModel
    from c123.priors.weights import resolve

    path = resolve(cfg.prior.clip_model, "CLIP (the boundary detector)", cache_dir=cfg.prior.model_cache)
    model = ClipModel.from_pretrained(path, device, precision=cfg.prior.precision)  # fp16 on CUDA as -O
    return model, {"clip": cfg.prior.clip_model}


REGISTRY: list[PriorEntry] = [
    PriorEntry("oracle", "zero123", _load_oracle, chooses=lambda cfg: bool(cfg.prior.oracle_scene)),
    PriorEntry("stable_zero123", "zero123", _load_stable_zero123,
               chooses=lambda cfg: cfg.prior.zero123_family == "stable-zero123"),
    PriorEntry("zero123", "zero123", _load_zero123),
    PriorEntry("stable_diffusion", "sd", _load_stable_diffusion),
    PriorEntry("clip", "clip", _load_clip),
]
"""Every prior, first match per slot wins (so the oracle, when asked for, comes before Zero-1-to-3 and Stable
Zero123, and stands in for the one prior.zero123_family names)."""


def chosen(slot: str, cfg: ReconstructConfig) -> PriorEntry:
    """The registered prior that fills `slot` under `cfg`."""
    for entry in REGISTRY:
        if entry.slot == slot and entry.chooses(cfg):
            return entry
    raise C123Error(f"no prior is registered for slot '{slot}'")


def load_priors(cfg: ReconstructConfig, device, priors: Priors | None = None) -> Priors:
    """Load what `cfg`'s variant needs (and is not already in `priors`) through the offline-safe weights path."""
    from c123.priors.tiny import ensure_tiny_models
    from c123.priors.weights import quiet_loading

    quiet_loading()
    priors = priors or Priors()
    ensure_tiny_models(cfg)
    for slot in get_variant(cfg.schedule.variant).priors:
        if getattr(priors, slot) is None:
            model, ids = chosen(slot, cfg).load(cfg, device)
            setattr(priors, slot, model)
            priors.model_ids.update(ids)
    return priors


def licence_notices(priors: Priors) -> list[str]:
    """The `licence` lines of the loaded priors that carry one (Stable Zero123's), in slot order: a run
    announces each once and records it in result.json notices."""
    lines = []
    for slot in ("zero123", "sd"):
        line = getattr(getattr(priors, slot), "licence", None)  # an optional attribute (see Guidance)
        if line and line not in lines:
            lines.append(line)
    return lines
