"""Evaluation metrics (docs/METHOD.md sections 4 and 6): PSNR, LPIPS, CLIP similarity, and against a known
object (the synthetic scenes, GSO) the squared Chamfer distance, F-score, silhouette IoU and SyncDreamer's GSO
protocol (its Chamfer, volume IoU and 16-view PSNR/SSIM/LPIPS: `syncdreamer_*`, section at the end).

Images are channel-last [..., H, W, 3] in [0, 1], already composited on white (`composite_white`).
A metric that cannot be computed raises; it never returns 0. The pipeline records NaN and the reason.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from c123.errors import WeightsMissingError

# torchvision builder and weights URL the lpips package loads for each backbone (torchvision 0.29)
_LPIPS_BACKBONES = {"alex": ("alexnet", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
                    "vgg": ("vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth"),
                    "squeeze": ("squeezenet1_1", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth")}


HIGHER_IS_BETTER = {"clip_similarity": True, "psnr": True, "lpips": False, "novel_psnr": True, "novel_lpips": False,
                    "chamfer_sq": False, "unseen_psnr": True, "fscore": True, "silhouette_iou": True,
                    "sd_chamfer": False, "sd_volume_iou": True, "sd_psnr": True, "sd_ssim": True, "sd_lpips": False}
"""Every metric of a case (the per_case columns, in order) and which way is better. `chamfer_sq` is the column
once called `chamfer` (sum of the two squared mean nearest distances, scene units; RENAMED_COLUMNS reads old
runs); the `sd_*` columns are SyncDreamer's GSO protocol (protocol 'syncdreamer'; NaN under the others)."""
METRICS = tuple(HIGHER_IS_BETTER)
SYNCDREAMER_METRICS = ("sd_chamfer", "sd_volume_iou", "sd_psnr", "sd_ssim", "sd_lpips")
"""The columns of SyncDreamer's protocol: Chamfer (mean unsquared nearest distance, both ways, halved; units of
a ground truth whose largest extent is 1), volume IoU on a 64^3 grid, and PSNR/SSIM/LPIPS-VGG over its 16
views at elevation 30 (the published GSO tables' columns)."""
GROUND_TRUTH_METRICS = ("novel_psnr", "novel_lpips", "chamfer_sq", "unseen_psnr", "fscore", "silhouette_iou",
                        *SYNCDREAMER_METRICS)
"""The metrics against a known object (synthetic and GSO cases only; NaN elsewhere)."""
RENAMED_COLUMNS = {"chamfer": "chamfer_sq"}
"""Old per_case column -> its name now (the meaning is unchanged): reports read runs written before."""
FSCORE_DISTANCE = 0.01
"""A surface point counts as matched within this distance (world units: 1% of the [-0.5, 0.5]^3 box the
synthetic scenes fit in, the usual F-score at 1%)."""
UNSEEN_ANGLE = 90.0
"""Orbit views at least this far (degrees, great circle) from the reference camera show sides it cannot see."""

MAGIC123_CLIP = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
"""CLIP's image statistics (OpenAI), as Magic123's evaluation normalises with them."""


