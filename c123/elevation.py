"""Elevation of the input camera, estimated with the 3D prior's own views (One-2-3-45's method).

Zero-1-to-3 is told only the *relative* camera of each novel view, so a reconstruction has to assume the
elevation the input was shot from; a wrong assumption tilts every novel view. One-2-3-45 (Liu et al., 2023,
"One-2-3-45: Any Single Image to 3D Mesh in 45 Seconds without Per-Shape Optimization", arXiv 2306.16928, its
camera pose estimation; code One-2-3-45/One-2-3-45 elevation_estimate/utils/elev_est_api.py) estimates it from
four views the 3D prior draws around the input, at (d polar, d azimuth) = (-10, 0), (+10, 0), (0, -10), (0, +10)
degrees (utils/zero123_utils.py `zero123_infer`, delta_x_2 / delta_y_2): their relative poses are known, the
elevation they hang from is not. For each candidate elevation it places the four cameras on the sphere,
triangulates the points matched between two views with those cameras (cv2.triangulatePoints), reprojects them
into another view where the same points were matched, and keeps the candidate with the lowest reprojection
error, first on a 10 degree grid, then on a 1 degree grid around the best (`get_elev_est`, `find_optim_elev`,
`ba_error_general`).

This module re-implements that procedure (no code is copied) in this repository's camera convention
(c123/cameras.py). Where it differs, and why:
- matching: One-2-3-45 runs LoFTR, a learned semi-dense matcher whose weights come from a download. Here the
  matcher is classical OpenCV: `lk` (default) tracks a grid of foreground pixels with pyramidal Lucas-Kanade on
  the colour images (cv2.calcOpticalFlowPyrLK; Bouguet's pyramidal implementation) and keeps a track only where
  the backward track returns within `fb_max_px` (forward-backward check, Kalal et al. 2010); `sift` matches SIFT
  keypoints (cv2.SIFT, Lowe 2004) with the ratio test, mutually. Both keep only the foreground (One-2-3-45
  masks out the white background too), eroded by `erode_px` so points on the silhouette, which slide over the
  surface as the view turns, are left out. On the synthetic scenes, which are smooth albedo with few corners,
  SIFT finds a few dozen matches, many of them on occlusion junctions, and its raw estimates miss by up to
  60 degrees (it then falls back); the semi-dense `lk` tracks (closer to LoFTR's density) stay within 5
  (docs/METHOD.md, "Elevation estimate");
- the views are drawn around the input itself (One-2-3-45 draws them around its stage-1 redraw of the input),
  with the caller's fovy (One-2-3-45 fixes K: f = 280 px at 256 px, fovy 49.1, Zero-1-to-3's training renders):
  the criterion does not depend on the radius but does on the field of view;
- base pairs: every pair of views (One-2-3-45: pairs (s, s+1), s < n - 1), each reprojected into every other view;
- the error of a (base pair, third view) is the mean over its points of min(error, `error_cap_px`) (a truncated,
  robust mean) instead of One-2-3-45's confidence-weighted mean: no classical matcher gives LoFTR's per-match
  confidence, and the few points on occlusion boundaries that survive the checks would otherwise dominate it;
- a photometric refinement follows (`refine`, not in One-2-3-45): the candidates within 5 degrees of the track
  estimate are scored by `photometric_errors`, a plane sweep along each pixel's ray through the hypothesis'
  cameras (the test multi-view stereo uses). The tracks of a classical matcher on smooth albedo are off by pixels
  along its weakly textured direction, which pulled the synthetic scenes' estimates 1-4 degrees towards the
  equator; exact correspondences give the true elevation with the same criterion, and the refinement leaves at
  most 1 degree (docs/METHOD.md, "Elevation estimate");
- a confidence is returned (agreement of the triplets x depth of the error curve's minimum), and an estimate
  below `min_confidence`, with fewer than `min_tracks` points seen in three views, or whose matched points do not
  move between views (`min_motion_px`) falls back to elevation 0 with a warning (One-2-3-45 returns None only
  when a pair of views has no match at all).

Angles are degrees; elevation = 90 - polar (positive above the equator, c123/cameras.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from c123.cameras import Cameras, generate_rays, orbit_cameras
from c123.errors import C123Error

ONE2345_OFFSETS = ((-10.0, 0.0), (10.0, 0.0), (0.0, -10.0), (0.0, 10.0))
"""(d polar, d azimuth) of the prior's views around the input: One-2-3-45 utils/zero123_utils.py zero123_infer
(delta_x_2 = [-10, 10, 0, 0] polar, delta_y_2 = [0, 0, -10, 10] azimuth)."""

REFERENCE_SIZE = 256
"""Pixel lengths of the config (error cap, grid step, erosion) are meant at this view size (Zero-1-to-3's) and
scale with the size of the views given."""


class ElevationConfigError(C123Error):
    """An ElevationConfig value is out of its range."""


@dataclass(frozen=True)
class ElevationConfig:
    """How `estimate_elevation` searches (angles in degrees). Kept here, not as a section of c123/config.py: runs
    use these defaults (camera.estimate_elevation turns the estimate on), and a section there would enter every
    run's config hash, presets and `--help`. Pixel lengths are at a 256-pixel view and scale with the views'
    size."""

    elevation_range: tuple[float, float] = (-50.0, 60.0)
    """Candidate elevations, both ends included; -89 < low < high < 89. One-2-3-45 searches polar 30..140 in
    steps of 10 (np.arange(30, 150, 10)), i.e. elevation -50..60."""
    coarse_step: float = 10.0
    """Spacing of the first grid over `elevation_range`; > 0 (One-2-3-45: 10)."""
    fine_step: float = 1.0
    """Spacing of the second grid around the coarse best; in (0, coarse_step] (One-2-3-45: 1)."""
    fine_radius: float = 10.0
    """The second grid spans the coarse best +- this, clipped to `elevation_range`; >= 0 (One-2-3-45: 10)."""
    offsets: tuple[tuple[float, float], ...] = ONE2345_OFFSETS
    """(d polar, d azimuth) of each view the prior draws, relative to the input; at least 3 distinct pairs, each
    entry within +-45 (the views must overlap to be matched). (0, 0) asks the prior to redraw the input."""
    sample_steps: int = 75
    """DDIM steps of each drawn view; >= 1 (One-2-3-45 zero123_infer: ddim_steps=75)."""
    guidance_scale: float = 3.0
    """Classifier-free guidance of each drawn view; >= 1 (One-2-3-45: scale=3.0)."""
    matcher: Literal["lk", "sift"] = "lk"
    """'lk': pyramidal Lucas-Kanade tracks of a foreground grid with a forward-backward check (semi-dense, as
    LoFTR); 'sift': SIFT keypoints matched with the ratio test (sparse)."""
    background_threshold: float = 0.97
    """A pixel is background when all its channels are >= this (white background); in (0, 1]."""
    erode_px: float = 3.0
    """The foreground mask is eroded by this many pixels before points are taken from it or matched into it;
    >= 0."""
    grid_step_px: float = 3.0
    """lk: spacing of the grid of tracked pixels; >= 1."""
    lk_window_px: int = 15
    """lk: side of the Lucas-Kanade window (odd, >= 5); not scaled with the view size."""
    lk_levels: int = 3
    """lk: pyramid levels above the full image; in [0, 8]."""
    lk_min_eigenvalue: float = 1e-2
    """lk: a track is dropped where the window's spatial gradient matrix has a smaller (normalised) minimum
    eigenvalue (cv2.calcOpticalFlowPyrLK minEigThreshold; OpenCV's default 1e-4): flat or edge-only windows
    (the aperture problem) track unreliably; > 0."""
    fb_max_px: float = 0.5
    """lk: a track is kept when tracking back lands within this distance of its start; > 0."""
    ratio: float = 0.75
    """sift: a match is kept when its descriptor distance is below ratio x the second best, both ways; in (0, 1]."""
    sift_contrast: float = 0.01
    """sift: cv2.SIFT contrastThreshold (OpenCV's default 0.04); > 0."""
    error_cap_px: float = 2.0
    """Reprojection errors are capped at this before they are averaged (a truncated mean); > 0."""
    min_tracks: int = 30
    """Fewest tracks for an estimate (a track: a point of a base view found in the other base view and in a third
    view, counted once per base pair and third view); >= 1. Below it: the fallback."""
    min_motion_px: float = 1.0
    """Below this median displacement of the matched points between views, the views do not move with the
    camera (a prior that ignores it, or offsets too small to measure): the fallback; >= 0."""
    agree_deg: float = 5.0
    """Agreement: the fraction of triplets (base pair + third view) whose own best candidate lies within this of
    the estimate; > 0."""
    confidence_margin: float = 10.0
    """Margin: 1 - best error / the lowest error among candidates at least this far from the estimate (how much
    better the estimate explains the points than any clearly different elevation); > 0."""
    full_margin: float = 0.1
    """confidence = agreement x min(1, margin / full_margin): a flat error curve (margin ~0, e.g. a featureless
    or inconsistent set of views) has no confidence however the triplets vote; in (0, 1]."""
    refine: Literal["photometric", "none"] = "photometric"
    """'photometric': the track estimate is refined on a `refine_step` grid within +-`refine_radius` by the
    photometric criterion (`photometric_errors`: at the right elevation, every pixel of a view has a depth at which
    its patch looks the same in the other views); 'none': the track estimate as One-2-3-45 gives it. Not applied
    when the track estimate falls back."""
    refine_radius: float = 5.0
    """The refinement tries the track estimate +- this (clipped to `elevation_range`); >= 0."""
    refine_step: float = 1.0
    """Spacing of the refinement's candidates; > 0."""
    refine_depths: int = 64
    """Depths tried along each pixel's ray, evenly over radius +- `refine_depth_span`; >= 2."""
    refine_depth_span: float = 1.5
    """The object lies within this distance of the origin (c123's field: [-bound, bound]^3 with bound 1; the
    cameras look at the origin); > 0."""
    refine_patch_px: int = 2
    """Half side of the compared patches (2: 5 x 5 pixels at a 256-pixel view, scaled); >= 0."""
    refine_grid_px: float = 4.0
    """Spacing of the pixels whose depth is searched; >= 1."""
    refine_cap: float = 0.05
    """A pixel's squared colour difference (mean over the patch and the other views, colours in [0, 1]) is capped at
    this: a pixel occluded in a view costs at most this; > 0."""
    min_confidence: float = 0.5
    """An estimate whose confidence is below this falls back, with a warning; in [0, 1]."""
    fallback_elevation: float = 0.0
    """Elevation returned when the estimate is unreliable; in (-89, 89)."""

    def __post_init__(self) -> None:
        lo, hi = self.elevation_range
        checks = [
            (-89 < lo < hi < 89, "elevation_range must satisfy -89 < low < high < 89"),
            (self.coarse_step > 0, "coarse_step must be > 0"),
            (0 < self.fine_step <= self.coarse_step, "fine_step must be in (0, coarse_step]"),
            (self.fine_radius >= 0, "fine_radius must be >= 0"),
            (all(len(o) == 2 and abs(o[0]) <= 45 and abs(o[1]) <= 45 for o in self.offsets),
             "each offset must be a (d polar, d azimuth) pair within +-45 degrees"),
            (len({tuple(o) for o in self.offsets}) == len(self.offsets) >= 3,
             "offsets must hold at least 3 distinct (d polar, d azimuth) pairs, none repeated"),
            (self.sample_steps >= 1, "sample_steps must be >= 1"),
            (self.guidance_scale >= 1, "guidance_scale must be >= 1"),
            (self.matcher in ("lk", "sift"), "matcher must be 'lk' or 'sift'"),
            (0 < self.background_threshold <= 1, "background_threshold must be in (0, 1]"),
            (self.erode_px >= 0, "erode_px must be >= 0"),
            (self.grid_step_px >= 1, "grid_step_px must be >= 1"),
            (self.lk_window_px >= 5 and self.lk_window_px % 2 == 1, "lk_window_px must be odd and >= 5"),
            (0 <= self.lk_levels <= 8, "lk_levels must be in [0, 8]"),
            (self.lk_min_eigenvalue > 0, "lk_min_eigenvalue must be > 0"),
            (self.fb_max_px > 0, "fb_max_px must be > 0"),
            (0 < self.ratio <= 1, "ratio must be in (0, 1]"),
            (self.sift_contrast > 0, "sift_contrast must be > 0"),
            (self.error_cap_px > 0, "error_cap_px must be > 0"),
            (self.min_tracks >= 1, "min_tracks must be >= 1"),
            (self.min_motion_px >= 0, "min_motion_px must be >= 0"),
            (self.confidence_margin > 0, "confidence_margin must be > 0"),
            (self.agree_deg > 0, "agree_deg must be > 0"),
            (0 < self.full_margin <= 1, "full_margin must be in (0, 1]"),
            (self.refine in ("photometric", "none"), "refine must be 'photometric' or 'none'"),
            (self.refine_radius >= 0, "refine_radius must be >= 0"),
            (self.refine_step > 0, "refine_step must be > 0"),
            (self.refine_depths >= 2, "refine_depths must be >= 2"),
            (self.refine_depth_span > 0, "refine_depth_span must be > 0"),
            (self.refine_patch_px >= 0, "refine_patch_px must be >= 0"),
            (self.refine_grid_px >= 1, "refine_grid_px must be >= 1"),
            (self.refine_cap > 0, "refine_cap must be > 0"),
            (0 <= self.min_confidence <= 1, "min_confidence must be in [0, 1]"),
            (-89 < self.fallback_elevation < 89, "fallback_elevation must be in (-89, 89)"),
        ]
        for ok, text in checks:
            if not ok:
                raise ElevationConfigError(f"ElevationConfig: {text}")


@dataclass
class ElevationEstimate:
    """elevation_deg: the estimate, or the fallback; confidence in [0, 1]; details: the evidence (raw estimate,
    error of every candidate tried, point and track counts); warning: why the fallback was taken, else None."""

    elevation_deg: float
    confidence: float
    details: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None

    @property
    def fell_back(self) -> bool:
        """Whether the fallback elevation was returned."""
        return self.warning is not None


# ---- correspondences ---------------------------------------------------------------------------------------
@dataclass
class Tracks:
    """Points of each view and where they were found in the other views: points[a] [N_a,2] (pixel centres at
    integers, OpenCV's), found[a][b] [N_a,2] and valid[a][b] [N_a] bool (b != a)."""

    points: list[np.ndarray]
    found: list[dict[int, np.ndarray]]
    valid: list[dict[int, np.ndarray]]


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [0,1] -> [B,H,W,3] uint8 (contiguous)."""
    x = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return np.ascontiguousarray(np.round(x * 255.0).astype(np.uint8))


def foreground(image: np.ndarray, cfg: ElevationConfig, scale: float) -> np.ndarray:
    """uint8 mask (1 = object) of an RGB uint8 image on white, eroded by cfg.erode_px (scaled)."""
    import cv2

    mask = (image < round(255 * cfg.background_threshold)).any(-1).astype(np.uint8)
    r = int(round(cfg.erode_px * scale))
    if r > 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return mask


def _inside(mask: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Whether points [N,2] (x, y) fall on the mask (out of the image: False)."""
    h, w = mask.shape
    xy = np.round(pts).astype(np.int64)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    out = np.zeros(len(pts), dtype=bool)
    out[ok] = mask[xy[ok, 1], xy[ok, 0]] > 0
    return out


def lk_tracks(images: np.ndarray, cfg: ElevationConfig, scale: float) -> Tracks:
    """A grid over each view's foreground tracked into every other view by pyramidal Lucas-Kanade on the colour
    images (cv2.calcOpticalFlowPyrLK), kept where the backward track returns within fb_max_px and lands on the
    other view's foreground."""
    import cv2

    masks = [foreground(im, cfg, scale) for im in images]
    step = max(1, int(round(cfg.grid_step_px * scale)))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-3)
    lk = dict(winSize=(cfg.lk_window_px, cfg.lk_window_px), maxLevel=cfg.lk_levels, criteria=criteria,
              minEigThreshold=cfg.lk_min_eigenvalue)
    points, found, valid = [], [], []
    for a, image in enumerate(images):
        ys, xs = np.nonzero(masks[a][::step, ::step])
        p = (np.stack([xs, ys], -1) * step).astype(np.float32).reshape(-1, 1, 2)
        points.append(p.reshape(-1, 2).astype(np.float64))
        found.append({})
        valid.append({})
        for b, other in enumerate(images):
            if b == a:
                continue
            if len(p) == 0:
                found[a][b], valid[a][b] = np.zeros((0, 2)), np.zeros(0, dtype=bool)
                continue
            q, st, _ = cv2.calcOpticalFlowPyrLK(image, other, p, None, **lk)
            back, st_back, _ = cv2.calcOpticalFlowPyrLK(other, image, q, None, **lk)
            q2 = q.reshape(-1, 2).astype(np.float64)
            ok = (st.reshape(-1) == 1) & (st_back.reshape(-1) == 1)
            ok &= np.linalg.norm((back - p).reshape(-1, 2), axis=1) < cfg.fb_max_px * scale
            ok &= _inside(masks[b], q2) & np.isfinite(q2).all(1)
            found[a][b], valid[a][b] = q2, ok
    return Tracks(points, found, valid)


def sift_tracks(images: np.ndarray, cfg: ElevationConfig, scale: float) -> Tracks:
    """SIFT keypoints of each view's foreground (on grey), matched into every other view by OpenCV's brute-force
    L2 matcher with Lowe's ratio test, kept where the ratio-tested match back agrees (mutual)."""
    import cv2

    sift = cv2.SIFT_create(contrastThreshold=cfg.sift_contrast)
    feats = []
    for im in images:
        kp, desc = sift.detectAndCompute(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), foreground(im, cfg, scale) * 255)
        feats.append((np.array([k.pt for k in kp], dtype=np.float64).reshape(-1, 2), desc))
    matcher = cv2.BFMatcher(cv2.NORM_L2)

    def one_way(qd, td) -> dict[int, int]:
        if qd is None or td is None or len(qd) < 2 or len(td) < 2:
            return {}
        return {m.queryIdx: m.trainIdx for m, *rest in matcher.knnMatch(qd, td, k=2)
                if rest and m.distance < cfg.ratio * rest[0].distance}

    points = [f[0] for f in feats]
    found = [{} for _ in images]
    valid = [{} for _ in images]
    for a in range(len(images)):
        for b in range(len(images)):
            if b == a:
                continue
            fwd, bwd = one_way(feats[a][1], feats[b][1]), one_way(feats[b][1], feats[a][1])
            q, ok = np.zeros_like(points[a]), np.zeros(len(points[a]), dtype=bool)
            for i, j in fwd.items():
                if bwd.get(j) == i:
                    q[i], ok[i] = points[b][j], True
            found[a][b], valid[a][b] = q, ok
    return Tracks(points, found, valid)


@dataclass
class Triplet:
    """Points seen in base views s and t and in a third view j: their pixels in each."""

    s: int
    t: int
    j: int
    pts_s: np.ndarray
    pts_t: np.ndarray
    pts_j: np.ndarray


def triplets(tracks: Tracks) -> list[Triplet]:
    """For every base pair (s, t), s < t, and every other view j: the points of s found in both t and j
    (One-2-3-45 ba_error_general keeps the s->j matches whose point in s coincides with an s->t match's)."""
    n = len(tracks.points)
    out = []
    for s in range(n):
        for t in range(s + 1, n):
            for j in range(n):
                if j in (s, t):
                    continue
                keep = tracks.valid[s][t] & tracks.valid[s][j]
                if keep.any():
                    out.append(Triplet(s, t, j, tracks.points[s][keep], tracks.found[s][t][keep],
                                       tracks.found[s][j][keep]))
    return out


# ---- camera hypotheses and the criterion -------------------------------------------------------------------
def projection_matrices(elevation: float, offsets, *, fovy: float, radius: float, size: int) -> np.ndarray:
    """[n,3,4] OpenCV projection matrices (K [R|t], image y down, pixel centres at integers) of the views at
    `offsets` around an input at `elevation` and azimuth 0 (the criterion does not depend on the azimuth)."""
    cams = offset_cameras(offsets, ref_polar=90.0 - elevation, ref_azimuth=0.0, radius=radius, fovy=fovy,
                          dtype=torch.float64)
    w2c = torch.linalg.inv(cams.c2w).numpy()[:, :3, :]
    w2c = np.diag([1.0, -1.0, -1.0])[None] @ w2c         # OpenGL camera (y up, looking down -z) -> OpenCV
    f = 0.5 * size / np.tan(0.5 * np.deg2rad(fovy))
    c = 0.5 * size - 0.5                                  # c123's rays pass through pixel centres at i + 0.5
    K = np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])
    return K[None] @ w2c


