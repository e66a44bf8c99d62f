"""The paper's published numbers (Table 1, Table 2 averages) and the protocol they are compared under, as data."""

from c123.metrics import HIGHER_IS_BETTER, PROTOCOLS  # noqa: F401  (HIGHER_IS_BETTER: the tables' bold)

METRICS = ("clip_similarity", "psnr", "lpips")
"""Table 1 metrics, in the paper's column order."""

METRIC_LABELS = {"clip_similarity": "CLIP-sim ↑", "psnr": "PSNR ↑", "lpips": "LPIPS ↓"}

GROUND_TRUTH_METRICS = tuple(m for m in HIGHER_IS_BETTER if m not in METRICS)
"""Metrics against known ground truth (the synthetic dataset's true views and surface): every metric of
c123.metrics beyond Table 1's, so one added there gets its column here."""

_GROUND_TRUTH_NAMES = {"novel_psnr": "novel PSNR", "novel_lpips": "novel LPIPS", "chamfer_sq": "Chamfer²",
                       "unseen_psnr": "unseen PSNR", "silhouette_iou": "silhouette IoU", "fscore": "F-score",
                       "sd_chamfer": "Chamfer (SyncDreamer)", "sd_volume_iou": "Volume IoU", "sd_psnr": "PSNR (16 views)",
                       "sd_ssim": "SSIM (16 views)", "sd_lpips": "LPIPS-VGG (16 views)"}


GSO_SOURCES = {"SyncDreamer": "arXiv 2309.03453, GSO tables (30 objects)",
               "Wonder3D": "arXiv 2310.15008, GSO tables (repeats SyncDreamer's rows, adds its own)"}
GSO_REPORTED: dict[str, dict[str, float]] = {}
"""Published GSO rows under SyncDreamer's protocol: GSO_REPORTED[method] = {sd_chamfer, sd_volume_iou, sd_psnr,
sd_ssim, sd_lpips}. Only numbers read from the papers' own text go in; none could be read yet (GSO_REPORTED_NOTE)."""
GSO_REPORTED_NOTE = ("Reported GSO rows (SyncDreamer arXiv 2309.03453; Wonder3D arXiv 2310.15008: Chamfer, volume "
                     "IoU, PSNR/SSIM/LPIPS for RealFusion, Magic123, One-2-3-45, Point-E, Shap-E, Zero-1-to-3, "
                     "SyncDreamer, Wonder3D) are left out: their tables could not be read from the papers' text "
                     "here, and no number goes in unread (reports/published.py GSO_REPORTED).")


def metric_label(metric: str) -> str:
    """'PSNR ↑', 'Chamfer ↓', ...: the column title of a metric, with the direction that is better."""
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    return f"{_GROUND_TRUTH_NAMES.get(metric, metric)} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}"

DATASETS = {"realfusion15": "RealFusion15", "c10": "C10"}
"""Dataset keys (lower case, as in per_case.parquet) -> the paper's names, in the paper's order."""

METHODS = ("RealFusion", "Make-it-3D", "Zero-1-to-3", "Magic123", "Consistent123")

# Paper Table 1: TABLE1[dataset][method] = (CLIP-sim, PSNR, LPIPS).
TABLE1 = {
    "realfusion15": {
        "RealFusion": (0.735, 20.216, 0.197),
        "Make-it-3D": (0.839, 20.010, 0.119),
        "Zero-1-to-3": (0.759, 25.386, 0.068),
        "Magic123": (0.747, 25.637, 0.062),
        "Consistent123": (0.844, 25.682, 0.056),
    },
    "c10": {
        "RealFusion": (0.680, 22.355, 0.140),
        "Make-it-3D": (0.824, 19.412, 0.120),
        "Zero-1-to-3": (0.700, 18.292, 0.229),
        "Magic123": (0.751, 15.538, 0.197),
        "Consistent123": (0.770, 25.327, 0.054),
    },
}

DISCOUNTED = {("Make-it-3D", "clip_similarity"): "Make-it-3D trains on CLIP similarity, so the paper discounts "
                                                  "its CLIP-sim value."}
"""(method, metric) cells the paper marks with * and leaves out of the comparison."""

C10_CATEGORIES = ("ball", "biont", "furniture", "cartoon", "fruit", "statue", "food", "vehicle", "costume", "scene")
"""Paper Table 2 row order."""

WEIGHT_SHAPES = ("log", "linear", "exp")
"""Paper Table 2 column order of the dynamic-prior shapes."""

# Paper Table 2 averages over the C10 categories: TABLE2_AVERAGES[shape] = (CLIP-sim, PSNR, LPIPS).
TABLE2_AVERAGES = {
    "log": (0.76, 24.59, 0.07),
    "linear": (0.76, 24.96, 0.07),
    "exp": (0.79, 25.30, 0.06),
}


REFERENCE_PROTOCOL = PROTOCOLS["magic123"]
"""The closest public protocol, against which our rows are footnoted (the paper publishes no CLIP model, number
of views or resolution; its LPIPS is AlexNet at the reference view on white)."""

REFERENCE_RESOLUTION = 512
"""Render size the reference rows are measured at: the paper preset's TrainConfig.eval_size (not a published
figure)."""


def same_clip_model(model: str) -> bool:
    """True when `model` is a ViT-bigG-14 CLIP like the reference (hub ids and local dirs differ in spelling)."""
    return "vit-bigg-14" in str(model).lower().replace("_", "-")