@dataclass(frozen=True)
class MetricProtocol:
    """How the metrics of a result are computed; run.json and every per_case row record the one used."""

    name: str
    """Its name in PROTOCOLS (the `protocol` column)."""
    clip_model: str | None = None
    """CLIP of the CLIP-similarity (Hub id or folder); None: the preset's detector CLIP."""
    num_views: int | None = None
    """Orbit views scored; None: as many as the reconstruction writes (train.eval_views). A number is what
    the reconstruction must write: the benchmark requests it (train.eval_views) or refuses a conflict."""
    background: str = "white"
    """'white': RGBA composited on white; 'white-where-transparent': only pixels with alpha == 0 turn white."""
    resize: str = "none"
    """'none': images at the render size (CLIP through its folder's own resize, crop and mean/std); 'area':
    OpenCV INTER_AREA resampling to the sizes below, CLIP normalised with the OpenAI mean/std."""
    clip_size: int | None = None
    """CLIP input size with resize='area'."""
    lpips_size: int | None = None
    """LPIPS input size (None: the render size)."""
    psnr_size: int | None = None
    """PSNR image size (None: the render size)."""
    lpips_net: str = "alex"
    """LPIPS backbone; '<net>-random' when the tiny preset falls back to a seeded random backbone."""
    views_at_reference_elevation: bool = False
    """True: the orbit views are rendered at the reference camera's polar angle (train.eval_at_ref_polar), as
    SyncDreamer's 16 views sit at the input's elevation; False: on the equator."""
    syncdreamer: bool = False
    """True: the `sd_*` columns are computed (SyncDreamer's GSO protocol) for cases with a ground truth."""
    sd_lpips_net: str = "vgg"
    """Backbone of sd_lpips (eval_nvs.py: VGG); '<net>-random' as lpips_net. The other columns keep lpips_net."""

    def image(self, rgba: np.ndarray, size: int | None = None) -> np.ndarray:
        """uint8 RGBA [H,W,4] -> float RGB [H,W,3] in [0,1] on white as this protocol reads it; with resize
        'area', resampled to size x size (None: kept at its size)."""
        if self.background == "white-where-transparent":
            rgb = np.where(rgba[..., 3:] == 0, np.uint8(255), rgba[..., :3])
        else:
            rgb = composite_white(rgba)
        if size is None or self.resize == "none":
            return rgb.astype(np.float32) / 255 if rgb.dtype == np.uint8 else rgb
        as_uint8 = rgb if rgb.dtype == np.uint8 else np.rint(rgb * 255).astype(np.uint8)
        return area_resize(as_uint8, size).astype(np.float32) / 255


PROTOCOLS = {
    "c123": MetricProtocol("c123"),
    "magic123": MetricProtocol("magic123", clip_model=MAGIC123_CLIP, num_views=100,
                               background="white-where-transparent", resize="area", clip_size=224,
                               lpips_size=224, psnr_size=800),
    "syncdreamer": MetricProtocol("syncdreamer", num_views=16, views_at_reference_elevation=True, syncdreamer=True),
}
"""c123 (default): CLIP-similarity with the preset's CLIP over the views the reconstruction writes, PSNR and
LPIPS at the reference view, everything composited on white at the render size. magic123: the closest public
protocol (Magic123's all_metrics/metric_utils.py): CLIP ViT-bigG-14 image-image over 100 orbit views, images
read with only alpha == 0 turned white, INTER_AREA resized to 224 with the OpenAI mean/std, LPIPS at 224,
PSNR at 800. syncdreamer: SyncDreamer's GSO protocol (eval_mesh.py, eval_nvs.py): 16 orbit views at the
reference elevation scored against the true views with PSNR/SSIM/LPIPS-VGG, and the exported mesh against the
true surface with its Chamfer and volume IoU (the `sd_*` columns); CLIP-similarity, PSNR and LPIPS at the
reference view and the other columns as c123 reads them (their LPIPS stays AlexNet), over the 16 views."""


