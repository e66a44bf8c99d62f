"""The `benchmark` flow's parameters (one typed spec) and every check that can fail before compute.

BenchmarkSpec is the one definition of the flow's parameters: the flow's signature, and so Prefect's
deployment parameter schema (`prefect deployment run benchmark/evaluate-c10 --param preset=tiny`), is made
from its fields (`flow_parameters`). Adding a parameter = one field here (with its docstring and, where it
can be wrong, a line in `check`); `c123 evaluate` passes a flag of the same name through (flows/evaluate.py).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from c123.config import (ELEVATION_ESTIMATE, ORACLE_FROM_CASE, TINY_MODEL_PRESETS, ReconstructConfig, elevation_value,
                         preset)
from c123.config_checks import validate
from c123.config_files import resolve_config
from c123.errors import C123Error
from c123.metrics import MetricProtocol, get_protocol
from c123.provenance import offline_defaults
from c123_pipeline.datasets.registry import case_patterns, filter_cases, load_dataset
from c123_pipeline.tasks import storage
from c123_pipeline.tasks.metrics import protocol_overrides, resolve_protocol
from c123_pipeline.tasks.report import check_baseline, check_golden
from c123_pipeline.tasks.run_folder import RunLock, check_run_json

if TYPE_CHECKING:
    from c123_pipeline.datasets.case import Case
    from c123_pipeline.datasets.registry import Dataset

RUNS_ENV = "C123_RUNS"


@dataclass
class BenchmarkSpec:
    """What to benchmark: the `benchmark` flow's parameters (its signature is made from these fields)."""

    dataset: str = "c10"
    """realfusion15 | c10 | realfusion15-original | synthetic | synthetic-elevated | a dataset folder."""
    preset: str = "paper"
    """paper | fast | tiny | verify."""
    variants: list[str] | None = None
    """Schedule variants (default: the preset's, consistent123 but for verify's 3d-only); 'consistent123:linear'
    adds a weight shape."""
    cases: list[str] | str | None = None
    """Case ids or wildcards (a list, or a comma-separated string); None: every case."""
    seeds: list[int] | None = None
    """Seeds (default [0])."""
    out: str | None = None
    """Run folder, a local path or an fsspec URL such as s3://bucket/run (default
    $C123_RUNS/<dataset>-<preset>-<UTC time>); an existing one resumes."""
    overrides: list[str] | None = None
    """Config overrides, 'section.field=value'."""
    elevation: float | str | None = None
    """Elevation (degrees, strictly between -90 and 90) assumed for every case's input view, overriding the
    dataset table's (camera.ref_polar = 90 - elevation); 'estimate': estimate each case's from its image
    (camera.estimate_elevation); 'true': each case's true elevation, where the layout knows it (synthetic,
    synthetic-elevated, GSO); None: each case's table value, else the preset's default (0 in `paper`, the
    estimate in `fast` and `verify`). A synthetic case's oracle still answers from its true elevation, so
    `elevation=0` on synthetic-elevated measures what a wrong assumption costs."""
    num_actors: int | None = None
    """Ray actors (default: one per GPU, else one per CPU)."""
    cases_per_gpu: int | str | None = None
    """Cases sharing each GPU (Ray fractional GPUs): a number, or 'auto' (as many as the measured memory budget
    of a case, c123.memory.case_budget, fits in a GPU's free memory); default 1. A number that cannot fit is
    refused."""
    share_idle_threads: bool = False
    """CPU runs only: once no case waits, cases still computing take over the idle actors' threads (a faster
    tail). Off by default: a case's float rounding then depends on when it got them, so two identical runs may
    differ in the last digits of their last cases."""
    baseline: str | None = None
    """A finished run folder of the same dataset to judge this run against, or 'latest' (the newest earlier
    run of the same dataset and preset beside `out`)."""
    data_root: str | None = None
    """Folder holding the named datasets (default $C123_DATA)."""
    fail_on_regression: bool = False
    """Mark the flow run Failed when the verdict regresses (the nightly deployment)."""
    allow_failures: int = 0
    """Failed cases that still leave the flow run Completed; more mark it Failed."""
    max_retries: int = 2
    """Retries of a case whose actor died (or ran out of memory)."""
    clip_model: str | None = None
    """CLIP of the CLIP-similarity metric, replacing the protocol's (default: the protocol's, else the preset's)."""
    protocol: str = "c123"
    """Metric protocol: c123 (default), magic123 or syncdreamer (c123.metrics.PROTOCOLS)."""
    thresholds: dict[str, float] | None = None
    """Allowed worsening per metric against the baseline, e.g. {"psnr": 0.5}."""
    drift_window: int | None = None
    """Also judge the run against the median of the last N good earlier runs of its dataset and preset in its
    runs folder (reports/drift.py: a slow decline); None: only against the baseline."""
    golden: str | None = None
    """Run id of a pinned golden run in the runs folder to judge drift against instead of the window."""
    work_fn: str | None = None
    """'module:function' replacing the reconstruction in the actors (instrumentation, fault tests)."""

    def check(self) -> None:
        """Parameters that cannot work, as one C123Error line naming the parameter (before anything runs)."""
        from c123_pipeline.reports.regression import parse_thresholds  # pandas: only once a flow runs

        for name, low in (("num_actors", 1), ("max_retries", 0), ("allow_failures", 0), ("drift_window", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise C123Error(f"parameter {name}={value!r} must be an integer >= {low}")
        per_gpu = self.cases_per_gpu
        if per_gpu is not None and per_gpu != "auto" and (isinstance(per_gpu, bool) or not str(per_gpu).isdigit()
                                                           or int(per_gpu) < 1):
            raise C123Error(f"parameter cases_per_gpu={per_gpu!r} must be an integer >= 1 or 'auto'")
        if self.variants is not None and not self.variants:
            raise C123Error("parameter variants=[] names no variant: leave it out for consistent123")
        if self.seeds is not None and not self.seeds:
            raise C123Error("parameter seeds=[] names no seed: leave it out for seed 0")
        if self.elevation is not None and str(self.elevation).strip().lower() != ELEVATION_TRUE:
            elevation_value(self.elevation, f"parameter elevation={self.elevation!r}",
                            "pass the degrees every case's input view is assumed to be taken from, 'estimate', "
                            "'true', or leave it out")
        if self.work_fn is not None and ":" not in str(self.work_fn):
            raise C123Error(f"parameter work_fn={self.work_fn!r} is not module:function")
        case_patterns(self.cases)
        get_protocol(self.protocol)
        parse_thresholds(self.thresholds)


def flow_parameters(fn: Callable[..., dict]) -> Callable[..., dict]:
    """`fn(**params)` with BenchmarkSpec's fields as its keyword parameters (names, types, defaults, order):
    what Prefect reads for the flow's parameter schema and casts deployment parameters by."""
    hints = typing.get_type_hints(BenchmarkSpec)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in dataclasses.fields(BenchmarkSpec)]
    fn.__signature__ = inspect.Signature(params, return_annotation=dict)
    fn.__annotations__ = {**{p.name: p.annotation for p in params}, "return": dict}
    return fn


# ---- configs -------------------------------------------------------------------------------------
ELEVATION_TRUE = "true"
"""The flow's `elevation` value that assumes each case's true elevation (where its layout knows it)."""


def assumed_elevation(case: Case, elevation: float | str | None = None) -> float | str | None:
    """The elevation a case's run assumes: the flow's parameter, else the case's table value; a number,
    'estimate', or None (the config's). 'true' is the case's true elevation (one line if its layout has none)."""
    assumed = elevation if elevation is not None else case.ref_elevation
    if isinstance(assumed, str) and assumed.strip().lower() == ELEVATION_TRUE:
        if case.true_elevation is None:
            raise C123Error(f"parameter elevation='{ELEVATION_TRUE}': case {case.id}'s dataset does not know the "
                            "elevation its input was taken from: pass degrees or 'estimate'")
        return float(case.true_elevation)
    # a deployment passes text ('30', 'Estimate'): the number or 'estimate' it means (checked in check_spec)
    return elevation_value(assumed, f"elevation {assumed!r} of case {case.id}", "pass degrees, 'estimate' or 'true'")


def case_config(cfg: ReconstructConfig, case: Case, elevation: float | str | None = None) -> ReconstructConfig:
    """The config one case runs with. The reference camera is raised to the assumed elevation (camera.ref_polar =
    90 - elevation, camera.estimate_elevation off): `elevation` (the flow's parameter) when given, else the case's
    table value (GSO, synthetic: the true one), else the config's; 'estimate' turns camera.estimate_elevation on.
    An oracle that follows the case (prior.oracle_scene 'case', the verify preset) answers with the case's own
    synthetic scene, seen relative to the camera its input was really rendered from (prior.oracle_elevation =
    the case's true elevation), whatever elevation is assumed."""
    follows_case = cfg.prior.oracle_scene == ORACLE_FROM_CASE
    assumed = assumed_elevation(case, elevation)
    if not follows_case and assumed is None:
        return cfg
    if follows_case and not case.scene:
        raise C123Error(f"case {case.id} has no ground-truth scene, but preset '{cfg.preset}' answers Zero-1-to-3's "
                        "question with the true view of the case's synthetic scene: use the dataset synthetic")
    resolved = copy.deepcopy(cfg)
    if follows_case:
        resolved.prior.oracle_scene = case.scene
        if case.true_elevation is not None:
            resolved.prior.oracle_elevation = float(case.true_elevation)
    if assumed == ELEVATION_ESTIMATE:
        resolved.camera.estimate_elevation = True
    elif assumed is not None:
        resolved.camera.ref_polar = 90.0 - float(assumed)
        resolved.camera.estimate_elevation = False  # given: nothing to estimate
    return resolved


ELEVATION_SOURCES = ("parameter", "table", "config", "estimate")
"""Where a case's assumed elevation came from (per_case `elevation_source`): the flow's `elevation` parameter,
the dataset table's `elevation` column, the config (the preset's 0, or a camera.ref_polar override), or the
estimate from the image (the parameter's, the table's or the preset's 'estimate')."""


def elevation_source(case: Case, elevation: float | str | None = None, cfg: ReconstructConfig | None = None) -> str:
    """Which of ELEVATION_SOURCES gave `case_config(cfg, case, elevation)` its reference camera."""
    if (cfg is not None and cfg.camera.estimate_elevation) or elevation == ELEVATION_ESTIMATE \
            or (elevation is None and case.ref_elevation == ELEVATION_ESTIMATE):
        return "estimate"
    if elevation is not None:
        return "parameter"
    return "table" if case.ref_elevation is not None else "config"


def variant_folder(cfg: ReconstructConfig) -> str:
    """cases/<this>/...: the variant, with the weight shape appended when it is not the default 'exp'."""
    shape = cfg.schedule.weight_shape
    return cfg.schedule.variant if shape == "exp" else f"{cfg.schedule.variant}-{shape}"


def resolve_inputs(spec: BenchmarkSpec) -> tuple[Dataset, list[str], list[int], dict[tuple[str, int], ReconstructConfig]]:
    """(Dataset, variants, seeds, {(variant, seed): config}); every user error raised here as one C123Error line
    (every config value checked; the device is checked where the actors run)."""
    spec.check()
    variants = list(spec.variants or [preset(spec.preset).schedule.variant])
    seeds = list(spec.seeds if spec.seeds is not None else [0])
    ds = filter_cases(load_dataset(spec.dataset, spec.data_root), spec.cases)
    overrides = protocol_overrides(get_protocol(spec.protocol), list(spec.overrides or []))
    configs = {(v, s): validate(resolve_config(spec.preset, v, s, overrides), check_device=False)
               for v in variants for s in seeds}
    for case in ds.cases:  # a case the config cannot run (the oracle needs its scene) is refused now
        validate(case_config(configs[(variants[0], seeds[0])], case, spec.elevation), check_device=False)
    folders = {variant_folder(cfg) for (v, s), cfg in configs.items() if s == seeds[0]}
    if len(folders) < len(variants):
        raise C123Error(f"variants {', '.join(variants)} resolve to the same configuration: list each once")
    return ds, variants, seeds, configs


# ---- the checked spec ----------------------------------------------------------------------------
def default_run_dir(dataset: str, preset_name: str) -> Path | str:
    """$C123_RUNS (a folder or a URL, default ./runs)/<dataset>-<preset>-<UTC time>."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return storage.join(os.environ.get(RUNS_ENV) or Path("runs"), f"{Path(dataset).name}-{preset_name}-{stamp}")


@dataclass
class Checked:
    """A spec resolved and checked against this machine and the folders it names; nothing written yet."""

    dataset: Dataset
    variants: list[str]
    seeds: list[int]
    configs: dict[tuple[str, int], ReconstructConfig]
    """{(variant, seed): ReconstructConfig}."""
    protocol: MetricProtocol
    baseline: Path | str | None
    run_dir: Path | str

    @property
    def first(self) -> ReconstructConfig:
        """The config of the first variant and seed (the run's protocol and run.json read it)."""
        return self.configs[(self.variants[0], self.seeds[0])]


def check_spec(spec: BenchmarkSpec, log) -> Checked:
    """Every check that can fail before compute, as one C123Error line: parameters, dataset, configs, the run
    folder (not another dataset's or preset's), the baseline (same dataset, shares a case), the metric models
    (present on this machine)."""
    offline_defaults()
    ds, variants, seeds, configs = resolve_inputs(spec)
    run_dir = storage.output_location(spec.out or default_run_dir(ds.name, spec.preset))
    storage.check_reachable(run_dir)
    check_run_json(run_dir, ds.name, spec.preset)
    # a run going on there now: refused before anything starts (plan() locks it for real; a URL has no lock)
    if isinstance(run_dir, Path) and run_dir.is_dir():
        RunLock(run_dir).acquire().release()
    first = configs[(variants[0], seeds[0])]
    requested = get_protocol(spec.protocol)
    if spec.clip_model:
        requested = dataclasses.replace(requested, clip_model=spec.clip_model)
    protocol = resolve_protocol(requested, first.prior.clip_model, first.train.eval_views,
                                spec.preset in TINY_MODEL_PRESETS)
    baseline = check_baseline(spec.baseline, run_dir, ds.name, spec.preset, [c.id for c in ds.cases], log)
    check_golden(spec.golden, run_dir, ds.name, spec.preset)
    return Checked(ds, variants, seeds, configs, protocol, baseline, run_dir)
