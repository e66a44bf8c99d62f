"""Metrics of one finished case folder (METHOD.md section 6), as a Prefect task.

- CLIP-similarity: mean cosine between the CLIP image embedding of the reference (on white) and each orbit
  view `views/view_*.png` (on white); per-view values go to per_view.parquet.
- PSNR and LPIPS at the reference view: `views/ref_render.png` vs `reference.png`, both on white.
- Synthetic cases (a ground-truth scene): novel-view PSNR/LPIPS of the orbit views against the true
  views rendered by c123.synthetic at the same cameras, and the Chamfer distance between points sampled
  on the exported mesh and on the true surface.

A metric that cannot be computed is NaN and its reason goes into `metric_status` ('ok' when all worked,
else '; '-joined 'metric: reason'); never 0. The protocol (CLIP model, number of views, resolution,
background, LPIPS net) is recorded with every row.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from c123.errors import C123Error
from tasks import cache

NAN = math.nan
CHAMFER_POINTS = 10000
"""Points sampled on each surface for the Chamfer distance."""


@dataclass
class MetricModels:
    """The metric networks, loaded once per flow run; a model that failed to load leaves its reason."""

    clip_model: str
    lpips_net: str
    device: str = "cpu"
    clip: object | None = None
    lpips: object | None = None
    errors: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def lpips_name(self) -> str:
        return getattr(self.lpips, "name", self.lpips_net)


def load_metric_models(clip_model: str, lpips_net: str = "alex", device: str = "cpu",
                       allow_random_lpips: bool = False) -> MetricModels:
    """CLIP for the similarity and LPIPS; without cached AlexNet weights, `allow_random_lpips` (the tiny
    preset) falls back to the lpips heads on a random backbone (recorded as e.g. 'alex-random')."""
    from c123.metrics import ClipSimilarity, LpipsMetric

    models = MetricModels(clip_model=clip_model, lpips_net=lpips_net, device=device)
    try:
        models.clip = ClipSimilarity(clip_model, device)
    except Exception as err:  # noqa: BLE001 - recorded per row
        models.errors["clip_similarity"] = _reason(err)
    try:
        models.lpips = LpipsMetric(lpips_net, device)
    except Exception as err:  # noqa: BLE001
        if allow_random_lpips:
            try:
                models.lpips = LpipsMetric(lpips_net, device, random_backbone=True)
            except Exception as err2:  # noqa: BLE001
                models.errors["lpips"] = _reason(err2)
        else:
            models.errors["lpips"] = _reason(err)
    return models


def protocol_of(models: MetricModels, num_views: int, resolution: int) -> dict:
    """The protocol columns of a row."""
    from c123.metrics import MetricProtocol

    return asdict(MetricProtocol(clip_model=models.clip_model, num_views=int(num_views),
                                 resolution=int(resolution), background="white", lpips_net=models.lpips_name))


def compute_case_metrics(case_dir: str | Path, result: dict, models: MetricModels,
                         scene: str | None = None) -> dict:
    """Metrics of one finished case folder: scalar metrics, metric_status and per-view CLIP values."""
    from c123.metrics import chamfer_distance, composite_white, psnr

    out = Path(case_dir)
    status: list[str] = []
    values = {k: NAN for k in ("clip_similarity", "psnr", "lpips", "novel_psnr", "novel_lpips", "chamfer")}
    views_meta = result.get("views") or _views_on_disk(out)
    per_view = [{"view_index": i, "azimuth": float(v.get("azimuth", NAN)),
                 "elevation": 90.0 - float(v.get("polar", 90.0)), "clip_similarity": NAN}
                for i, v in enumerate(views_meta)]
    reference = views = None
    try:
        reference = composite_white(_read_rgba(out / result.get("outputs", {}).get("reference", "reference.png")))
    except Exception as err:  # noqa: BLE001
        status.append(f"reference: {_reason(err)}")
    try:
        views = np.stack([composite_white(_read_rgba(out / v["file"])) for v in views_meta]) if views_meta else None
        if views is None:
            raise FileNotFoundError(f"no orbit views in {out / 'views'}")
    except Exception as err:  # noqa: BLE001
        status.append(f"views: {_reason(err)}")
        views = None

    def attempt(name: str, fn):
        if name in models.errors:
            status.append(f"{name}: {models.errors[name]}")
            return
        try:
            fn()
        except Exception as err:  # noqa: BLE001
            status.append(f"{name}: {_reason(err)}")
            values[name] = NAN

    if reference is not None and views is not None:
        def clip_sim():
            with models.lock:
                mean, each = models.clip(reference, views)
            values["clip_similarity"] = float(mean)
            for row, v in zip(per_view, each):
                row["clip_similarity"] = float(v)
        attempt("clip_similarity", clip_sim)
    else:
        status.append("clip_similarity: inputs missing")

    ref_render = None
    try:
        ref_render = composite_white(_read_rgba(out / result.get("outputs", {}).get("ref_render",
                                                                                    "views/ref_render.png")))
    except Exception as err:  # noqa: BLE001
        status.append(f"ref_render: {_reason(err)}")
    if reference is not None and ref_render is not None:
        attempt("psnr", lambda: values.__setitem__("psnr", psnr(ref_render, reference)))

        def lp():
            with models.lock:
                values["lpips"] = models.lpips(ref_render, reference)
        attempt("lpips", lp)
    else:
        status += [f"{m}: inputs missing" for m in ("psnr", "lpips")]

    if scene:
        truth = None
        try:
            truth = _true_views(scene, views_meta, result, views.shape[1:3] if views is not None else None)
        except Exception as err:  # noqa: BLE001
            status += [f"{m}: true views: {_reason(err)}" for m in ("novel_psnr", "novel_lpips")]
        if truth is not None and views is not None:
            attempt("novel_psnr", lambda: values.__setitem__(
                "novel_psnr", float(np.mean([psnr(v, t) for v, t in zip(views, truth)]))))

            def novel_lp():
                with models.lock:
                    values["novel_lpips"] = float(np.mean([models.lpips(v, t) for v, t in zip(views, truth)]))
            attempt("novel_lpips", novel_lp)

        def chamfer():
            mesh_path = out / result.get("outputs", {}).get("mesh_obj", "mesh/mesh.obj")
            values["chamfer"] = chamfer_distance(_mesh_points(mesh_path), _scene_points(scene))
        attempt("chamfer", chamfer)

    values["metric_status"] = "ok" if not status else "; ".join(status)
    resolution = int(views.shape[1]) if views is not None else int(
        result.get("config", {}).get("train", {}).get("eval_size", 0) or 0)
    values.update(protocol_of(models, len(per_view), resolution))
    values["per_view"] = per_view
    return values


def failed_case_metrics(models: MetricModels, num_views: int, resolution: int) -> dict:
    """The metric columns of a case that did not finish: NaN everywhere, status says why."""
    row = {k: NAN for k in ("clip_similarity", "psnr", "lpips", "novel_psnr", "novel_lpips", "chamfer")}
    row["metric_status"] = "not computed: case failed"
    row.update(protocol_of(models, num_views, resolution))
    row["per_view"] = []
    return row


def metrics_key(case_key: str, clip_model: str, lpips_net: str, allow_random_lpips: bool,
                scene: str | None) -> str:
    """Key of a case's cached metrics: its result key and the requested protocol."""
    return cache.metrics_key(case_key, {"clip_model": clip_model, "lpips_net": lpips_net,
                                        "allow_random_lpips": allow_random_lpips, "scene": scene,
                                        "background": "white"})