def get_protocol(name: str) -> MetricProtocol:
    """The named metric protocol; an unknown name lists the known ones."""
    if name not in PROTOCOLS:
        from c123.errors import C123Error
        raise C123Error(f"unknown metric protocol '{name}': use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's INTER_AREA resize of a uint8 [H,W,C] image to size x size (no OpenCV needed).

    Shrinking averages the source pixels each target pixel covers (fractional at the borders); enlarging
    repeats pixels and blends only across pixel borders, as cv2.resize(..., INTER_AREA) does."""
    rows, cols = _area_weights(image.shape[0], size), _area_weights(image.shape[1], size)
    out = np.tensordot(rows, image.astype(np.float64), axes=(1, 0))           # [size, W, C]
    out = np.tensordot(out, cols, axes=(1, 1)).transpose(0, 2, 1)             # [size, size, C]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _area_weights(n: int, m: int) -> np.ndarray:
    """[m, n] weights taking n source samples to m target samples with INTER_AREA's rule."""
    w = np.zeros((m, n))
    if m <= n:  # shrink: the overlap of [i, i+1) with the target pixel's [j*s, (j+1)*s), over s
        s = n / m
        for j in range(m):
            lo, hi = j * s, (j + 1) * s
            for i in range(int(np.floor(lo)), min(n, int(np.ceil(hi)))):
                w[j, i] = (min(hi, i + 1) - max(lo, i)) / s
    else:  # enlarge: OpenCV's area-mode linear coefficients
        for j in range(m):
            i = int(np.floor(j * n / m))
            f = (j + 1) - (i + 1) * m / n
            f = 0.0 if f <= 0 else f - np.floor(f)
            w[j, min(i, n - 1)] += 1 - f
            w[j, min(i + 1, n - 1)] += f
    return w


def composite_white(rgba):
    """Straight-alpha RGBA [..., 4] (float 0..1 array or tensor; uint8 arrays are scaled) -> RGB on white."""
    if isinstance(rgba, np.ndarray) and rgba.dtype == np.uint8:
        rgba = rgba.astype(np.float32) / 255
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return rgb * alpha + (1 - alpha)


def psnr(pred, target) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (data range 1); inf for identical images."""
    a, b = _as_numpy(pred), _as_numpy(target)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
    _check_finite(a, b, "psnr")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(-10 * np.log10(mse))


class LpipsMetric:
    """LPIPS distance (lower = more similar) with the lpips package's linear heads.

    The backbone comes from torchvision's cache (TORCH_HOME); random_backbone=True keeps the heads on a
    backbone drawn at random with a fixed seed (named '<net>-random'), which only makes sense for tests.
    """

    RANDOM_SEED = 0
    """Seed of the random backbone, so that two runs score the same images the same."""

    def __init__(self, net: str = "alex", device="cpu", random_backbone: bool = False):
        if net not in _LPIPS_BACKBONES:
            raise ValueError(f"unknown LPIPS net '{net}': use one of {', '.join(_LPIPS_BACKBONES)}")
        if not random_backbone:
            _require_backbone(net)
        import lpips

        self.net, self.device = net, torch.device(device)
        self.name = f"{net}-random" if random_backbone else net
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")  # lpips calls torchvision's deprecated `pretrained=` argument
            torch.manual_seed(self.RANDOM_SEED)  # the random backbone is drawn the same in every run
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
        self.model = self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, a, b) -> float:
        """Mean LPIPS between two images (or equal-sized batches) [..., H, W, 3] in [0, 1]."""
        x, y = _as_batch(a, self.device), _as_batch(b, self.device)
        if x.shape != y.shape:
            raise ValueError(f"lpips: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        _check_finite(x, y, "lpips")
        return float(self.model(x * 2 - 1, y * 2 - 1).mean())


class ClipSimilarity:
    """Cosine similarity between the CLIP embedding of the reference image and of each rendered view."""

    def __init__(self, model, device="cpu", batch_size: int = 16, normalize_only: bool = False):
        from c123.priors.clip import ClipModel

        if isinstance(model, ClipModel):
            self.clip, self.model_id = model, "loaded"
        else:
            from c123.priors.weights import resolve

            self.clip = ClipModel.from_pretrained(resolve(str(model), "CLIP-similarity metric"), device)
            self.model_id = str(model)
        self.batch_size = batch_size
        self.normalize_only = normalize_only
        """True: images come at the CLIP's input size and get only the OpenAI mean/std (Magic123's way); False:
        the CLIP folder's own resize, centre crop and mean/std."""

    def embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings [B,D] of images [B,3,H,W] in [0,1]."""
        if not self.normalize_only:
            return self.clip.image_embeds(images)
        mean = torch.tensor(OPENAI_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_STD, device=images.device).view(1, 3, 1, 1)
        model = self.clip.model
        # a CLIP trained at another size (the tiny test models) takes the protocol's size by interpolating its
        # position embeddings; at its own size (ViT-bigG-14 at 224) this changes nothing
        pooled = model.vision_model(pixel_values=(images - mean) / std, interpolate_pos_encoding=True).pooler_output
        return torch.nn.functional.normalize(model.visual_projection(pooled), dim=-1)

    @torch.no_grad()
    def __call__(self, ref_rgb, views_rgb) -> tuple[float, np.ndarray]:
        """(mean, per-view [N]) cosine between ref [H,W,3] and views [N,H,W,3], all in [0, 1] on white."""
        ref = _as_batch(ref_rgb, self.clip.device)
        views = _as_batch(views_rgb, self.clip.device)
        _check_finite(ref, views, "clip similarity")
        ref_embed = self.embeds(ref)
        per_view = torch.cat([self.embeds(views[i:i + self.batch_size]) @ ref_embed[0]
                              for i in range(0, len(views), self.batch_size)])
        per_view = per_view.double().cpu().numpy()
        return float(per_view.mean()), per_view


def chamfer_squared(points_a, points_b) -> float:
    """Symmetric Chamfer distance with squared L2: mean_a min_b |a-b|^2 + mean_b min_a |a-b|^2."""
    d_ab, d_ba = nearest_distances(points_a, points_b, "chamfer")
    return float(np.mean(d_ab ** 2) + np.mean(d_ba ** 2))


def fscore(points_pred, points_true, distance: float = FSCORE_DISTANCE) -> float:
    """F-score at `distance` of a reconstructed surface's samples against the true surface's: the harmonic mean
    of precision (predicted points within `distance` of the truth) and recall (true points within `distance`
    of the prediction), in [0, 1]; 0 when nothing is within reach (a real value, not a failure)."""
    d_pred, d_true = nearest_distances(points_pred, points_true, "fscore")
    precision, recall = float(np.mean(d_pred < distance)), float(np.mean(d_true < distance))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def nearest_distances(points_a, points_b, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each point of a to its nearest in b, of each point of b to its nearest in a)."""
    from scipy.spatial import cKDTree

    a, b = _as_numpy(points_a).astype(np.float64), _as_numpy(points_b).astype(np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != 3 or b.shape[1] != 3 or not len(a) or not len(b):
        raise ValueError(f"{what}: need two non-empty [N,3] point sets, got {a.shape} and {b.shape}")
    _check_finite(a, b, what)
    return cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]


