"""Metrics of one finished case folder (docs/METHOD.md section 4) under a metric protocol, as a Prefect task.

- CLIP-similarity: mean cosine between the CLIP image embedding of the reference and each orbit view
  `views/view_*.png`; per-view values go to per_view.parquet.
- PSNR and LPIPS at the reference view: `views/ref_render.png` vs `reference.png`.
- Synthetic cases (a ground-truth scene): novel-view PSNR/LPIPS of the orbit views against the true
  views rendered by c123.synthetic at the same cameras (saved to `truth/` in the case folder), the PSNR
  of the views at least 90 degrees from the reference (`unseen_psnr`), the silhouette IoU of the views, and
  the squared Chamfer distance (`chamfer_sq`) and F-score between points sampled on the exported mesh and on
  the true surface. Per view: CLIP-similarity, and for synthetic cases novel-view PSNR and silhouette IoU.
- Under the `syncdreamer` protocol, for synthetic and GSO cases: SyncDreamer's Chamfer and volume IoU of the
  exported mesh and PSNR/SSIM/LPIPS-VGG of the 16 orbit views (the `sd_*` columns; `syncdreamer_metrics`).

How images are read (background, sizes, CLIP normalisation) is the protocol's (c123.metrics.PROTOCOLS); the
resolved protocol is recorded in run.json and with every row. A metric that cannot be computed is NaN
and its reason goes into `metric_status` ('ok' when all worked, else '; '-joined 'metric: reason'); never 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from c123.errors import C123Error
from c123.metrics import METRICS, SYNCDREAMER_METRICS, GsoTruth, MetricProtocol
from c123_pipeline.tasks import cache, storage

NAN = math.nan
CHAMFER_POINTS = 10000
"""Points sampled on each surface for the Chamfer distance."""


def resolve_protocol(protocol: MetricProtocol, preset_clip: str, eval_views: int, tiny: bool) -> MetricProtocol:
    """The protocol with every choice made, checked on this machine before any case runs: the CLIP (the
    protocol's, else the preset's) must be here, and the LPIPS backbone too; WeightsMissingError names the
    download. The tiny preset writes its CLIP on first use and, without torchvision's backbone, scores LPIPS
    with a seeded random one (named '<net>-random')."""
    from c123.metrics import LpipsMetric, lpips_backbone_cached
    from c123.priors.weights import resolve

    clip_model = protocol.clip_model or preset_clip
    if not (tiny and clip_model == preset_clip):
        resolve(clip_model, f"CLIP-similarity metric (protocol {protocol.name})")
    def backbone(net: str) -> str:
        if lpips_backbone_cached(net):
            return net
        if not tiny:
            LpipsMetric(net)  # raises the WeightsMissingError with the download command
        return f"{net}-random"
    return dataclasses.replace(protocol, clip_model=clip_model, num_views=protocol.num_views or eval_views,
                               lpips_net=backbone(protocol.lpips_net),
                               sd_lpips_net=backbone(protocol.sd_lpips_net) if protocol.syncdreamer else
                               protocol.sd_lpips_net)


def protocol_overrides(protocol: MetricProtocol, overrides: list[str]) -> list[str]:
    """The config override a protocol needs (its number of orbit views) added to `overrides`; a conflicting
    train.eval_views is a C123Error."""
    if protocol.views_at_reference_elevation:
        overrides = [*overrides, "train.eval_at_ref_polar=true"]
    if protocol.num_views is None:
        return list(overrides)
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "train.eval_views" and value.strip() != str(protocol.num_views):
            raise C123Error(f"metric protocol {protocol.name} scores {protocol.num_views} orbit views but "
                            f"--set {item.strip()} asks for {value.strip()}: drop that override or use "
                            "--protocol c123")
    return [*overrides, f"train.eval_views={protocol.num_views}"]


@dataclass
class MetricModels:
    """The metric networks of a resolved protocol, loaded once per flow run; a model that failed to load
    leaves its reason (each row then says it)."""

    protocol: MetricProtocol
    device: str = "cpu"
    clip: object | None = None
    lpips: object | None = None
    sd_lpips: object | None = None
    """LPIPS with the protocol's sd_lpips_net (SyncDreamer's protocol only)."""
    errors: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def load_metric_models(protocol: MetricProtocol, device: str = "cpu") -> MetricModels:
    """CLIP and LPIPS of a resolved protocol (`resolve_protocol`)."""
    from c123.metrics import ClipSimilarity, LpipsMetric

    models = MetricModels(protocol=protocol, device=device)
    try:
        models.clip = ClipSimilarity(protocol.clip_model, device, normalize_only=protocol.resize == "area")
    except Exception as err:  # noqa: BLE001 - recorded per row
        models.errors["clip_similarity"] = _reason(err)
    net, _, random = protocol.lpips_net.partition("-")
    try:
        models.lpips = LpipsMetric(net, device, random_backbone=random == "random")
    except Exception as err:  # noqa: BLE001
        models.errors["lpips"] = models.errors["novel_lpips"] = _reason(err)
    if protocol.syncdreamer:
        net, _, random = protocol.sd_lpips_net.partition("-")
        try:
            models.sd_lpips = LpipsMetric(net, device, random_backbone=random == "random")
        except Exception as err:  # noqa: BLE001
            models.errors["sd_lpips"] = _reason(err)
    return models


def protocol_columns(protocol: MetricProtocol, num_views: int, resolution: int) -> dict:
    """The protocol columns of a per_case row."""
    return {"protocol": protocol.name, "clip_model": protocol.clip_model, "num_views": int(num_views),
            "resolution": int(resolution), "background": protocol.background, "lpips_net": protocol.lpips_net}


def compute_case_metrics(case_dir: str | Path, result: dict, models: MetricModels,
                         scene: str | None = None, gso: GsoTruth | None = None) -> dict:
    """Metrics of one finished case folder: scalar metrics, metric_status and per-view values."""
    from c123.metrics import psnr

    out = Path(case_dir)
    proto = models.protocol
    status: list[str] = []
    values = {k: NAN for k in METRICS}
    views_meta = result.get("views") or _views_on_disk(out)
    per_view = [{"view_index": i, "azimuth": float(v.get("azimuth", NAN)),
                 "elevation": 90.0 - float(v.get("polar", 90.0)), "clip_similarity": NAN, "novel_psnr": NAN,
                 "silhouette_iou": NAN} for i, v in enumerate(views_meta)]
    reference = views = None
    try:
        reference = _read_rgba(out / result.get("outputs", {}).get("reference", "reference.png"))
    except Exception as err:  # noqa: BLE001
        status.append(f"reference: {_reason(err)}")
    try:
        views = np.stack([_read_rgba(out / v["file"]) for v in views_meta]) if views_meta else None
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
            ref, each_view = proto.image(reference, proto.clip_size), [proto.image(v, proto.clip_size) for v in views]
            with models.lock:
                mean, each = models.clip(ref, np.stack(each_view))
            values["clip_similarity"] = float(mean)
            for row, v in zip(per_view, each):
                row["clip_similarity"] = float(v)
        attempt("clip_similarity", clip_sim)
    else:
        status.append("clip_similarity: inputs missing")

    ref_render = None
    try:
        ref_render = _read_rgba(out / result.get("outputs", {}).get("ref_render", "views/ref_render.png"))
    except Exception as err:  # noqa: BLE001
        status.append(f"ref_render: {_reason(err)}")
    if reference is not None and ref_render is not None:
        attempt("psnr", lambda: values.__setitem__(
            "psnr", psnr(proto.image(ref_render, proto.psnr_size), proto.image(reference, proto.psnr_size))))

        def lp():
            with models.lock:
                values["lpips"] = models.lpips(proto.image(ref_render, proto.lpips_size),
                                               proto.image(reference, proto.lpips_size))
        attempt("lpips", lp)
    else:
        status += [f"{m}: inputs missing" for m in ("psnr", "lpips")]

    if scene:
        ground_truth_metrics(out, scene, result, views_meta, views, models, values, per_view, attempt, status)
    if proto.syncdreamer:
        if scene or gso:
            syncdreamer_metrics(out, result, views_meta, views, models, values, attempt, scene=scene, gso=gso)
        else:
            status += [f"{m}: no ground truth (synthetic and GSO cases have one)" for m in SYNCDREAMER_METRICS]

    values["metric_status"] = "ok" if not status else "; ".join(status)
    resolution = int(views.shape[1]) if views is not None else int(
        result.get("config", {}).get("train", {}).get("eval_size", 0) or 0)
    values.update(protocol_columns(proto, len(per_view), resolution))
    values["per_view"] = per_view
    return values


def ground_truth_metrics(out: Path, scene: str, result: dict, views_meta: list[dict], views: np.ndarray | None,
                         models: MetricModels, values: dict, per_view: list[dict], attempt, status: list[str]) -> None:
    """The metrics against a synthetic case's known object, into `values` and `per_view` (`attempt` records
    a metric's failure as NaN with its reason); the true views are saved to the case's truth/ folder."""
    from c123.metrics import UNSEEN_ANGLE, chamfer_squared, fscore, psnr, silhouette_iou

    proto = models.protocol
    truth = None
    try:
        truth = _true_views(scene, views_meta, result, views.shape[1:3] if views is not None else None)
        _save_truth(out, views_meta, truth)
    except Exception as err:  # noqa: BLE001
        status += [f"{m}: true views: {_reason(err)}" for m in ("novel_psnr", "novel_lpips", "unseen_psnr",
                                                                "silhouette_iou")]
    if truth is not None and views is not None:
        def novel_psnr():
            each = [psnr(proto.image(v, proto.psnr_size), proto.image(t, proto.psnr_size)) for v, t in zip(views, truth)]
            for row, value in zip(per_view, each):
                row["novel_psnr"] = value
            values["novel_psnr"] = float(np.mean(each))
        attempt("novel_psnr", novel_psnr)

        def unseen_psnr():
            unseen = [row["novel_psnr"] for row, far in zip(per_view, _unseen(views_meta, result)) if far]
            if not unseen:
                raise ValueError(f"no orbit view is {UNSEEN_ANGLE:g} degrees or more from the reference")
            if any(math.isnan(v) for v in unseen):
                raise ValueError("novel-view PSNR missing")
            values["unseen_psnr"] = float(np.mean(unseen))
        attempt("unseen_psnr", unseen_psnr)

        def novel_lp():
            with models.lock:
                values["novel_lpips"] = float(np.mean([models.lpips(proto.image(v, proto.lpips_size),
                                                                    proto.image(t, proto.lpips_size))
                                                       for v, t in zip(views, truth)]))
        attempt("novel_lpips", novel_lp)

        def iou():
            each = [silhouette_iou(v[..., 3] / 255.0, t[..., 3] / 255.0) for v, t in zip(views, truth)]
            for row, value in zip(per_view, each):
                row["silhouette_iou"] = value
            values["silhouette_iou"] = float(np.mean(each))
        attempt("silhouette_iou", iou)

    mesh_path = out / result.get("outputs", {}).get("mesh_obj", "mesh/mesh.obj")
    mesh_points = functools.cache(lambda: _mesh_points(mesh_path))
    attempt("chamfer_sq", lambda: values.__setitem__("chamfer_sq", chamfer_squared(mesh_points(), _scene_points(scene))))
    attempt("fscore", lambda: values.__setitem__("fscore", fscore(mesh_points(), _scene_points(scene))))


def syncdreamer_metrics(out: Path, result: dict, views_meta: list[dict], views: np.ndarray | None,
                        models: MetricModels, values: dict, attempt, scene: str | None = None,
                        gso: GsoTruth | None = None) -> None:
    """The `sd_*` columns (c123.metrics, SyncDreamer's protocol) into `values`. The exported mesh goes into
    SyncDreamer's frame: for GSO by c123_to_syncdreamer (the reference camera becomes its input camera), for a
    synthetic scene by the transform that normalises the true surface (both live in the scene's frame). The true
    points come from GSO's depth renders, or from the scene's mesh rasterised like the prediction; the true views
    are GSO's renders, or the scene rendered at the orbit views' cameras (saved in truth/)."""
    from c123 import metrics as M

    cam = result.get("config", {}).get("camera", {})
    fovy, radius = float(cam.get("fovy", 20.0)), float(cam.get("ref_radius", 3.2))
    truth = functools.cache(lambda: _gso_truth(gso) if gso else _scene_truth(scene))
    mesh_path = out / result.get("outputs", {}).get("mesh_obj", "mesh/mesh.obj")

    @functools.cache
    def predicted():
        import trimesh

        mesh = trimesh.load(mesh_path, force="mesh", process=False)
        if len(mesh.faces) == 0:
            raise ValueError(f"{mesh_path.name} has no faces")
        v = M.c123_to_syncdreamer(mesh.vertices, fovy, radius) if gso else truth()["to_frame"](mesh.vertices)
        return v, np.asarray(mesh.faces)

    attempt("sd_chamfer", lambda: values.__setitem__("sd_chamfer", M.syncdreamer_chamfer(
        M.syncdreamer_points(*M.syncdreamer_depth_maps(*predicted())), truth()["points"])))
    attempt("sd_volume_iou", lambda: values.__setitem__("sd_volume_iou", M.volume_iou(
        M.mesh_inside_grid(*predicted()), truth()["inside"])))

    @functools.cache
    def pairs():
        if views is None:
            raise ValueError("no orbit views")
        true_views = _gso_views(gso, len(views)) if gso else _read_truth_views(out, views_meta)
        return [(M.syncdreamer_image(v), M.syncdreamer_image(t)) for v, t in zip(views, true_views, strict=True)]

    attempt("sd_psnr", lambda: values.__setitem__("sd_psnr", float(np.mean([M.syncdreamer_psnr(p, t)
                                                                          for p, t in pairs()]))))
    attempt("sd_ssim", lambda: values.__setitem__("sd_ssim", float(np.mean([M.ssim(p, t) for p, t in pairs()]))))

    def lp():
        with models.lock:
            values["sd_lpips"] = float(np.mean([models.sd_lpips(t, p) for p, t in pairs()]))
    attempt("sd_lpips", lp)


def _gso_truth(gso: GsoTruth) -> dict:
    """GSO ground truth in SyncDreamer's frame: its depth renders' points and the normalised mesh's volume."""
    import trimesh

    from c123 import metrics as M

    key = ("gso", gso)
    if key not in _TRUTH:
        mesh = trimesh.load(gso.mesh, force="mesh", process=False)
        v = M.normalize_ground_truth(mesh.vertices, gso.rotation)
        depth = [M.read_syncdreamer_depth(Path(gso.views) / f"{k:03}-depth.png") for k in range(M.SD_VIEWS)]
        _TRUTH[key] = {"points": M.syncdreamer_points(np.stack([d for d, _ in depth]), np.stack([m for _, m in depth])),
                       "inside": M.mesh_inside_grid(v, mesh.faces)}
    return _TRUTH[key]


def _scene_truth(scene: str) -> dict:
    """A synthetic scene's surface (marching cubes of its SDF) in SyncDreamer's frame, normalised as GSO meshes are:
    its points from the 16 depth maps, its volume, and the map of the scene's frame into it."""
    from c123 import metrics as M

    key = ("scene", scene)
    if key not in _TRUTH:
        v, f = _scene_mesh(scene)
        v_sd = v[:, [2, 0, 1]]  # c123 (y up, azimuth 0 on +z) -> z up, azimuth 0 on +x
        to_frame = functools.partial(_normalised_like, v_sd)
        norm = to_frame(v)
        _TRUTH[key] = {"points": M.syncdreamer_points(*M.syncdreamer_depth_maps(norm, f)),
                       "inside": M.mesh_inside_grid(norm, f), "to_frame": to_frame}
    return _TRUTH[key]


def _normalised_like(truth_sd: np.ndarray, points) -> np.ndarray:
    from c123 import metrics as M

    return M.normalize_ground_truth(truth_sd, 0.0, apply_to=np.asarray(points, dtype=np.float64)[:, [2, 0, 1]])


SCENE_MESH_RESOLUTION = 64
"""Marching-cubes grid over the synthetic scenes' [-0.5, 0.5]^3 box for their true mesh (SyncDreamer protocol)."""


def _scene_mesh(scene: str) -> tuple[np.ndarray, np.ndarray]:
    import mcubes
    import torch

    from c123.synthetic import get_scene

    n = SCENE_MESH_RESOLUTION
    c = torch.linspace(-0.55, 0.55, n)
    grid = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    sdf = torch.cat([get_scene(scene).sdf(grid[i:i + 65536]) for i in range(0, len(grid), 65536)])
    v, f = mcubes.marching_cubes(sdf.reshape(n, n, n).numpy(), 0.0)
    return v * (1.1 / (n - 1)) - 0.55, f.astype(np.int64)


_TRUTH: dict = {}


def _gso_views(gso: GsoTruth, n: int) -> list[np.ndarray]:
    from c123.metrics import SD_VIEWS

    if n != SD_VIEWS:
        raise ValueError(f"{n} orbit views, but SyncDreamer's protocol scores {SD_VIEWS}")
    return [_read_rgba(Path(gso.views) / f"{k:03}.png") for k in range(n)]


def _read_truth_views(out: Path, views_meta: list[dict]) -> list[np.ndarray]:
    from c123_pipeline.reports.runs import TRUTH_DIR

    return [_read_rgba(out / TRUTH_DIR / Path(meta["file"]).name) for meta in views_meta]


def failed_case_metrics(protocol: MetricProtocol, num_views: int, resolution: int) -> dict:
    """The metric columns of a case that did not finish: NaN everywhere, status says why."""
    row = {k: NAN for k in METRICS}
    row["metric_status"] = "not computed: case failed"
    row.update(protocol_columns(protocol, num_views, resolution))
    row["per_view"] = []
    return row


def metrics_key(case_key: str, protocol: MetricProtocol, scene: str | None, gso: GsoTruth | None = None) -> str:
    """Key of a case's cached metrics: its result key, the resolved protocol and the ground truth (synthetic scene
    or GSO files)."""
    extra = {"gso": dataclasses.asdict(gso)} if gso else {}
    return cache.metrics_key(case_key, {**dataclasses.asdict(protocol), "scene": scene, **extra})


def cached_metrics(case_dir: str | Path, key: str) -> dict | None:
    """Metrics cached in the case folder under `key`, NaN restored; None when absent or stale."""
    data = cache.load_metrics(case_dir, key)
    if data is None or not set(METRICS) <= set(data):  # written before a metric existed: compute again
        return None
    data.pop("key", None)
    return _none_to_nan(data)


@task(name="case-metrics", cache_policy=NO_CACHE, retries=0)
def case_metrics_task(case_dir: str, result: dict, models: MetricModels, key: str,
                      scene: str | None = None, gso: GsoTruth | None = None) -> dict:
    """Metrics of one case; cached in the case folder's metrics.json (not when a metric model failed to
    load, so that a rerun with the weights in place computes them)."""
    with storage.local_copy(case_dir, skip=("checkpoints", "video")) as folder:  # a copy when on object storage
        values = compute_case_metrics(folder, result, models, scene, gso)
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
    """The synthetic scene rendered at the cameras of the saved orbit views: uint8 RGBA, like the views."""
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
    return np.rint(rendered["rgba"].clamp(0, 1).numpy() * 255).astype(np.uint8)


def _save_truth(out: Path, views_meta: list[dict], truth: np.ndarray) -> None:
    """The true views as PNGs in the case's truth/ folder, named as the orbit views they match."""
    from PIL import Image

    from c123.atomic import atomic_path
    from c123_pipeline.reports.runs import TRUTH_DIR

    (out / TRUTH_DIR).mkdir(exist_ok=True)
    for meta, image in zip(views_meta, truth):
        with atomic_path(out / TRUTH_DIR / Path(meta["file"]).name) as tmp:
            Image.fromarray(image, "RGBA").save(tmp, format="PNG")


def _unseen(views_meta: list[dict], result: dict) -> list[bool]:
    """Per orbit view: whether it is at least UNSEEN_ANGLE from the camera the input was really taken from
    (result.json's input_camera true_elevation / true_azimuth, which a synthetic case knows), else from the
    reference camera of the case's config: what the input never showed, whatever camera the run assumed."""
    import torch

    from c123.cameras import orbit_cameras, view_angle
    from c123.metrics import UNSEEN_ANGLE

    cam_cfg = result.get("config", {}).get("camera", {})
    known = result.get("input_camera") or {}
    polar = float(cam_cfg.get("ref_polar", 90.0)) if known.get("true_elevation") is None else \
        90.0 - float(known["true_elevation"])
    azimuth = float(cam_cfg.get("ref_azimuth", 0.0)) if known.get("true_azimuth") is None else \
        float(known["true_azimuth"])
    ref = orbit_cameras(polar, azimuth, 1.0, 20.0)
    cams = orbit_cameras(torch.tensor([float(v.get("polar", 90.0)) for v in views_meta], dtype=torch.float64),
                         torch.tensor([float(v.get("azimuth", 0.0)) for v in views_meta], dtype=torch.float64),
                         1.0, 20.0)
    return (view_angle(cams, ref) >= UNSEEN_ANGLE - 1e-6).tolist()


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
    out = {k: (NAN if v is None and k in METRICS else v) for k, v in data.items()}
    out["per_view"] = [{k: (NAN if v is None else v) for k, v in row.items()} for row in data.get("per_view", [])]
    return out