def cached_metrics(case_dir: str | Path, key: str) -> dict | None:
    """Metrics cached in the case folder under `key`, NaN restored; None when absent or stale."""
    data = cache.load_metrics(case_dir, key)
    if data is None:
        return None
    data.pop("key", None)
    return _none_to_nan(data)


@task(name="case-metrics", cache_policy=NO_CACHE, retries=0)
def case_metrics_task(case_dir: str, result: dict, models: MetricModels, key: str,
                      scene: str | None = None) -> dict:
    """Metrics of one case; cached in the case folder's metrics.json (not when a metric model failed to
    load, so that a rerun with the weights in place computes them)."""
    values = compute_case_metrics(case_dir, result, models, scene)
    if not models.errors:
        cache.save_metrics(case_dir, key, values)
    return values


# ---- helpers -----------------------------------------------------------------------------------
def _reason(err: BaseException) -> str:
    msg = " ".join(str(err).split()) or type(err).__name__
    return msg if isinstance(err, C123Error) else f"{type(err).__name__}: {msg}"


def _read_rgba(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGBA"))


def _views_on_disk(out: Path) -> list[dict]:
    files = sorted((out / "views").glob("view_*.png"))
    n = len(files)
    return [{"file": f"views/{f.name}", "azimuth": 360.0 * i / n, "polar": 90.0} for i, f in enumerate(files)]


def _true_views(scene: str, views_meta: list[dict], result: dict, size) -> np.ndarray:
    """The synthetic scene rendered (on white) at the cameras of the saved orbit views."""
    import torch

    from c123.cameras import orbit_cameras
    from c123.synthetic import get_scene

    if size is None:
        raise ValueError("no orbit views to compare")
    cam_cfg = result.get("config", {}).get("camera", {})
    polar = torch.tensor([float(v.get("polar", 90.0)) for v in views_meta])
    azimuth = torch.tensor([float(v.get("azimuth", 0.0)) for v in views_meta])
    cams = orbit_cameras(polar, azimuth, float(cam_cfg.get("ref_radius", 3.2)), float(cam_cfg.get("fovy", 20.0)))
    rendered = get_scene(scene).render(cams, int(size[0]), int(size[1]))
    rgba = rendered["rgba"].clamp(0, 1).numpy()
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])


def _mesh_points(path: Path, n: int = CHAMFER_POINTS) -> np.ndarray:
    import trimesh

    mesh = trimesh.load(path, force="mesh", process=False)
    if len(mesh.faces) == 0:
        raise ValueError(f"{path.name} has no faces")
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=0)
    return np.asarray(points)


_SCENE_POINTS: dict[str, np.ndarray] = {}


def _scene_points(scene: str, n: int = CHAMFER_POINTS) -> np.ndarray:
    from c123.synthetic import get_scene

    if scene not in _SCENE_POINTS:
        _SCENE_POINTS[scene] = get_scene(scene).sample_surface(n).numpy()
    return _SCENE_POINTS[scene]


def _none_to_nan(data: dict) -> dict:
    out = {k: (NAN if v is None and k in ("clip_similarity", "psnr", "lpips", "novel_psnr", "novel_lpips",
                                           "chamfer") else v) for k, v in data.items()}
    out["per_view"] = [{k: (NAN if v is None else v) for k, v in row.items()} for row in data.get("per_view", [])]
    return out