def silhouette_iou(alpha_pred, alpha_true, threshold: float = 0.5) -> float:
    """Intersection over union of the masks alpha > threshold of two alpha images [..., H, W] in [0, 1]."""
    a, b = _as_numpy(alpha_pred), _as_numpy(alpha_true)
    if a.shape != b.shape:
        raise ValueError(f"silhouette iou: shapes differ, {a.shape} vs {b.shape}")
    _check_finite(a, b, "silhouette iou")
    pred, true = a > threshold, b > threshold
    union = int((pred | true).sum())
    if union == 0:
        raise ValueError("silhouette iou: both silhouettes are empty")
    return float((pred & true).sum() / union)


def lpips_backbone_cached(net: str = "alex") -> bool:
    """Whether torchvision's backbone weights of an LPIPS net are on this machine."""
    try:
        _require_backbone(net)
    except WeightsMissingError:
        return False
    return True


def _require_backbone(net: str) -> None:
    """Fail fast, without a network attempt, when torchvision's backbone weights are not cached."""
    builder, url = _LPIPS_BACKBONES[net]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        raise WeightsMissingError(
            f"LPIPS ({net}): torchvision's backbone weights {cached} are missing; download {url} to that path "
            f"(TORCH_HOME moves it), e.g. run `python -c \"import torchvision; torchvision.models."
            f"{builder}(weights='IMAGENET1K_V1')\"` on a connected machine and copy the file")


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _as_batch(x, device) -> torch.Tensor:
    """[H,W,3] or [N,H,W,3] (array or tensor) -> float [N,3,H,W] on device."""
    t = torch.as_tensor(_as_numpy(x), dtype=torch.float32, device=device)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB images [..., H, W, 3], got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def _check_finite(a, b, what: str) -> None:
    finite = torch.isfinite if isinstance(a, torch.Tensor) else np.isfinite
    if not (bool(finite(a).all()) and bool(finite(b).all())):
        raise ValueError(f"{what}: input contains NaN or inf")