def reprojection_errors(P: np.ndarray, trips: list[Triplet], cap_px: float) -> np.ndarray:
    """One-2-3-45's criterion for one pose hypothesis P [n,3,4], per triplet [T]: the triplet's points
    triangulated from its base views (cv2.triangulatePoints, DLT), projected into its third view; the mean pixel
    error, each error capped at cap_px. The hypothesis' error is the sum."""
    import cv2

    out = np.empty(len(trips))
    for i, tr in enumerate(trips):
        X = cv2.triangulatePoints(P[tr.s], P[tr.t], tr.pts_s.T, tr.pts_t.T)
        x = P[tr.j] @ X
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.linalg.norm((x[:2] / x[2:]).T - tr.pts_j, axis=1)
        # a point triangulated at infinity or behind the camera counts as the cap
        err = np.where(np.isfinite(err) & (x[2] * X[3] > 0), err, cap_px)
        out[i] = np.minimum(err, cap_px).mean()
    return out


def photometric_errors(views: torch.Tensor, elevations, offsets, *, fovy: float, radius: float,
                       cfg: ElevationConfig) -> dict[float, float]:
    """The photometric criterion of each elevation hypothesis (lower is better), keyed by the elevation rounded to
    1e-6, in the order given: for grid pixels on each view's foreground, the depth along the pixel's ray whose
    projections into the other views look most alike in colour (the patch's mean squared difference, averaged over
    the other views and capped at cfg.refine_cap), summed.

    Why, beside the tracks: tracks are points matched by their image alone, and on smooth albedo Lucas-Kanade's
    are off by pixels along the weakly textured direction, which biases the estimate towards the equator (on the
    synthetic scenes 1-4 degrees, while the true correspondences give the true elevation). Here the cameras of the
    hypothesis constrain every match to its epipolar line, and the colour is compared where the hypothesis puts
    it: only at the right elevation does one depth explain every view at once (the plane-sweep test of multi-view
    stereo). Patches are compared unwarped (the views are 10 degrees apart). What does not depend on the
    hypothesis (the grid pixels, their own patches, the depths) is taken once for all of them."""
    n, _, size, _ = views.shape
    scale = size / REFERENCE_SIZE
    images = views.detach().float().cpu()
    half = int(round(cfg.refine_patch_px * scale))
    k = torch.arange(-half, half + 1, dtype=torch.float32)
    patch = torch.stack(torch.meshgrid(k, k, indexing="xy"), -1).reshape(-1, 2)           # [K,2] (x, y)
    depths = torch.linspace(max(radius - cfg.refine_depth_span, 1e-3), radius + cfg.refine_depth_span,
                            cfg.refine_depths)
    step = max(1, int(round(cfg.refine_grid_px * scale)))
    pixels = []                                      # per view: grid pixels (ys, xs) and their own patches [N,K,3]
    for s, mask in enumerate(foreground(im, cfg, scale) for im in _to_uint8(views)):
        ys, xs = (torch.from_numpy(a * step) for a in np.nonzero(mask[::step, ::step]))
        if len(xs):
            pixels.append((s, ys, xs, _bilinear(images[s], torch.stack([xs, ys], -1).float()[:, None] + patch)))

    def error(elevation: float) -> float:
        cams = offset_cameras(offsets, ref_polar=90.0 - elevation, ref_azimuth=0.0, radius=radius, fovy=fovy)
        P = torch.from_numpy(projection_matrices(elevation, offsets, fovy=fovy, radius=radius, size=size)).float()
        rays_o, rays_d = generate_rays(cams, size, size)
        total = 0.0
        for s, ys, xs, own in pixels:
            X = rays_o[s, ys, xs][:, None] + rays_d[s, ys, xs][:, None] * depths[None, :, None]  # [N,D,3]
            X = torch.cat([X, torch.ones_like(X[..., :1])], -1)
            cost = 0.0
            for b in range(n):
                if b != s:
                    x = X @ P[b].T
                    seen = _bilinear(images[b], (x[..., :2] / x[..., 2:])[:, :, None] + patch)     # [N,D,K,3]
                    cost = cost + ((seen - own[:, None]) ** 2).mean((-1, -2))
            total += float((cost / (n - 1)).clamp(max=cfg.refine_cap).min(1).values.sum())
        return total

    return {float(round(e, 6)): error(float(e)) for e in elevations}