# ---- SyncDreamer's GSO protocol ------------------------------------------------------------------------------
# Re-implemented from liuyuan-pal/SyncDreamer (MIT): eval_mesh.py (rasterize_depth_map, get_points_from_mesh,
# get_points_from_depth, ds_and_save, norm_coords, transform_gt, get_chamfer_iou, get_gt_rotate_angle),
# eval_nvs.py (compute_psnr_float, color_map_forward, main) and meta_info/camera-16.pkl. Their frame: z up, the
# ground truth scaled to a largest extent of 1 and centred; cameras in OpenCV axes (x right, y down, z forward).
SD_SIZE = 256
"""Side of the 16 depth maps and views."""
SD_FOCAL = 280.0
"""Focal length in pixels of camera-16.pkl's K (principal point at the image centre): a 49.1 degree field."""
SD_DISTANCE = 1.5
SD_ELEVATION = 30.0
SD_VIEWS = 16
"""camera-16.pkl: 16 cameras at distance 1.5, elevation 30, azimuth 22.5 k degrees from +x towards +y."""
SD_NEAR, SD_FAR = 0.5, 100.0
"""Depth range of rasterize_depth_map's clip space."""
SD_DEPTH_RANGE, SD_DEPTH_VALID = (0.6, 2.4), (0.63, 2.37)
"""16-bit depth PNGs map 0..65535 onto DEPTH_MIN..DEPTH_MAX; only depths strictly inside the valid range count."""
SD_VOXEL = 0.01
"""Voxel size of the point clouds' downsampling (Open3D voxel_down_sample)."""
SD_IOU_GRID = 64
"""Volume IoU grid: mesh2sdf's size x size x size samples of [-1, 1]^3, inside where the SDF < 0."""
SD_ROTATIONS = {"sofa": -90.0, **dict.fromkeys(("blocks", "alarm", "backpack", "chicken", "soap", "grandfather",
                                                 "grandmother", "lion", "lunch_bag", "mario", "oil"), 270.0),
                "elephant": 180.0, "school_bus1": 180.0, **dict.fromkeys(("school_bus2", "shoe", "train", "turtle"), 225.0),
                "sorter": 112.5}
"""get_gt_rotate_angle: degrees the GSO mesh turns about z to face the renders (0 for the objects not named)."""


def syncdreamer_cameras() -> tuple[np.ndarray, np.ndarray]:
    """(K [3,3], world-to-camera poses [16,3,4]) of camera-16.pkl, computed: each camera looks at the origin from
    elevation 30 at distance 1.5, its x axis horizontal (tests check the values against the file)."""
    K = np.array([[SD_FOCAL, 0, SD_SIZE / 2], [0, SD_FOCAL, SD_SIZE / 2], [0, 0, 1]])
    el = np.deg2rad(SD_ELEVATION)
    poses = []
    for az in np.deg2rad(np.arange(SD_VIEWS) * 360.0 / SD_VIEWS):
        centre = SD_DISTANCE * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        forward = -centre / np.linalg.norm(centre)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        R = np.stack([right, np.cross(forward, right), forward])
        poses.append(np.concatenate([R, -R @ centre[:, None]], 1))
    return K, np.stack(poses)


def c123_to_syncdreamer(points, fovy: float, radius: float) -> np.ndarray:
    """c123 world points (y up, azimuth 0 on +z) -> SyncDreamer's frame (z up, azimuth 0 on +x), scaled so a
    reference view of c123's camera (fovy, radius) and SyncDreamer's input view (K, distance 1.5) image the
    object at the same size: the exported mesh lands where the ground truth is."""
    p = _as_numpy(points).astype(np.float64)
    scale = SD_DISTANCE * (SD_SIZE / 2 / SD_FOCAL) / (radius * np.tan(np.deg2rad(fovy) / 2))
    return scale * p[:, [2, 0, 1]]


@dataclass(frozen=True)
class GsoTruth:
    """A GSO case's ground truth as SyncDreamer publishes it."""

    mesh: str
    """The object's mesh file as scanned (normalised by the protocol)."""
    views: str
    """Folder of the 16 true renders NNN.png and depth maps NNN-depth.png at camera-16's cameras."""
    rotation: float = 0.0
    """Degrees the mesh turns about z to face the renders (SD_ROTATIONS)."""


def normalize_ground_truth(vertices, rotation: float = 0.0, apply_to=None) -> np.ndarray:
    """transform_gt: scale so the largest extent is 1, centre the bounding box, turn `rotation` degrees about -z.
    With `apply_to`, those points get the transform that normalises `vertices` (a prediction in the truth's frame)."""
    v = _as_numpy(vertices).astype(np.float64)
    scale = 1 / np.max(v.max(0) - v.min(0))
    centre = (v.max(0) + v.min(0)) * scale / 2
    a = -np.deg2rad(rotation)
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    p = v if apply_to is None else _as_numpy(apply_to).astype(np.float64)
    return (p * scale - centre) @ R.T


def syncdreamer_depth_maps(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    """(depth [16,H,W], mask [16,H,W]) of a mesh in SyncDreamer's frame from its 16 cameras, as
    rasterize_depth_map does (clip w = 1: depth interpolated linearly on screen), with c123's rasteriser."""
    from c123.rasterizer import get_rasterizer

    K, poses = syncdreamer_cameras()
    v = _as_numpy(vertices).astype(np.float64)
    clips = []
    for pose in poses:
        cam = v @ pose[:, :3].T + pose[:, 3]
        proj = cam @ K.T
        depth = proj[:, 2].copy()
        depth[(np.abs(depth) < 1e-4) & (depth != 0)] = np.copysign(1e-4, depth[(np.abs(depth) < 1e-4) & (depth != 0)])
        xy = proj[:, :2] / depth[:, None]
        ndc = np.stack([(xy[:, 0] * 2 - SD_SIZE) / SD_SIZE, (xy[:, 1] * 2 - SD_SIZE) / SD_SIZE,
                        (depth - SD_NEAR) / (SD_FAR - SD_NEAR) * 2 - 1, np.ones_like(depth)], -1)
        clips.append(ndc)
    clip = torch.as_tensor(np.stack(clips), dtype=torch.float32)
    tris = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    with torch.no_grad():
        rast = get_rasterizer("torch").rasterize(clip, tris, (SD_SIZE, SD_SIZE))
    depth = ((rast[..., 2].double() + 1) / 2 * (SD_FAR - SD_NEAR) + SD_NEAR).numpy()
    return depth, (rast[..., 3] != 0).numpy()


def read_syncdreamer_depth(path) -> tuple[np.ndarray, np.ndarray]:
    """read_depth_objaverse: a 16-bit depth PNG -> (depth [H,W], mask of the valid depths)."""
    from PIL import Image

    with Image.open(path) as img:
        raw = np.asarray(img).astype(np.float32)
    lo, hi = SD_DEPTH_RANGE
    depth = raw / 65535 * (hi - lo) + lo
    return depth, (depth > SD_DEPTH_VALID[0]) & (depth < SD_DEPTH_VALID[1])


def syncdreamer_points(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """get_points_from_mesh / get_points_from_depth: the 16 depth maps [16,H,W] back-projected (mask_depth_to_pts:
    pixel (col, row) without a half-pixel shift) into the world, then voxel-downsampled at 0.01 [N,3]."""
    K, poses = syncdreamer_cameras()
    K_inv = np.linalg.inv(K)
    points = []
    for d, m, pose in zip(depth, mask, poses):
        rows, cols = np.nonzero(m)
        z = d[rows, cols].astype(np.float32)
        cam = np.stack([cols * z, rows * z, z], -1).astype(np.float32) @ K_inv.T
        points.append((cam - pose[:, 3]) @ pose[:, :3])  # pose_inverse applied: R^T (p - t)
    points = np.concatenate(points).astype(np.float32)
    if not len(points):
        raise ValueError("syncdreamer points: no depth map covers any pixel")
    return voxel_downsample(points, SD_VOXEL)


def voxel_downsample(points, voxel: float) -> np.ndarray:
    """Open3D's PointCloud.voxel_down_sample: voxels of side `voxel` anchored half a voxel below the points'
    minimum; each occupied voxel becomes the mean of its points (float64)."""
    p = _as_numpy(points).astype(np.float64)
    index = np.floor((p - (p.min(0) - voxel / 2)) / voxel).astype(np.int64)
    _, inverse, counts = np.unique(index, axis=0, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse.reshape(-1), p)
    return sums / counts[:, None]


def syncdreamer_chamfer(points_pred, points_true) -> float:
    """get_chamfer_iou's Chamfer: (mean nearest distance pred -> true + mean true -> pred) / 2, unsquared."""
    d_pred, d_true = nearest_distances(points_pred, points_true, "syncdreamer chamfer")
    return float((np.mean(d_pred) + np.mean(d_true)) / 2)


def mesh_inside_grid(vertices, faces, size: int = SD_IOU_GRID) -> np.ndarray:
    """get_chamfer_iou's volume: mesh2sdf.compute(..., size, fix=False) < 0 on its size^3 grid of [-1, 1]^3."""
    import mesh2sdf

    v, f = _as_numpy(vertices).astype(np.float64), np.asarray(faces)
    if not len(f):
        raise ValueError("volume iou: the mesh has no faces")
    return mesh2sdf.compute(v, f, size, fix=False, return_mesh=False) < 0


def grid_points(size: int = SD_IOU_GRID) -> np.ndarray:
    """The sample points [size, size, size, 3] of mesh2sdf's grid (its csrc/pybind.cpp: -1 + 2 i / size, i < size,
    along x, y, z), for an inside test given by a function instead of a mesh."""
    c = np.arange(size) * 2 / size - 1
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)


def volume_iou(inside_pred: np.ndarray, inside_true: np.ndarray) -> float:
    """sum(pred & true) / sum(pred | true) of two boolean grids."""
    if inside_pred.shape != inside_true.shape:
        raise ValueError(f"volume iou: grids differ, {inside_pred.shape} vs {inside_true.shape}")
    union = int((inside_pred | inside_true).sum())
    if union == 0:
        raise ValueError("volume iou: both volumes are empty")
    return float((inside_pred & inside_true).sum() / union)


def syncdreamer_image(rgba: np.ndarray) -> np.ndarray:
    """color_map_forward: uint8 RGB(A) [H,W,C] -> float32 RGB on white; resized (INTER_AREA) to 256 if needed."""
    if rgba.shape[0] != SD_SIZE or rgba.shape[1] != SD_SIZE:
        rgba = area_resize(rgba, SD_SIZE)
    rgb = rgba.astype(np.float32) / 255
    return rgb if rgb.shape[-1] == 3 else rgb[..., :3] * rgb[..., 3:] + (1 - rgb[..., 3:])


SSIM_BORDER = 5
"""Pixels of SSIM's map left out at each border: torchmetrics before 1.5 (Lightning-AI/torchmetrics PR #2721,
September 2024) cropped the reflect-padded half window of its 11 x 11 Gaussian, and SyncDreamer's 2023 numbers
were measured so; newer versions average the whole map."""


def syncdreamer_psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """compute_psnr_float: float32 [H,W,3] images, the squared error averaged per channel over the pixels
    (numpy's float32 column sums, whose rounding the published numbers carry: ~1e-3 dB from float64), then over
    the channels."""
    a, b = np.asarray(pred, np.float32).reshape(-1, 3), np.asarray(target, np.float32).reshape(-1, 3)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
    _check_finite(a, b, "psnr")
    mse = float(np.mean(np.mean((b - a) ** 2, 0)))
    return float("inf") if mse == 0 else float(10 * np.log10(1 / mse))


def ssim(pred, target, dtype=torch.float32) -> float:
    """SSIM as eval_nvs.py called torchmetrics in 2023: 11 x 11 Gaussian window (sigma 1.5), the data range taken
    from the images, the map's SSIM_BORDER cropped before the mean; in float32 as eval_nvs.py ran it (its
    variances, E[x^2] - E[x]^2, lose ~1e-4 of SSIM to cancellation against float64)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = _as_batch(pred, "cpu").to(dtype), _as_batch(target, "cpu").to(dtype)
    _check_finite(x, y, "ssim")
    _, full = structural_similarity_index_measure(x, y, return_full_image=True)
    b = SSIM_BORDER
    return float(full[..., b:-b, b:-b].mean())


def syncdreamer_nvs(views: list[np.ndarray], truth: list[np.ndarray], lpips_metric) -> dict[str, list[float]]:
    """eval_nvs.py per view: PSNR (float images on white), SSIM and LPIPS of each view against its true view."""
    out = {"psnr": [], "ssim": [], "lpips": []}
    for view, true in zip(views, truth, strict=True):
        pr, gt = syncdreamer_image(view), syncdreamer_image(true)
        out["psnr"].append(syncdreamer_psnr(pr, gt))
        out["ssim"].append(ssim(pr, gt))
        out["lpips"].append(lpips_metric(gt, pr))
    return out