def _bilinear(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """image [3,H,W] sampled bilinearly at OpenCV pixel coordinates xy [...,2] (pixel centres at integers; outside:
    the border's colour, the white background) -> [...,3]."""
    size = torch.tensor(image.shape[:0:-1], dtype=xy.dtype)                                 # (W, H)
    g = ((xy.reshape(1, -1, 1, 2) + 0.5) / size * 2 - 1)
    out = torch.nn.functional.grid_sample(image[None], g, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*xy.shape[:-1], 3)


def grid(lo: float, hi: float, step: float) -> np.ndarray:
    """lo, lo + step, ... up to hi (hi included when on the grid)."""
    return lo + step * np.arange(int(np.floor((hi - lo) / step + 1e-9)) + 1)


def offset_cameras(offsets, *, ref_polar: float, ref_azimuth: float, radius: float, fovy: float,
                   dtype: torch.dtype = torch.float32) -> Cameras:
    """The cameras at `offsets` (d polar, d azimuth) around a reference camera (polar, azimuth)."""
    d_polar = torch.tensor([float(o[0]) for o in offsets], dtype=torch.float64)
    d_azimuth = torch.tensor([float(o[1]) for o in offsets], dtype=torch.float64)
    return orbit_cameras(ref_polar + d_polar, ref_azimuth + d_azimuth, radius, fovy).to(dtype=dtype)


# ---- the estimate ------------------------------------------------------------------------------------------
def estimate_from_views(views: torch.Tensor, *, fovy: float, radius: float,
                        config: ElevationConfig | None = None) -> ElevationEstimate:
    """The elevation from views [n,3,S,S] in [0,1] on white, seen at `config.offsets` (in that order) around the
    input by cameras with `fovy` and `radius` (the 3D prior's)."""
    cfg = config or ElevationConfig()
    if (views.ndim != 4 or views.shape[0] != len(cfg.offsets) or views.shape[1] != 3
            or views.shape[2] != views.shape[3]):
        raise ValueError(f"views must be [{len(cfg.offsets)},3,S,S] (one per offset), got {tuple(views.shape)}")
    size = views.shape[-1]
    scale = size / REFERENCE_SIZE
    images = _to_uint8(views)
    tracks = (lk_tracks if cfg.matcher == "lk" else sift_tracks)(images, cfg, scale)
    trips = triplets(tracks)
    n_points = sum(len(tr.pts_s) for tr in trips)
    n = len(images)
    details: dict[str, Any] = {
        "matcher": cfg.matcher, "size": size, "offsets": [list(map(float, o)) for o in cfg.offsets],
        "points": [len(p) for p in tracks.points],
        "matches": {f"{a}-{b}": int(tracks.valid[a][b].sum()) for a in range(n) for b in range(n) if a != b},
        "triplets": len(trips), "tracks": n_points,
    }
    moves = [np.linalg.norm(tracks.found[a][b][tracks.valid[a][b]] - tracks.points[a][tracks.valid[a][b]], axis=1)
             for a in range(n) for b in range(n) if a != b]
    motion = float(np.median(np.concatenate(moves))) if any(len(m) for m in moves) else 0.0
    details["median_motion_px"] = motion
    fallback = cfg.fallback_elevation
    problem = None
    if n_points < cfg.min_tracks:
        problem = (f"{n_points} tracks (points found in three views), fewer than min_tracks={cfg.min_tracks} (a "
                   f"featureless or unmatched input)")
    elif motion < cfg.min_motion_px * scale:
        problem = (f"the matched points move {motion:.2f} px between views (median), less than min_motion_px="
                   f"{cfg.min_motion_px:g}: the prior's views do not follow the camera")
    if problem:
        warning = f"elevation estimate unreliable: {problem}; using {fallback:g} degrees"
        return ElevationEstimate(fallback, 0.0, {**details, "raw_elevation": None}, warning)

    cap = cfg.error_cap_px * scale
    per_triplet: dict[float, np.ndarray] = {}

    def best_of(candidates) -> float:
        keys = [float(round(e, 6)) for e in candidates]
        for e in keys:
            if e not in per_triplet:
                P = projection_matrices(e, cfg.offsets, fovy=fovy, radius=radius, size=size)
                per_triplet[e] = reprojection_errors(P, trips, cap)
        return min(keys, key=lambda e: (per_triplet[e].sum(), abs(e)))

    lo, hi = cfg.elevation_range
    coarse = best_of(grid(lo, hi, cfg.coarse_step))
    best = best_of(grid(max(lo, coarse - cfg.fine_radius), min(hi, coarse + cfg.fine_radius), cfg.fine_step))
    tried = np.array(sorted(per_triplet))
    table = np.stack([per_triplet[e] for e in tried])                    # [candidates, triplets]
    errors = table.sum(1)
    far = errors[np.abs(tried - best) >= cfg.confidence_margin]
    margin = float(np.clip(1.0 - per_triplet[best].sum() / far.min(), 0.0, 1.0)) if far.size and far.min() > 0 else 0.0
    own_best = tried[table.argmin(0)]                                    # each triplet's own best candidate
    agreement = float(np.mean(np.abs(own_best - best) <= cfg.agree_deg))
    confidence = agreement * min(1.0, margin / cfg.full_margin)
    details.update(raw_elevation=best, best_error=float(per_triplet[best].sum()),
                   mean_error_px=float(per_triplet[best].mean()), margin=margin, agreement=agreement,
                   triplet_estimates=own_best.tolist(), errors=dict(zip(tried.tolist(), errors.tolist())))
    if confidence < cfg.min_confidence:
        warning = (f"elevation estimate unreliable: confidence {confidence:.3f} < min_confidence="
                   f"{cfg.min_confidence:g} (raw estimate {best:g} degrees from {n_points} points); using "
                   f"{fallback:g} degrees")
        return ElevationEstimate(fallback, confidence, details, warning)
    if cfg.refine == "photometric":
        candidates = grid(max(lo, best - cfg.refine_radius), min(hi, best + cfg.refine_radius), cfg.refine_step)
        candidates = candidates[np.argsort(np.abs(candidates - best), kind="stable")]  # ties: nearest the tracks'
        photometric = photometric_errors(views, candidates, cfg.offsets, fovy=fovy, radius=radius, cfg=cfg)
        details["photometric"] = photometric                        # raw_elevation stays the tracks' estimate
        best = min(photometric, key=photometric.get)
    return ElevationEstimate(best, confidence, details)


def estimate_elevation(prior, reference_rgb_white: torch.Tensor, *, fovy: float, radius: float,
                       generator: torch.Generator | None = None,
                       config: ElevationConfig | None = None) -> ElevationEstimate:
    """Estimate the elevation (degrees, positive above the equator) the input [1,3,H,W] in [0,1] on white was
    seen from, with the 3D prior's own views: `prior.set_reference(input, camera at polar 90, azimuth 0)`, then
    `prior.sample` at `config.offsets` around that camera (`generator`, config.sample_steps, guidance_scale).

    Zero-1-to-3 reads only the relative camera, so the reference polar given does not change its views; the
    prior's reference is left set to it, so a caller that goes on with the prior sets it again with the estimate.
    A poor input never raises: a featureless or ambiguous one returns the fallback elevation with a warning."""
    cfg = config or ElevationConfig()
    ref = orbit_cameras(90.0, 0.0, radius, fovy)
    prior.set_reference(reference_rgb_white, ref)
    cams = offset_cameras(cfg.offsets, ref_polar=90.0, ref_azimuth=0.0, radius=radius, fovy=fovy)
    views = prior.sample(cams, generator=generator, steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale)
    return estimate_from_views(views, fovy=fovy, radius=radius, config=cfg)


__all__ = ["ElevationConfig", "ElevationConfigError", "ElevationEstimate", "ONE2345_OFFSETS", "REFERENCE_SIZE",
           "Tracks", "Triplet", "estimate_elevation", "estimate_from_views", "lk_tracks", "sift_tracks", "triplets",
           "projection_matrices", "reprojection_errors", "photometric_errors", "offset_cameras"]
